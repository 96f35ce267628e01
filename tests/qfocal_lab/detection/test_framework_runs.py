"""The framework compare in the fine-tune regime: the participation ratio, the YOLOv5 term, the command's one-line
refusals, and tiny real runs of both frameworks (pretraining, fine-tuning from it, resume reusing it, the warm-up
switch, the run facts, parallel runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from qfocal_lab.data.synth import write_toy_dataset
from qfocal_lab.detection import framework_runs
from qfocal_lab.detection.config import ConfigError
from qfocal_lab.detection.framework_runs import Probe, file_sha256
from qfocal_lab.detection.frameworks import PRETRAIN_SEED, compare_framework
from qfocal_lab.studies.balance import participation_ratio
from tests.qfocal_lab.detection.test_frameworks import FakeUltralytics, FakeYOLOv5, _cli


# ----------------------------------------------------------------------------------------------------------
# Participation ratio
# ----------------------------------------------------------------------------------------------------------
def test_participation_ratio_counts_the_elements_that_carry_the_gradient():
    one_hot = torch.zeros(3, 423)
    one_hot[1, 7] = -2.5
    assert participation_ratio(one_hot) == pytest.approx(1.0)
    assert participation_ratio(torch.full((5, 7), 0.3)) == pytest.approx(35.0)
    two = torch.tensor([1.0, -1.0, 0.0, 0.0])
    assert participation_ratio(two) == pytest.approx(2.0)
    g = torch.randn(1000, dtype=torch.float64)
    expected = float(g.pow(2).sum() ** 2 / g.pow(4).sum())
    assert participation_ratio(g) == pytest.approx(expected, rel=1e-12)
    assert participation_ratio(g.float() * 1e-20) == pytest.approx(expected, rel=1e-5), (
        "scale-free, no underflow"
    )
    assert 1.0 <= participation_ratio(g) <= g.numel()
    assert math.isnan(participation_ratio(torch.zeros(4))) and math.isnan(participation_ratio(torch.zeros(0)))


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            ["--framework", "yolov5", "--pretrain-epochs", "-1"],
            "argument --pretrain-epochs: expected an integer in [0, 10000]",
        ),
        (
            ["--framework", "yolov5", "--weights", "missing.pt"],
            "weights: expected a YOLOv5 detection checkpoint",
        ),
        (["--framework", "yolov5", "--weights", "{ultralytics}"], "got an Ultralytics checkpoint"),
        (["--framework", "ultralytics", "--weights", "{fcos}"], "got a qfocal FCOS checkpoint"),
        (["--framework", "yolov5", "--weights", "{yolov5}", "--pretrain-epochs", "3"], "either weights or"),
        (["--framework", "yolov5", "--losses", "bce,qfl-warmup5", "--epochs", "5"], "warm-ups shorter than"),
        (["--framework", "ultralytics", "--term", "cls"], "term: expected none for ultralytics"),
        (["--framework", "yolov5", "--term", "box"], "argument --term: invalid choice"),
        (["--term", "cls"], "--term: for --framework yolov5 or ultralytics"),
        (["--weights", "{yolov5}"], "--weights: for --framework yolov5 or ultralytics"),
        (["--preset", "yolov5-finetune", "--framework", "ultralytics"], "a preset of --framework yolov5"),
        (["--preset", "bench", "--framework", "yolov5"], "--preset bench: a preset of the FCOS harness"),
    ],
)
def test_command_refuses_bad_fine_tune_arguments_in_one_line(tmp_path, capsys, checkpoints, argv, match):
    argv = [a.format(**{k: str(v) for k, v in checkpoints.items()}) for a in argv]
    out = tmp_path / "cmp"
    code, err = _cli(["compare", *argv, "--out", str(out)], capsys)
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("qfocal compare: error: "), err
    assert match in errors[0], err
    assert "Traceback" not in err and not out.exists()


def test_yolov5_term_cls_and_label_smoothing_reach_the_trainer(tmp_path):
    """--term cls: the variant sets cls_loss / cls_gain and objectness stays BCE; label_smoothing is a train.py
    option (train.py copies it into the hyp ComputeLoss reads)."""
    fake = FakeYOLOv5()
    result = compare_framework(
        "yolov5", losses=["bce", "focal", "qfl@1"], seeds=[0], term="cls", synth_images=6, epochs=1, imgsz=64,
        device="cpu", threads=1, train_args=["label_smoothing=0.1"], out=tmp_path / "cmp", log=lambda _: None,
        train_fn=_CountingYOLOv5(fake),
    )  # fmt: skip
    assert [c["hyp"] for c in fake.calls] == [
        {"obj_loss": "bce", "cls_loss": "bce", "cls_gain": "auto"},
        {"obj_loss": "bce", "cls_loss": "focal", "cls_gain": "auto"},
        {"obj_loss": "bce", "cls_loss": "qfl", "cls_gain": 1.0},
    ]
    assert all(c["label_smoothing"] == 0.1 for c in fake.calls)
    assert result["term"] == "cls_loss" and "cls loss (obj: bce)" in result["table"]
    settings = json.loads((tmp_path / "cmp" / "focal-s0" / "metrics.json").read_text())["settings"]
    assert settings["term"] == "cls" and settings["train_args"] == {"label_smoothing": 0.1}


class _CountingYOLOv5:
    """FakeYOLOv5 keyed by its objectness variant (BCE here: the cls term varies); records the real hyp."""

    def __init__(self, fake: FakeYOLOv5) -> None:
        self.fake = fake

    def __call__(self, *, hyp, **opts):
        opt = self.fake(hyp={**hyp, "obj_gain": "auto"}, **opts)
        self.fake.calls[-1]["hyp"] = dict(hyp)
        return opt


# ----------------------------------------------------------------------------------------------------------
# Tiny real runs
# ----------------------------------------------------------------------------------------------------------
def _starting_weights(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Records the live model's weights when each run starts (the probe's _started)."""
    seen: list[dict[str, torch.Tensor]] = []
    original = Probe._started

    def spy(self, model):
        seen.append({k: v.detach().float().clone() for k, v in model.state_dict().items()})
        return original(self, model)

    monkeypatch.setattr(Probe, "_started", spy)
    return seen


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    model = framework_runs._model_of(framework_runs._load(path))
    return {k: v.float() for k, v in model.state_dict().items()}


