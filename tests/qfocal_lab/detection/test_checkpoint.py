"""Runs that used to go silently wrong or end in a traceback: compare --resume reusing runs of other settings,
checkpoints damaged on disk (bit rot) or of a foreign, older or newer schema, and evaluate's data (output folders
that cannot be written: test_runfiles.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from qfocal.cli import main
from qfocal_lab.data import generate_dataset
from qfocal_lab.detection import ConfigError, TrainConfig, compare, load_checkpoint, train
from qfocal_lab.detection.train import CheckpointError
from tests.conftest import one_line_error as _one_line
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")  # the folder's name is asserted on below
    generate_dataset(root, images=10, seed=0, imgsz=64, min_size=6, val_fraction=0.2, mean_objects=3)
    return root


def _cfg(data, out, **kw) -> TrainConfig:
    return tiny_config(data, out, **{"plots": False, **kw})


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """One finished compare (focal, seed 0, 1 epoch, with a 1-epoch pretraining) to resume with changes."""
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    compare(_cfg(data, out), losses=["focal"], seeds=[0], out=out, pretrain_epochs=1, log=lambda m: None)
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 2}, r"focal-s0/last\.pt was trained with other settings: epochs=1 \(now 2\)"),
        ({"lr": 1e-3}, r"lr=0\.002 \(now 0\.001\)"),
        ({"model_size": "small"}, r"model_size='tiny' \(now 'small'\)"),
        ({"synth_seed": 1}, r"pretrain/last\.pt was trained with other settings: synth_seed=1 \(now 2\)"),
    ],
)
def test_compare_resume_refuses_runs_of_other_settings(data, finished, change, message):
    before = json.loads((finished / "compare.json").read_text())
    with pytest.raises(ConfigError, match=message) as info:
        compare(
            _cfg(data, finished, **change),
            losses=["focal"],
            seeds=[0],
            out=finished,
            pretrain_epochs=1,
            resume=True,
            log=lambda m: None,
        )
    assert "choose another --out or drop --resume" in str(info.value)
    assert (
        json.loads((finished / "compare.json").read_text()) == before
    )  # nothing recorded under new settings


def test_compare_resume_refuses_changed_pretraining_and_data(data, finished, tmp_path):
    with pytest.raises(
        ConfigError, match=r"pretrain/last\.pt was trained with other settings: epochs=1 \(now 2\)"
    ):
        compare(
            _cfg(data, finished), losses=["focal"], seeds=[0], out=finished, pretrain_epochs=2, resume=True,
            log=lambda m: None,
        )  # fmt: skip
    # other data at another path: the setting differs
    other = tmp_path / "other"
    shutil.copytree(data, other)
    with pytest.raises(ConfigError, match=r"data='.*outputs.*' \(now '.*other'\)"):
        compare(
            _cfg(other, finished), losses=["focal"], seeds=[0], out=finished, pretrain_epochs=1, resume=True,
            log=lambda m: None,
        )  # fmt: skip
    # the same path, changed content: the data fingerprint differs
    saved = tmp_path / "saved"
    shutil.copytree(data, saved)
    try:
        ann = data / "annotations" / "instances_train.json"
        coco = json.loads(ann.read_text())
        coco["annotations"] = coco["annotations"][1:]
        ann.write_text(json.dumps(coco))
        with pytest.raises(ConfigError, match=r"annotations/images hash"):
            compare(
                _cfg(data, finished), losses=["focal"], seeds=[0], out=finished, pretrain_epochs=1, resume=True,
                log=lambda m: None,
            )  # fmt: skip
    finally:
        shutil.copy(saved / "annotations" / "instances_train.json", ann)
    # unchanged: reused
    result = compare(
        _cfg(data, finished), losses=["focal"], seeds=[0], out=finished, pretrain_epochs=1, resume=True,
        log=lambda m: None,
    )  # fmt: skip
    assert len(result["runs"]) == 1


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(_cfg(data, out, ema_decay=0.5), log=lambda m: None)
    return out


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the stored bytes of the largest tensor (the pickle part stays intact)."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_bit_rot_in_tensor_data_is_found(run, tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    shutil.copy(run / "last.pt", ckpt)
    assert load_checkpoint(ckpt)["checksum"]["sha256"]
    _flip_tensor_byte(ckpt)
    with pytest.raises(CheckpointError, match=r"damaged: its tensors' checksum is"):
        load_checkpoint(ckpt)
    line = _one_line(capsys, ["evaluate", "--weights", str(ckpt)], 1)
    assert "damaged" in line


def test_checkpoint_without_checksum_still_loads(run, tmp_path):
    old = torch.load(run / "last.pt", weights_only=True)
    del old["checksum"]
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == 1


def _edit(ckpt: dict, how: str) -> None:
    model = ckpt["model"]
    first = next(iter(model))
    edits = {
        "renamed model key": lambda: ckpt.update(state_dict=ckpt.pop("model")),
        "model not tensors": lambda: ckpt.update(model={"a": 1}),
        "extra model tensor": lambda: model.update({"head.extra.weight": torch.zeros(3)}),
        "missing model tensor": lambda: model.pop(first),
        "size mismatch": lambda: model.update({first: torch.zeros(1, *model[first].shape[1:])}),
        "config imgsz a string": lambda: ckpt["config"].update(imgsz="64"),
        "config loss a number": lambda: ckpt["config"].update(loss=3),
        "config unknown model_size": lambda: ckpt["config"].update(model_size="huge"),
        "config not a dict": lambda: ckpt.update(config=[1, 2]),
        "epoch a string": lambda: ckpt.update(epoch="1"),
        "history not a list": lambda: ckpt.update(history={"a": 1}),
        "rng of floats": lambda: ckpt.update(rng=torch.zeros(10)),
        "class_names a string": lambda: ckpt.update(class_names="disc"),
        "ema without module": lambda: ckpt.update(ema={"updates": 1}),
        "ema of other shapes": lambda: ckpt["ema"]["module"].update({first: torch.zeros(2)}),
        "optimizer of another model": lambda: ckpt["optimizer"]["param_groups"].pop(),
        "optimizer not a dict": lambda: ckpt.update(optimizer=[]),
        "extra top-level key (newer)": lambda: ckpt.update(newer_thing={"x": 1}),
    }
    edits[how]()


_LOADS_FOR_EVALUATE = {"extra top-level key (newer)", "optimizer of another model"}


@pytest.mark.parametrize(
    "how",
    [
        "renamed model key",
        "model not tensors",
        "extra model tensor",
        "missing model tensor",
        "size mismatch",
        "config imgsz a string",
        "config loss a number",
        "config unknown model_size",
        "config not a dict",
        "epoch a string",
        "history not a list",
        "rng of floats",
        "class_names a string",
        "ema without module",
        "ema of other shapes",
        "optimizer of another model",
        "optimizer not a dict",
        "extra top-level key (newer)",
    ],
)
def test_foreign_checkpoint_contents_are_one_line_errors(data, run, tmp_path, capsys, how):
    """evaluate and train --resume: a checkpoint of another version or program (no checksum: its schema is
    what is checked) is one line, never a traceback."""
    ckpt = torch.load(run / "last.pt", weights_only=True)
    del ckpt["checksum"]
    _edit(ckpt, how)
    out = tmp_path / "resume"
    out.mkdir()
    torch.save(ckpt, out / "last.pt")
    if how in _LOADS_FOR_EVALUATE:
        assert main(["evaluate", "--weights", str(out / "last.pt"), "--data", str(data)]) == 0
        capsys.readouterr()
    else:
        _one_line(capsys, ["evaluate", "--weights", str(out / "last.pt"), "--data", str(data)], 1)
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--imgsz", "64", "--batch", "4"]
    argv += ["--amp", "off", "--threads", "1", "--no-progress", "--no-plots", "--ema", "0.5", "--resume"]
    if how == "extra top-level key (newer)":
        return  # a valid run of other settings (warmup); resuming it is the settings check's business
    line = _one_line(capsys, argv, 1)
    assert str(out / "last.pt") in line, line


def test_unreadable_image_folder_is_one_line(data, tmp_path, capsys, monkeypatch):
    def denied(self, pattern):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "rglob", denied)
    line = _one_line(capsys, ["evaluate", "--weights", str(tmp_path / "x.pt")], 1)
    assert "x.pt" in line
    out = tmp_path / "r"
    argv = ["train", "--data", str(data / "data.yaml"), "--out", str(out), "--imgsz", "64", "--no-progress"]
    line = _one_line(capsys, argv, 1)
    assert "Permission denied" in line, line


def test_evaluate_never_recreates_a_moved_synthetic_run(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = TrainConfig(
        data="synthetic", out=str(out), epochs=1, imgsz=64, batch=4, amp="off", progress=False, plots=False,
        warmup_iters=1, threads=1, synth_images=10, synth_val=2, synth_difficulty="easy",
    )  # fmt: skip
    train(cfg, log=lambda m: None)
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    assert main(["evaluate", "--weights", str(moved / "last.pt")]) == 0  # its data moved along
    capsys.readouterr()
    assert not out.exists()
    alone = tmp_path / "alone.pt"
    shutil.copy(moved / "last.pt", alone)
    line = _one_line(capsys, ["evaluate", "--weights", str(alone)], 1)
    assert f"expected in {out / 'data'}" in line and "--data" in line, line
    assert not out.exists()
    assert main(["evaluate", "--weights", str(alone), "--data", str(moved / "data")]) == 0
