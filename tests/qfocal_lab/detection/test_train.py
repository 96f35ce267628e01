"""The trainer end to end for each loss, resume, the non-finite stop, the heads' losses, CLI and compare."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from qfocal import quality_focal_loss, varifocal_loss
from qfocal.cli import main
from qfocal.integrations.torchvision import FocalFCOSHead, QualityFCOS, QualityFCOSHead
from qfocal_lab.detection import (
    METRIC_KEYS,
    QUALITY_KEYS,
    ConfigError,
    NonFiniteLossError,
    TrainConfig,
    compare,
    load_checkpoint,
    train,
)
from qfocal_lab.detection.train import amp_dtype
from qfocal_lab.models import fcos_tiny
from tests.conftest import tiny_config

# What train returns and writes to metrics.json.
RESULT_KEYS = [*METRIC_KEYS, *QUALITY_KEYS, "score_iou_n"]


def _spy_compute_loss(model) -> dict:
    """Record what the head's compute_loss receives (head outputs, anchors, matches, targets)."""
    seen: dict = {}
    original = model.head.compute_loss

    def spy(tgts, head_outputs, anchors, matched_idxs):
        seen.update(head_outputs=head_outputs, anchors=anchors, matched=matched_idxs, targets=tgts)
        return original(tgts, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = spy
    return seen


def _cfg(data, out, **kw) -> TrainConfig:
    return tiny_config(data, out, **kw)


@pytest.mark.parametrize("loss", ["focal", "qfl", "vfl"])
def test_short_training_runs_end_to_end(tiny_data, tmp_path, loss):
    out = tmp_path / loss
    metrics = train(_cfg(tiny_data, out, loss=loss), log=lambda m: None)
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved) == RESULT_KEYS
    # Undefined correlations (too few detections on an object after one epoch) are nan, null in the file.
    assert saved == pytest.approx({k: None if v != v else v for k, v in metrics.items()})
    assert all(v is None or -1.0 <= v <= 1.0 for k, v in saved.items() if k != "score_iou_n"), saved
    rows = list(csv.DictReader((out / "history.csv").read_text().splitlines()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert torch.isfinite(torch.tensor(float(rows[0]["loss"])))
    expected_parts = {"classification", "bbox_regression"} | ({"bbox_ctrness"} if loss == "focal" else set())
    assert {k[5:] for k in rows[0] if k.startswith("loss_")} == expected_parts
    ckpt = torch.load(out / "last.pt", weights_only=True)  # must not need pickled code
    assert ckpt["epoch"] == 1 and ckpt["config"]["loss"] == loss
    has_ctr = any("bbox_ctrness" in k for k in ckpt["model"])
    assert has_ctr == (loss == "focal")
    for png in ("curves.png", "predictions.png", "score_iou.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    full = _cfg(tiny_data, tmp_path / "full", loss="qfl", epochs=2)
    m_full = train(full, log=lambda m: None)

    class Crash(Exception):
        pass

    def crash_after_first(epoch, row):
        if epoch == 1:
            raise Crash

    part = dataclasses.replace(full, out=str(tmp_path / "part"))
    with pytest.raises(Crash):
        train(part, on_epoch_end=crash_after_first, log=lambda m: None)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    m_resumed = train(part, resume=True, log=lambda m: None)

    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"weight {k} differs after resume"
    drop = lambda rows: [{k: v for k, v in r.items() if k != "train_s"} for r in rows]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])
    assert m_resumed == m_full


def test_a_second_run_on_a_finished_out_is_refused_without_resume(tiny_data, tmp_path):
    """A run folder is never overwritten without a word: the finished run's checkpoint and metrics stay."""
    cfg = tiny_config(tiny_data, tmp_path / "run")
    train(cfg)
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("last.pt", "metrics.json")}
    with pytest.raises(
        ConfigError, match=r"already holds a run \(last.pt, metrics.json\); continue it with --resume"
    ):
        train(cfg)
    assert {name: (tmp_path / "run" / name).read_bytes() for name in before} == before


