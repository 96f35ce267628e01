"""Fault injection for training runs: two runs on one --out, settings or data changed under --resume, SIGKILL
during training and during the checkpoint write (then a bit-identical resume), and a stopped DDP rank."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qfocal_lab.data import generate_dataset
from qfocal_lab.detection import ConfigError, TrainConfig, load_checkpoint, train
from qfocal_lab.detection.train import RunLockedError, run_lock

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    generate_dataset(root, images=14, seed=0, imgsz=64, min_size=6, val_fraction=0.15, mean_objects=3)
    return root


def _cfg(data, out, **kw) -> TrainConfig:
    base = {"epochs": 1, "imgsz": 64, "batch": 4, "amp": "off", "progress": False, "plots": False}
    base.update(warmup_iters=1, threads=1)
    base.update(kw)
    return TrainConfig(data=str(data), out=str(out), **base)


def test_second_run_on_the_same_out_is_refused(data, tmp_path):
    out = tmp_path / "run"
    with (
        run_lock(out),
        pytest.raises(RunLockedError, match=rf"{out} is in use by another qfocal run \(pid {os.getpid()} "),
    ):
        train(_cfg(data, out), log=lambda m: None)
    train(_cfg(data, out), log=lambda m: None)  # the lock went with the block
    assert (out / "metrics.json").is_file() and not list(out.glob(".*.tmp"))


def test_resume_refuses_changed_settings_and_changed_data(data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(data, out, epochs=2, amp="off"), log=lambda m: None)
    with pytest.raises(ConfigError, match=r"amp='off' \(now 'bf16'\)"):
        train(_cfg(data, out, epochs=2, amp="bf16"), resume=True, log=lambda m: None)
    with pytest.raises(ConfigError, match=r"skip_bad=False \(now True\)"):
        train(_cfg(data, out, epochs=2, skip_bad=True), resume=True, log=lambda m: None)
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    with pytest.raises(ConfigError, match=r"data='.*' \(now '.*changed'\)"):
        train(_cfg(changed, out, epochs=2), resume=True, log=lambda m: None)
    # half the train split gone: the run's data fingerprint no longer matches
    labels = changed / "annotations" / "instances_train.json"
    coco = json.loads(labels.read_text())
    keep = {im["id"] for im in coco["images"][: len(coco["images"]) // 2]}
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    labels.write_text(json.dumps(coco))
    other = tmp_path / "other"
    train(_cfg(data, other, epochs=2), log=lambda m: None)
    ckpt = load_checkpoint(other / "last.pt")
    ckpt["config"]["data"] = str(changed)
    torch.save(ckpt, other / "last.pt")
    with pytest.raises(ConfigError, match=r"train images 12 \(now 6\), .*train annotations/images hash"):
        train(_cfg(changed, other, epochs=2), resume=True, log=lambda m: None)


_KILLER = """
import os, signal, sys
sys.path.insert(0, {src!r})
import torch
from qfocal_lab.detection import TrainConfig, train
mode, out, data = sys.argv[1], sys.argv[2], sys.argv[3]
saves = []
if mode == "write":  # SIGKILL with the new checkpoint half-written, after the first good one
    original = torch.save
    def save(obj, f, *a, **k):
        saves.append(f)
        if len(saves) == 2:
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(obj, f, *a, **k)
    torch.save = save
def epoch_end(epoch, row):
    if mode == "train" and epoch == 1:  # SIGKILL in the middle of training, after epoch 1 was saved
        os.kill(os.getpid(), signal.SIGKILL)
cfg = TrainConfig(data=data, out=out, epochs=3, imgsz=64, batch=4, amp="off", progress=False, plots=False,
                  warmup_iters=1, threads=1)
train(cfg, resume=True, on_epoch_end=epoch_end, log=lambda m: None)
"""


@pytest.mark.parametrize("mode", ["train", "write"])
def test_sigkill_then_resume_is_bit_identical(data, tmp_path, mode):
    full = tmp_path / "full"
    train(_cfg(data, full, epochs=3), log=lambda m: None)
    out = tmp_path / mode
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(src=SRC))
    killed = subprocess.run(
        [sys.executable, str(script), mode, str(out), str(data)], capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the last good checkpoint survived
    train(_cfg(data, out, epochs=3), resume=True, log=lambda m: None)
    a, b = load_checkpoint(full / "last.pt")["model"], load_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert not list(out.glob(".*.tmp")) or mode == "write"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RANK = """
import os, sys
sys.path.insert(0, {src!r})
import torch.distributed as dist
from qfocal_lab.detection import TrainConfig, train
from qfocal_lab.detection.train import DistributedError
if os.environ["RANK"] == "1":  # joins, then dies without a word: a crashed or killed worker
    dist.init_process_group("gloo")
    os._exit(0)
cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], epochs=2, imgsz=64, batch=2, amp="off", progress=False,
                  plots=False, warmup_iters=1, threads=1, ddp_timeout=15)
try:
    train(cfg, log=lambda m: None)
except DistributedError as exc:
    print("DistributedError:", exc)
    sys.exit(3)
"""


def test_a_stopped_ddp_rank_ends_the_run_with_a_message_naming_the_rank(data, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(_RANK.format(src=SRC))
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(data), str(tmp_path / "ddp")],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    t0 = time.monotonic()
    out, err = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=30)
    assert procs[0].returncode == 3, err[-2000:]
    assert "rank 0 of 2: another process stopped answering" in out and "last.pt" in out, out
    assert time.monotonic() - t0 < 100