def _fine_tune(framework: str, tmp_path: Path, monkeypatch) -> None:
    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    out, logs = tmp_path / "cmp", []
    starts = _starting_weights(monkeypatch)
    kwargs = dict(
        losses=["bce", "qfl-warmup1"], seeds=[0], data=data, epochs=2, imgsz=64, batch=4, device="cpu", threads=1,
        plots=False, pretrain_epochs=1, out=out, log=logs.append,
    )  # fmt: skip
    result = compare_framework(framework, **kwargs)
    pretrained = out / "pretrain" / "weights" / "last.pt"
    record = json.loads((out / "pretrain" / "metrics.json").read_text())
    assert record["settings"]["seed"] == PRETRAIN_SEED and record["settings"]["epochs"] == 1
    assert record["settings"]["loss"] == "bce" and record["settings"]["data"] == str(data.resolve())

    # every run starts from the pretrained weights: the live model at the start equals the checkpoint
    assert len(starts) == 3  # the pretraining (from the yaml), then the two fine-tune runs
    expected = _checkpoint_state(pretrained)
    assert any(not torch.equal(starts[0][k], expected[k]) for k in expected if "conv.weight" in k)
    for state in starts[1:]:
        shared = [k for k in expected if k in state and "num_batches_tracked" not in k]
        assert len(shared) > 100
        for key in shared:
            torch.testing.assert_close(state[key], expected[key], rtol=0, atol=0, msg=f"{key} at the start")
    sha = file_sha256(pretrained)
    assert result["start"] == {"from": str(pretrained), "sha256": sha, "pretrain_epochs": 1}
    md = (out / "compare.md").read_text()
    assert "fine-tuned from a BCE model pretrained 1 epochs" in md and "from scratch" not in md

    # the warm-up: BCE computed every training batch of epoch 0, the variant's loss every batch of epoch 1
    warm = json.loads((out / "qfl-warmup1-s0" / "metrics.json").read_text())
    assert warm["switch_epoch"] == 1 and warm["loss_by_epoch"] == ["bce", "qfl"], warm
    plain = json.loads((out / "bce-s0" / "metrics.json").read_text())
    assert plain["switch_epoch"] is None and plain["loss_by_epoch"] == ["bce", "bce"]
    for rec in (warm, plain):
        assert rec["settings"]["pretrain_epochs"] == 1 and rec["settings"]["init_sha256"] == sha
        facts = rec["run_facts"]
        assert facts["autocast"] == "fp32" and facts["torch_threads"] == 1 and facts["cpu"]
        assert facts["torch"] == torch.__version__ and facts["framework_version"] not in ("", "unknown")
        assert rec["pr_start"] >= 1.0 and rec["pr_end"] >= 1.0
    assert result["config"]["run_facts"]["autocast"] == ["fp32"]

    # resume reuses the pretraining and the runs; another pretraining length is refused, naming the setting
    logs.clear()
    again = compare_framework(framework, **kwargs, resume=True)
    assert (
        any("pretraining: reusing" in line for line in logs) and sum("reusing" in line for line in logs) == 3
    )
    assert len(starts) == 3 and again["start"]["sha256"] == sha
    with pytest.raises(
        ConfigError, match=r"pretrain/metrics\.json was trained with other settings: epochs 1 \(now 2\)"
    ):
        compare_framework(framework, **{**kwargs, "pretrain_epochs": 2}, resume=True)

    # the user's checkpoint: every run starts from it
    user_kwargs = {**kwargs, "pretrain_epochs": 0, "losses": ["bce"], "epochs": 1, "out": tmp_path / "user"}
    user = compare_framework(framework, **user_kwargs, weights=pretrained)
    assert (
        user["start"]["sha256"] == sha and "fine-tuned from" in (tmp_path / "user" / "compare.md").read_text()
    )
    for key in shared:
        torch.testing.assert_close(starts[-1][key], expected[key], rtol=0, atol=0, msg=f"{key} at the start")