def test_resume_rejects_changed_settings(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, loss="vfl")
    train(cfg, log=lambda m: None)
    with pytest.raises(ValueError, match=r"different settings: loss='vfl' \(now 'qfl'\)"):
        train(dataclasses.replace(cfg, loss="qfl"), resume=True, log=lambda m: None)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    cfg = _cfg(tiny_data, tmp_path, loss="qfl", epochs=3)
    original = QualityFCOSHead.compute_loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        losses = original(self, *args, **kwargs)
        if calls["n"] == 3:  # epoch 2 (2 steps per epoch), first step
            losses["classification"] = losses["classification"] * float("nan")
        return losses

    monkeypatch.setattr(QualityFCOSHead, "compute_loss", poisoned)
    snapshots = {}
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss at epoch 2, step 1/2 \(classification=nan"
    ) as err:
        train(
            cfg, on_epoch_end=lambda e, r: snapshots.update(load_checkpoint(tmp_path / "last.pt")), log=print
        )
    assert "last.pt (epoch 1)" in str(err.value)
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.equal(v, snapshots["model"][k]) for k, v in kept["model"].items())
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def _head_inputs(num_classes=3, seed=0):
    """A batch through the tiny FCOS up to the head: features, head module inputs, and matched indices."""
    torch.manual_seed(seed)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 30.0, 60.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 58.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def test_focal_head_equals_torchvision_in_one_process():
    from torchvision.models.detection.fcos import FCOSHead

    images, targets = _head_inputs()
    torch.manual_seed(1)
    ours = fcos_tiny(3, loss="focal", imgsz=64)
    assert isinstance(ours.head, FocalFCOSHead)
    ref_head = FCOSHead(64, 1, 3, 2)
    ref_head.load_state_dict(ours.head.state_dict())
    a = ours(images, targets)
    ours.head = ref_head
    b = ours(images, targets)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("loss", ["qfl", "vfl"])
def test_quality_head_target_is_iou_of_decoded_box(loss):
    from torchvision.ops import box_iou

    images, targets = _head_inputs()
    torch.manual_seed(2)
    model = fcos_tiny(3, loss=loss, imgsz=64)
    assert isinstance(model, QualityFCOS) and isinstance(model.head, QualityFCOSHead)
    seen = _spy_compute_loss(model)
    losses = model(images, targets)
    logits = seen["head_outputs"]["cls_logits"]
    target = torch.zeros_like(logits)
    n_pos = 0
    for i, (m, t) in enumerate(zip(seen["matched"], seen["targets"], strict=True)):
        pred = model.head.box_coder.decode(seen["head_outputs"]["bbox_regression"][i], seen["anchors"][i])
        for a in torch.nonzero(m >= 0).flatten().tolist():
            gt = t["boxes"][m[a]]
            target[i, a, t["labels"][m[a]]] = box_iou(pred[a : a + 1], gt[None])[0, 0].clamp(0, 1)
            n_pos += 1
    assert n_pos > 0 and 0 < target.max() <= 1
    if loss == "qfl":
        expected = quality_focal_loss(logits, target, beta=2.0, avg_factor=float(n_pos))
    else:
        expected = varifocal_loss(logits, target, alpha=0.75, gamma=2.0, avg_factor=float(n_pos))
    torch.testing.assert_close(losses["classification"], expected, rtol=1e-5, atol=1e-7)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert model.head.classification_head.cls_logits.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        det = model(images)
    assert all(set(d) == {"boxes", "scores", "labels"} for d in det)
    assert all(((d["scores"] >= 0.05) & (d["scores"] <= 1)).all() for d in det)


