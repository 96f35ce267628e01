"""What the benchmark uses to measure losses with less noise: a larger synthetic validation split, runs trained in
parallel processes with one thread count, a pretrained backbone under every run (the EMA is test_runstate.py's,
the worker pool's lifetime test_executors.py's)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from qfocal.cli import main
from qfocal_lab.detection import TrainConfig, compare, load_checkpoint, train
from qfocal_lab.detection.compare import PRETRAIN_SEED, threads_per_job
from qfocal_lab.detection.train import (
    CheckpointError,
    build_model,
    load_backbone,
    prepare_synthetic_data,
)
from tests.conftest import tiny_config


def _cfg(data, out, **kw) -> TrainConfig:
    return tiny_config(data, out, plots=False, **kw)


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