def test_tiny_yolov5_pretrain_fine_tune_warmup_resume(tmp_path, monkeypatch, network_guard):
    _fine_tune("yolov5", tmp_path, monkeypatch)
    assert network_guard == [], network_guard


def test_tiny_ultralytics_pretrain_fine_tune_warmup_resume(tmp_path, monkeypatch, network_guard):
    pytest.importorskip("ultralytics")
    _fine_tune("ultralytics", tmp_path, monkeypatch)
    assert network_guard == [], network_guard


def test_tiny_yolov5_term_cls_real(tmp_path, monkeypatch):
    """A real YOLOv5 run with --term cls and label smoothing: the loss trained with has QFL on classification,
    BCE on objectness, and the smoothed targets."""
    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    losses = []
    original = Probe.yolov5_compute_loss

    def spy(self, model, autobalance=False):
        losses.append(original(self, model, autobalance))
        return losses[-1]

    monkeypatch.setattr(Probe, "yolov5_compute_loss", spy)
    result = compare_framework(
        "yolov5", losses=["qfl"], seeds=[0], data=data, term="cls", epochs=1, imgsz=64, batch=4, device="cpu",
        threads=1, plots=False, train_args=["label_smoothing=0.1"], out=tmp_path / "cmp", log=lambda _: None,
    )  # fmt: skip
    (loss,) = losses
    assert (loss.cls_loss, loss.cls_gain, loss.obj_loss) == ("qfl", None, "bce")
    assert (loss.cp, loss.cn) == pytest.approx((0.95, 0.05))
    assert result["runs"][0]["pr_start"] >= 1.0


def test_tiny_parallel_runs_in_plan_order(tmp_path):
    """jobs=2: runs in two spawned processes, each pinned to its thread count, recorded in plan order."""
    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    result = compare_framework(
        "yolov5", losses=["bce", "qfl"], seeds=[0], data=data, epochs=1, imgsz=64, batch=4, device="cpu",
        jobs=2, threads=1, plots=False, out=tmp_path / "cmp", log=lambda _: None,
    )  # fmt: skip
    assert [(r["loss"], r["seed"]) for r in result["runs"]] == [("bce", 0), ("qfl", 0)]
    assert all(r["run_facts"]["torch_threads"] == 1 for r in result["runs"])
    assert (
        result["jobs"] == 2
        and "2 runs at a time x 1 threads per run" in (tmp_path / "cmp" / "compare.md").read_text()
    )


def test_pretrain_images_sizes_the_second_synthetic_set(tmp_path, network_guard):
    """--pretrain-images: the pretraining's synthetic set has its own size (a large set, then a small one to
    fine-tune on); its record and every run's start say so, and it is refused without a pretraining."""
    pytest.importorskip("ultralytics")
    out = tmp_path / "cmp"
    result = compare_framework(
        "ultralytics", losses=["bce"], seeds=[0], synth_images=8, pretrain_images=12, pretrain_epochs=1,
        synth_difficulty="easy", epochs=1, imgsz=64, batch=4, device="cpu", threads=1, plots=False, out=out,
        log=lambda _: None,
    )  # fmt: skip
    pre_images = sorted((out / "pretrain-data" / "images").rglob("*.png"))
    run_images = sorted((out / "data" / "images").rglob("*.png"))
    assert (len(pre_images), len(run_images)) == (12, 8)
    record = json.loads((out / "pretrain" / "metrics.json").read_text())
    assert record["settings"]["synth_images"] == 12 and record["settings"]["synth_seed"] == 1
    assert "pretrained 1 epochs on a second set of 12 images" in (out / "compare.md").read_text()
    assert result["config"]["pretrain_images"] == 12
    assert network_guard == [], network_guard
    with pytest.raises(ConfigError, match="pretrain_images: expected pretrain_epochs > 0 with it"):
        compare_framework("ultralytics", pretrain_images=12, out=tmp_path / "x", train_fn=FakeUltralytics())
