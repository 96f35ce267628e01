"""The demo: the shipped backbone and its hash check, backbone files, `qfocal pretrain`, the demo's pinned settings,
and the verdict it prints, from hand-made compare results."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from qfocal.cli import main
from qfocal_lab.detection import TrainConfig, train
from qfocal_lab.detection import backbone as bb
from qfocal_lab.detection import cli as dcli
from qfocal_lab.detection.stats import paired_deltas, verdict_lines
from qfocal_lab.detection.train import build_model
from tests.conftest import tiny_config


def _tiny_checkpoint(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "run", loss="focal")
    train(cfg, log=lambda m: None)
    return cfg, tmp_path / "run" / "last.pt"


def _one_line(text: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text


# ---------------------------------------------------------------------------------------------------------
# The shipped backbone
# ---------------------------------------------------------------------------------------------------------
def test_the_shipped_backbone_passes_its_hash_check_and_fits_the_demo_model():
    path = bb.demo_backbone()
    tensors = bb.read_backbone(path, expected_digest=bb.DEMO_BACKBONE_DIGEST)
    assert bb.backbone_digest(tensors) == bb.DEMO_BACKBONE_DIGEST
    model = build_model(6, TrainConfig(model_size=bb.DEMO_PRETRAIN["model_size"], box_bias=1.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied = bb.load_backbone(model, path, expected_digest=bb.DEMO_BACKBONE_DIGEST)
    after = model.state_dict()
    assert copied == len(tensors) > 10
    assert all(torch.equal(after[k], tensors[k]) for k in tensors)
    assert any(not torch.equal(before[k], after[k]) for k in tensors)


def test_a_damaged_shipped_backbone_is_one_line_error(tmp_path):
    good = bb.read_backbone(bb.demo_backbone())
    record = torch.load(bb.demo_backbone(), weights_only=True)
    # A bit flipped inside one tensor: the file still loads, its recorded digest no longer matches.
    name = sorted(good)[3]
    flipped = {k: v.clone() for k, v in good.items()}
    flipped[name].view(-1)[0] = flipped[name].view(-1)[0] + 1.0
    damaged = tmp_path / "damaged.pt"
    torch.save({**record, "tensors": flipped}, damaged)
    with pytest.raises(bb.CheckpointError, match="damaged: its tensors' digest is") as info:
        bb.read_backbone(damaged)
    _one_line(str(info.value))
    # A truncated file does not load at all.
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(bb.demo_backbone()).read_bytes()[:5000])
    with pytest.raises(bb.CheckpointError, match="damaged, or not a backbone") as info:
        bb.read_backbone(truncated)
    _one_line(str(info.value))


def test_a_foreign_file_in_place_of_the_demo_backbone_is_refused(tiny_data, tmp_path, monkeypatch):
    # A consistent backbone file of other weights: its own digest matches, the expected one does not.
    _, ckpt = _tiny_checkpoint(tiny_data, tmp_path)
    other = tmp_path / "other.pt"
    digest = bb.export_backbone(ckpt, other)
    assert digest != bb.DEMO_BACKBONE_DIGEST
    with pytest.raises(bb.CheckpointError, match="expected the backbone with digest 2e6a9c612000") as info:
        bb.read_backbone(other, expected_digest=bb.DEMO_BACKBONE_DIGEST)
    _one_line(str(info.value))
    # Neither a backbone file nor a qfocal checkpoint.
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(bb.CheckpointError, match="not a checkpoint written by qfocal train"):
        bb.read_backbone(junk)
    text = tmp_path / "text.pt"
    text.write_text("not a torch file")
    with pytest.raises(bb.CheckpointError, match="damaged, or not a backbone"):
        bb.read_backbone(text)


def test_the_demo_refuses_a_shipped_backbone_that_is_not_the_one_released(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bb, "DEMO_BACKBONE_DIGEST", "f" * 64)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert "qfocal demo: error: the shipped demo backbone" in err and "reinstall qfocal" in err
    assert not (tmp_path / "demo").exists()  # refused before any data or training
    assert main(["compare", "--preset", "demo", "--out", str(tmp_path / "c")]) == 1
    _one_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------------------
# Backbone files
# ---------------------------------------------------------------------------------------------------------
def test_export_then_load_gives_the_checkpoints_backbone_and_the_same_digest_twice(tiny_data, tmp_path):
    cfg, ckpt = _tiny_checkpoint(tiny_data, tmp_path)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    digest = bb.export_backbone(ckpt, a, made_by="test")
    assert bb.export_backbone(ckpt, b) == digest  # the files differ (torch.save's id); the digests do not
    from_file = bb.read_backbone(a, expected_digest=digest)
    from_ckpt = bb.read_backbone(ckpt)
    assert from_file.keys() == from_ckpt.keys() and len(from_file) > 10
    assert all(torch.equal(from_file[k], from_ckpt[k]) for k in from_file)
    assert all(k.startswith(bb.BACKBONE_PREFIX) for k in from_file)
    record = torch.load(a, weights_only=True)
    assert record["format"] == bb.BACKBONE_FORMAT and record["made_by"] == "test"
    # A run started from the backbone file trains, and records it.
    out = tmp_path / "ft"
    train(dataclasses.replace(cfg, out=str(out), loss="qfl", init=str(a)), log=lambda m: None)
    assert json.loads((out / "facts.json").read_text())["autocast"] == "fp32"


def test_a_backbone_of_another_model_size_does_not_fit(tiny_data, tmp_path):
    cfg, ckpt = _tiny_checkpoint(tiny_data, tmp_path)
    bb.export_backbone(ckpt, tmp_path / "a.pt")
    small = build_model(3, dataclasses.replace(cfg, model_size="small"))
    with pytest.raises(bb.CheckpointError, match="its backbone does not fit this model"):
        bb.load_backbone(small, tmp_path / "a.pt")


def test_pretrain_command_writes_a_backbone_and_says_whether_it_is_the_shipped_one(
    tmp_path, monkeypatch, capsys
):
    # The command's settings shrunk to seconds; the full one is the slow test below.
    tiny = {**bb.DEMO_PRETRAIN, "synth_images": 16, "synth_val": 4, "imgsz": 64, "batch": 4, "epochs": 1}
    monkeypatch.setattr(bb, "DEMO_PRETRAIN", tiny)
    out = tmp_path / "pre"
    assert main(["pretrain", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    digest = bb.backbone_digest(bb.read_backbone(out / "backbone.pt"))
    assert f"digest {digest}" in printed and "other tensors than the shipped demo backbone" in printed
    ckpt = torch.load(out / "pretrain" / "last.pt", weights_only=True)
    assert ckpt["config"]["seed"] == 10_000 and ckpt["config"]["synth_seed"] == 1
    assert ckpt["config"]["threads"] == 1 and ckpt["config"]["amp"] == "off"
    (tmp_path / "file").write_text("x")  # an existing file as --out: one line, exit 2
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--out", str(tmp_path / "file")])
    assert info.value.code == 2
    _one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_pretrain_command_reproduces_the_shipped_backbone(tmp_path, capsys):
    """About 4 minutes on one core: the documented command gives the shipped tensors, bit for bit, on the CPU
    model it was made on (elsewhere the digest may differ; the demo then still runs from the shipped file)."""
    assert main(["pretrain", "--out", str(tmp_path / "pre"), "--no-progress"]) == 0
    assert "the same tensors as the shipped demo backbone" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# The demo's settings and the compare preset
# ---------------------------------------------------------------------------------------------------------
def test_demo_settings_are_pinned_so_load_and_cpu_do_not_change_its_numbers(tmp_path):
    cfg = dcli.demo_config(str(tmp_path / "d"))
    assert cfg.threads == 1 and cfg.amp == "off"  # not the machine's load, not the CPU's bf16
    assert dcli.DEMO["jobs"] == 2
    assert cfg.init == bb.demo_backbone() and cfg.synth_difficulty == "easy" and cfg.box_bias == 1.0
    assert dcli.DEMO["losses"][0] == "focal" and {"qfl", "gfl"} <= set(dcli.DEMO["losses"])


def test_compare_preset_demo_resolves_the_shipped_backbone(tmp_path):
    from qfocal.cli import build_parser

    args = build_parser().parse_args(["compare", "--preset", "demo", "--out", str(tmp_path)])
    dcli._apply_preset(args)
    assert args.init == bb.demo_backbone()
    assert args.threads == 1 and args.amp == "off" and args.jobs == 2
    assert args.losses == list(dcli.DEMO["losses"]) and args.seeds == list(dcli.DEMO["seeds"])


# ---------------------------------------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------------------------------------
def _runs(base: list[float], **others: list[float]) -> list[dict]:
    runs = [{"loss": "focal", "seed": s, "AP": v} for s, v in enumerate(base)]
    for loss, values in others.items():
        runs += [{"loss": loss, "seed": s, "AP": v} for s, v in enumerate(values)]
    return runs


def test_verdict_states_a_difference_that_excludes_zero_with_its_numbers():
    runs = _runs([0.50, 0.51, 0.49, 0.50], gfl=[0.523, 0.532, 0.514, 0.524], vfl=[0.49, 0.50, 0.48, 0.49])
    deltas = paired_deltas(runs, "focal", ["AP"])
    lines = verdict_lines(deltas, "focal", "AP")
    d = deltas["gfl"]["AP"]
    assert lines[0] == (
        f"gfl beats focal by {d['mean']:.1f} AP points (95 % interval {d['ci95_low']:+.1f} to "
        f"{d['ci95_high']:+.1f}, 4 seeds): the interval excludes 0."
    )
    assert lines[1].startswith("vfl trails focal by 1.0 AP points") and "excludes 0" in lines[1]


def test_verdict_says_when_a_difference_is_not_settled_and_how_many_seeds_would_settle_it():
    runs = _runs([0.50, 0.51, 0.49, 0.50], qfl=[0.504, 0.511, 0.496, 0.502], same=[0.50, 0.515, 0.485, 0.50])
    deltas = paired_deltas(runs, "focal", ["AP"])
    lines = verdict_lines(deltas, "focal", "AP")
    assert "not settled, the interval includes 0" in lines[0]
    from qfocal_lab.detection.stats import paired_sd, seeds_for_halfwidth

    d = deltas["qfl"]["AP"]
    need = seeds_for_halfwidth(paired_sd(d), abs(d["mean"]))
    assert need > 4 and f"about {need} seeds would settle" in lines[0]
    assert math.isclose(deltas["same"]["AP"]["mean"], 0.0, abs_tol=1e-9)
    assert "too small against the noise" in lines[1]


def test_verdict_with_one_seed_has_no_interval():
    deltas = paired_deltas(_runs([0.5], qfl=[0.52]), "focal", ["AP"])
    assert verdict_lines(deltas, "focal") == ["qfl vs focal: fewer than 2 paired seeds, no interval yet."]
