"""What the benchmark uses to measure losses with less noise: an EMA of the weights for evaluation, a larger
synthetic validation split, and runs trained in parallel processes with one thread count."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch

from qfocal.cli import main
from qfocal_lab.detection import TrainConfig, compare, load_checkpoint, train
from qfocal_lab.detection.compare import PRETRAIN_SEED, threads_per_job
from qfocal_lab.detection.train import (
    CheckpointError,
    ModelEMA,
    build_model,
    evaluate_checkpoint,
    load_backbone,
    prepare_synthetic_data,
)
from tests.conftest import tiny_config


def _cfg(data, out, **kw) -> TrainConfig:
    return tiny_config(data, out, plots=False, **kw)


def test_ema_update_is_the_weighted_average_with_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone().double() for k, v in start.items()}
    for step in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked += 1
        d = min(0.9, (1 + step) / (10 + step))  # the warm-up lets the first steps' weights fade fast
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                expected[k] = d * expected[k] + (1 - d) * v.double()
            else:
                expected[k] = v.clone()
        ema.update(model)
    assert ema.updates == 30
    got = ema.module.state_dict()
    for k, v in expected.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(got[k], v), k
    # The average lags the weights: after a drift of 30 per parameter it is far from both ends.
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"], atol=1.0)
    assert all(not p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_ema_rejects_decay_outside_open_interval(decay):
    with pytest.raises(ValueError, match=r"decay: expected a value in \(0, 1\)"):
        ModelEMA(torch.nn.Linear(2, 2), decay)


def test_run_with_ema_evaluates_the_average_and_resumes_to_the_same_weights(tiny_data, tmp_path):
    full = _cfg(tiny_data, tmp_path / "full", loss="qfl", epochs=2, ema_decay=0.9)
    m_full = train(full, log=lambda m: None)
    ckpt = load_checkpoint(tmp_path / "full" / "last.pt")
    assert ckpt["ema"]["updates"] == 4  # 8 training images, batch 4, 2 epochs
    differs = [k for k, v in ckpt["model"].items() if not torch.equal(v, ckpt["ema"]["module"][k])]
    assert differs, "the EMA should differ from the weights"
    # evaluate_checkpoint takes the EMA (what the run reported), or the weights when asked.
    assert evaluate_checkpoint(tmp_path / "full" / "last.pt", device="cpu")["AP"] == pytest.approx(
        m_full["AP"]
    )
    raw = evaluate_checkpoint(tmp_path / "full" / "last.pt", device="cpu", ema=False)
    assert set(raw) >= {"AP", "AP90"}

    class Crash(Exception):
        pass

    def crash(epoch, row):
        if epoch == 1:
            raise Crash

    part = dataclasses.replace(full, out=str(tmp_path / "part"))
    with pytest.raises(Crash):
        train(part, on_epoch_end=crash, log=lambda m: None)
    assert train(part, resume=True, log=lambda m: None) == m_full
    resumed = load_checkpoint(tmp_path / "part" / "last.pt")
    assert resumed["ema"]["updates"] == 4
    for k, v in ckpt["ema"]["module"].items():
        assert torch.equal(v, resumed["ema"]["module"][k]), f"EMA weight {k} differs after resume"
    # A different decay is another run: resume refuses it.
    with pytest.raises(ValueError, match=r"ema_decay=0.9 \(now 0.5\)"):
        train(dataclasses.replace(part, ema_decay=0.5), resume=True, log=lambda m: None)


def test_resume_accepts_a_checkpoint_written_before_the_newer_settings(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, loss="focal", epochs=2)

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch_end=stop, log=lambda m: None)
    path = tmp_path / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("synth_val", "ema_decay", "box_bias"):  # an older qfocal did not know them
        del ckpt["config"][key]
    torch.save(ckpt, path)
    train(cfg, resume=True, log=lambda m: None)
    assert load_checkpoint(path)["epoch"] == 2


def test_synth_val_sets_the_validation_split_and_keeps_the_training_images(tmp_path):
    kw = {"synth_images": 12, "synth_seed": 3, "synth_difficulty": "easy"}
    small = prepare_synthetic_data(TrainConfig(**kw), tmp_path / "a", log=lambda m: None)
    large = prepare_synthetic_data(TrainConfig(**kw, synth_val=8), tmp_path / "b", log=lambda m: None)
    count = lambda root, split: len(list((root / "images" / split).glob("*.png")))  # noqa: E731
    assert (count(small, "train"), count(small, "val")) == (9, 3)
    assert (count(large, "train"), count(large, "val")) == (4, 8)
    # The generator seeds each image by (seed, split, index): the shared training images are identical.
    for name in ("000000.png", "000003.png"):
        assert (small / "images" / "train" / name).read_bytes() == (
            large / "images" / "train" / name
        ).read_bytes()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("synth_val", 400, r"synth_val: expected 0 \(a quarter\) or fewer than synth_images \(400\)"),
        ("synth_val", -1, "synth_val"),
        ("ema_decay", 1.0, r"ema_decay: expected a value in \[0, 1\)"),
    ],
)
def test_config_refuses_bad_noise_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).validate()


def test_threads_per_job_shares_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_job(0, 2) == 4
    assert threads_per_job(0, 3) == 2
    assert threads_per_job(0, 16) == 1
    assert threads_per_job(3, 2) == 3  # an explicit count wins


def test_parallel_compare_equals_the_serial_one(tiny_data, tmp_path):
    base = _cfg(tiny_data, tmp_path)
    kw = {"losses": ["focal", "qfl"], "seeds": [0, 1], "log": lambda m: None}
    serial = compare(base, out=tmp_path / "serial", **kw)
    parallel = compare(base, out=tmp_path / "parallel", jobs=2, **kw)
    # Runs are recorded in plan order (seed, then loss) whichever finished first, with the same results.
    order = [(r["loss"], r["seed"]) for r in parallel["runs"]]
    assert order == [("focal", 0), ("qfl", 0), ("focal", 1), ("qfl", 1)]
    assert [r["AP"] for r in parallel["runs"]] == [r["AP"] for r in serial["runs"]]
    assert parallel["jobs"] == 2 and parallel["threads"] == 1
    saved = json.loads((tmp_path / "parallel" / "compare.json").read_text())
    assert saved["jobs"] == 2 and "delta_vs_baseline" in saved["summary"]["qfl"]
    assert "2 runs at a time x 1 threads per run" in (tmp_path / "parallel" / "compare.md").read_text()
    assert all(r["seconds"] > 0 for r in parallel["runs"])
    # Resumed, the finished runs are reused and keep the seconds they took.
    again = compare(base, out=tmp_path / "parallel", jobs=2, resume=True, **kw)
    assert [r["seconds"] for r in again["runs"]] == pytest.approx([r["seconds"] for r in parallel["runs"]])
    assert again["wall_s"] > parallel["wall_s"]  # the first session's wall time is counted in


@pytest.mark.parametrize("jobs", [0, 1.5, True])
def test_compare_refuses_bad_jobs(tiny_data, tmp_path, jobs):
    with pytest.raises(ValueError, match="jobs: expected an integer >= 1"):
        compare(_cfg(tiny_data, tmp_path), losses=["focal"], seeds=[0], out=tmp_path / "c", jobs=jobs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--ema", "1"], "argument --ema: expected a finite number in [0, 1), got '1'"),
        (["compare", "--jobs", "0"], "argument --jobs: expected an integer in [1, 64], got '0'"),
        (
            ["compare", "--synth-val", "-3"],
            "argument --synth-val: expected an integer in [0, 10000000], got '-3'",
        ),
        (
            ["train", "--synth-val", "500"],
            "synth_val: expected 0 (a quarter) or fewer than synth_images (400)",
        ),
        # --jobs and --pretrain-epochs are taken by the framework compare too (tests/qfocal_lab/detection/test_framework_runs.py)
        (
            ["compare", "--framework", "ultralytics", "--box-bias", "1"],
            "--box-bias: an option of the FCOS harness",
        ),
        (["compare", "--framework", "yolov5", "--init", "x.pt"], "--init: an option of the FCOS harness"),
        (
            ["compare", "--pretrain-epochs", "-1"],
            "argument --pretrain-epochs: expected an integer in [0, 10000], got '-1'",
        ),
        (["train", "--init", "no/such.pt"], "--init: expected a qfocal checkpoint file, got 'no/such.pt'"),
    ],
)
def test_cli_refuses_bad_noise_options(argv, message, capsys, tmp_path):
    try:
        code = main([*argv, "--out", str(tmp_path / "o")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_bench_preset_lays_its_settings_under_the_command_line(monkeypatch, tmp_path):
    seen = {}

    def fake_compare(cfg, **kw):
        seen.update(cfg=cfg, **kw)
        return {"table": "", "wall_s": 0.0}

    monkeypatch.setattr(importlib.import_module("qfocal_lab.detection.compare"), "compare", fake_compare)
    assert main(["compare", "--preset", "bench", "--seeds", "2", "--out", str(tmp_path / "b")]) == 0
    cfg = seen["cfg"]
    assert (cfg.epochs, cfg.eval_every, cfg.synth_images, cfg.synth_val) == (6, 6, 2600, 800)
    assert cfg.synth_difficulty == "easy" and seen["jobs"] == 2
    assert cfg.box_bias == 1.0 and seen["pretrain_epochs"] == 9
    assert seen["losses"] == ["focal", "focal_noctr", "qfl", "vfl", "gfl"]
    assert list(seen["seeds"]) == [0, 1]  # given explicitly: wins over the preset's


@pytest.mark.parametrize("loss", ["focal", "qfl", "vfl", "focal_noctr"])
def test_box_bias_starts_the_box_sides_on_the_live_side_of_their_relu(loss, tiny_data, tmp_path):
    """torchvision's bias 0 leaves a large share of the box-side outputs clipped to 0 by the ReLU at
    initialisation (no gradient there: a side can die); ``box_bias=1`` starts every side at one anchor size."""
    from qfocal_lab.detection.train import build_model

    images = [torch.rand(3, 64, 64) for _ in range(2)]

    def sides(model):
        seen = {}
        model.head.regression_head.register_forward_hook(lambda m, i, o: seen.update(out=o))
        with torch.no_grad():
            model.eval()(images)
        out = seen["out"]
        return out[0] if isinstance(out, tuple) else out  # torchvision's head also returns centerness

    torch.manual_seed(0)
    default = build_model(3, _cfg(tiny_data, tmp_path, loss=loss))
    assert float(default.head.regression_head.bbox_reg.bias.abs().max()) == 0.0  # torchvision's init
    assert (sides(default) == 0).float().mean() > 0.2
    torch.manual_seed(0)
    lifted = build_model(3, _cfg(tiny_data, tmp_path, loss=loss, box_bias=1.0))
    assert (sides(lifted) > 0.5).float().mean() > 0.99


def test_box_bias_is_a_setting_of_the_run(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="box_bias: expected a finite number"):
        TrainConfig(box_bias=float("nan")).validate()
    cfg = _cfg(tiny_data, tmp_path, loss="qfl", box_bias=1.0)
    train(cfg, log=lambda m: None)
    assert load_checkpoint(tmp_path / "last.pt")["config"]["box_bias"] == 1.0
    with pytest.raises(ValueError, match=r"box_bias=1.0 \(now 0.0\)"):
        train(dataclasses.replace(cfg, box_bias=0.0), resume=True, log=lambda m: None)


_BODY = "backbone.body."


def test_init_copies_the_backbone_body_and_nothing_else(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path / "a", loss="focal")
    train(cfg, log=lambda m: None)
    trained = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    torch.manual_seed(5)
    model = build_model(3, dataclasses.replace(cfg, loss="gfl"))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    copied = load_backbone(model, tmp_path / "a" / "last.pt")
    after = model.state_dict()
    body = [k for k in after if k.startswith(_BODY)]
    assert copied == len(body) > 10
    for k in body:
        assert torch.equal(after[k], trained[k]), k
    assert any(not torch.equal(fresh[k], trained[k]) for k in body)  # it did change something
    for k in after:  # the FPN and the (other loss's) head keep their own initialisation
        if not k.startswith(_BODY):
            assert torch.equal(after[k], fresh[k]), k


def test_init_refuses_a_backbone_of_another_size(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path / "a", loss="focal")
    train(cfg, log=lambda m: None)
    small = build_model(3, dataclasses.replace(cfg, model_size="small"))
    with pytest.raises(CheckpointError, match="its backbone does not fit this model"):
        load_backbone(small, tmp_path / "a" / "last.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file there"):
        load_backbone(small, tmp_path / "missing.pt")


def test_compare_pretrains_one_backbone_on_other_data_and_starts_every_run_from_it(tmp_path):
    base = TrainConfig(
        data="synthetic", synth_images=12, synth_difficulty="easy", epochs=1, imgsz=64, batch=4, amp="off",
        progress=False, plots=False, warmup_iters=1, threads=0, box_bias=1.0,
    )  # fmt: skip
    out = tmp_path / "c"
    logs = []
    result = compare(base, losses=["focal", "qfl"], seeds=[0], out=out, pretrain_epochs=1, log=logs.append)
    ckpt = out / "pretrain" / "last.pt"
    pre = load_checkpoint(ckpt)["config"]
    assert (pre["loss"], pre["seed"], pre["synth_seed"], pre["epochs"]) == ("focal", PRETRAIN_SEED, 1, 1)
    # Its own synthetic set: another generator seed than the compare's data.
    assert "seed=1" in (out / "pretrain" / "data" / ".complete").read_text()
    assert "seed=0" in (out / "data" / ".complete").read_text()
    assert result["config"]["init"] == str(ckpt)
    for loss in ("focal", "qfl"):
        run = load_checkpoint(out / f"{loss}-s0" / "last.pt")
        assert run["config"]["init"] == str(ckpt)
        # One thread count, resolved once by the compare, for the pretraining and the runs (--threads 0 = auto).
        assert run["config"]["threads"] == pre["threads"] == result["threads"] >= 1
    # Resumed: the finished pretraining is reused, not trained again.
    stamp = ckpt.stat().st_mtime_ns
    logs.clear()
    compare(
        base, losses=["focal", "qfl"], seeds=[0], out=out, pretrain_epochs=1, resume=True, log=logs.append
    )
    assert ckpt.stat().st_mtime_ns == stamp
    assert any("pretrained backbone: reusing" in m for m in logs)


@pytest.mark.parametrize("epochs", [-1, 1.5, True])
def test_compare_refuses_bad_pretrain_epochs(tiny_data, tmp_path, epochs):
    with pytest.raises(ValueError, match="pretrain_epochs: expected an integer >= 0"):
        compare(
            _cfg(tiny_data, tmp_path), losses=["focal"], seeds=[0], out=tmp_path / "c", pretrain_epochs=epochs
        )


_ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from qfocal_lab.detection.compare import exit_with_parent

if __name__ == "__main__":
    pool = ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent, initargs=(os.getpid(), 0.1),
    )
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(0.5)
    os._exit(0)  # killed: no pool shutdown
"""


def test_parallel_workers_do_not_outlive_a_killed_compare(tmp_path):
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "killed.py"
    script.write_text(_ORPHAN_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, 9)
    pytest.fail(f"worker {worker} still ran 20 s after its compare was killed")
