"""The presets of qfocal compare (qfocal_lab.detection.presets): their settings are laid under the command
line, an option given explicitly wins."""

from __future__ import annotations

import importlib

from qfocal.cli import main


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


def test_presets_pin_the_fine_tune_settings(tmp_path, monkeypatch, capsys, checkpoints):
    """A framework preset sets --framework and its settings (threads pinned); options given explicitly win."""
    from qfocal_lab.detection import frameworks

    plans = []

    def capture(plan, resume=False, log=None):
        plans.append(plan)
        return {"table": "", "wall_s": 0.0}

    monkeypatch.setattr(frameworks, "run_framework_compare", capture)
    adamw = {"optimizer": "AdamW", "lr0": 0.001, "warmup_bias_lr": 0}
    for preset, losses, pretrain, train_args in (
        ("yolov5-finetune", ["bce", "focal", "qfl", "vfl"], 60, adamw),
        ("ultralytics-finetune", ["bce", "qfl", "vfl", "qfl-warmup3"], 30, {}),
    ):
        assert main(["compare", "--preset", preset, "--out", str(tmp_path / preset)]) == 0
        plan = plans[-1]
        assert plan.framework == preset.split("-")[0]
        assert [v.name for v in plan.variants] == losses and plan.seeds == tuple(range(8))
        s = plan.settings
        assert (s["pretrain_epochs"], s["epochs"], s["jobs"], s["threads"]) == (pretrain, 10, 2, 1)
        assert (s["synth_images"], s["pretrain_images"], s["plots"]) == (800, 2000, False)
        assert s["synth_difficulty"] == "easy" and s["train_args"] == train_args
    # The label-smoothing case starts from the objectness compare's pretraining: --weights replaces the preset's.
    weights = checkpoints["yolov5"]
    argv = [
        "compare",
        "--preset",
        "yolov5-cls-finetune",
        "--weights",
        str(weights),
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 0
    s = plans[-1].settings
    assert [v.name for v in plans[-1].variants] == ["bce", "qfl"] and s["term"] == "cls"
    assert s["pretrain_epochs"] == 0 and s["weights"] == str(weights.resolve())
    assert s["train_args"] == {**adamw, "label_smoothing": 0.1}
    assert (
        main(
            [
                "compare",
                "--preset",
                "yolov5-finetune",
                "--epochs",
                "4",
                "--jobs",
                "3",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 0
    )
    assert (plans[-1].settings["epochs"], plans[-1].settings["jobs"]) == (4, 3)