def test_amp_choice():
    assert amp_dtype("off", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        amp_dtype("fp16", torch.device("cpu"))
    with pytest.raises(
        ValueError,
        match=r"loss: expected one of focal, qfl \(= qfocal\), vfl \(= varifocal\), gfl, focal_noctr, got 'qf'",
    ):
        TrainConfig(loss="qf").validate()
    with pytest.raises(ValueError, match="imgsz: expected a multiple of 32"):
        TrainConfig(imgsz=100).validate()


def test_cli_train_bf16_then_evaluate(tiny_data, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "train",
        "--data",
        str(tiny_data),
        "--loss",
        "vfl",
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--batch",
        "4",
    ]
    assert main([*argv, "--amp", "bf16", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == RESULT_KEYS
    assert main(["evaluate", "--weights", str(out / "last.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated == pytest.approx(json.loads((out / "metrics.json").read_text()), abs=0.02)
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "other")]) == 1
    assert "dataset not found" in capsys.readouterr().err


def test_compare_writes_table_and_plot(tiny_data, tmp_path):
    base = _cfg(tiny_data, tmp_path, plots=False)
    result = compare(base, losses=["focal", "qfl"], seeds=[0, 1], out=tmp_path / "cmp", log=lambda m: None)
    assert [(r["loss"], r["seed"]) for r in result["runs"]] == [
        ("focal", 0),
        ("qfl", 0),
        ("focal", 1),
        ("qfl", 1),
    ]
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| focal | 2 |" in table and "| qfl | 2 |" in table and "±" in table and "(4 of 4 runs)" in table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    again = compare(base, losses=["focal", "qfl"], seeds=[0, 1], out=tmp_path / "cmp", resume=True, log=print)
    assert [r["AP"] for r in again["runs"]] == [r["AP"] for r in result["runs"]]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["focal", "qfl", "vfl"])
def test_longer_training_learns(tmp_path, loss):
    """About a minute per loss: AP50 on the synthetic val split rises well above its first-epoch value."""
    cfg = TrainConfig(
        data="synthetic",
        loss=loss,
        epochs=10,
        imgsz=128,
        batch=16,
        synth_images=300,
        out=str(tmp_path),
        progress=False,
        plots=False,
    )
    metrics = train(cfg, log=lambda m: None)
    history = load_checkpoint(tmp_path / "last.pt")["history"]
    assert metrics["AP50"] > 0.03, metrics
    assert metrics["AP50"] > history[0]["AP50"] + 0.02, [round(r["AP50"], 4) for r in history]


def test_gfl_head_trains_a_box_distribution_with_dfl(tiny_data, tmp_path):
    from qfocal import distribution_focal_loss
    from qfocal.integrations.torchvision import GFL_REG_MAX

    images, targets = _head_inputs()
    torch.manual_seed(3)
    model = fcos_tiny(3, loss="gfl", imgsz=64)
    assert model.head.reg_max == GFL_REG_MAX and model.head.loss == "qfl"
    seen = _spy_compute_loss(model)
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_dfl"}
    out = seen["head_outputs"]
    bins = GFL_REG_MAX + 1
    logits = out["bbox_dist"].unflatten(-1, (4, bins))
    # The regressed side is the expectation of the distribution over the bins.
    expected_sides = (logits.softmax(-1) * torch.arange(bins, dtype=torch.float32)).sum(-1)
    torch.testing.assert_close(out["bbox_regression"], expected_sides, rtol=1e-5, atol=1e-5)
    dfl_logits, dfl_targets = [], []
    for i, (m, t) in enumerate(zip(seen["matched"], seen["targets"], strict=True)):
        for a in torch.nonzero(m >= 0).flatten().tolist():
            gt, anchor = t["boxes"][m[a]], seen["anchors"][i][a]
            size = anchor[2] - anchor[0]
            cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
            sides = torch.stack([cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy]) / size
            dfl_targets.append(sides.clamp(0, GFL_REG_MAX - 0.01))
            dfl_logits.append(logits[i, a])
    n_pos = len(dfl_targets)
    expected = 0.25 * distribution_focal_loss(
        torch.stack(dfl_logits).reshape(-1, bins),
        torch.stack(dfl_targets).reshape(-1),
        avg_factor=4.0 * n_pos,
    )
    torch.testing.assert_close(losses["bbox_dfl"], expected, rtol=1e-5, atol=1e-6)
    sum(losses.values()).backward()
    assert model.head.regression_head.bbox_reg.weight.grad.abs().sum() > 0
    metrics = train(_cfg(tiny_data, tmp_path, loss="gfl"), log=lambda m: None)
    assert list(metrics) == RESULT_KEYS
