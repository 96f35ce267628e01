"""``qfocal compare --framework yolov5|ultralytics``: variants, argument checks, the collection of each
framework's metrics (on stand-in trainers), resume, the shared writer's outputs, and a tiny real compare per
framework."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qfocal.cli import main
from qfocal_lab.data.synth import write_toy_dataset
from qfocal_lab.detection.config import ConfigError
from qfocal_lab.detection.frameworks import (
    FRAMEWORK_METRICS,
    compare_framework,
)

# Made-up final validations per (variant, seed): qfl is 2 mAP50 points above bce on both seeds, +-0.5.
_MAP = {
    ("bce", 0): (0.300, 0.100),
    ("bce", 1): (0.310, 0.110),
    ("qfl", 0): (0.315, 0.120),
    ("qfl", 1): (0.335, 0.130),
    ("qfl@1", 0): (0.200, 0.050),
    ("qfl@1", 1): (0.220, 0.060),
}


def _variant_of(loss: str, gain) -> str:
    return loss if gain == "auto" or loss == "bce" else f"{loss}@{gain:g}"


class FakeYOLOv5:
    """Stands in for qfocal.integrations.yolov5.train: records each call and writes a results.csv in YOLOv5's
    format (one row per epoch's validation; the last epoch's is not the best) into the run folder."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, *, data, cfg, hyp, **opts):
        self.calls.append(
            {"data": data, "cfg": cfg, "hyp": dict(hyp), "threads": torch.get_num_threads(), **opts}
        )
        save_dir = Path(opts["project"]) / opts["name"]
        save_dir.mkdir(parents=True)
        m50, m95 = _MAP[(_variant_of(hyp["obj_loss"], hyp["obj_gain"]), opts["seed"])]
        keys = ["epoch", "train/box_loss", "metrics/precision", "metrics/recall", "metrics/mAP_0.5"]
        keys.append("metrics/mAP_0.5:0.95")
        rows = [[0, 0.1, 0.5, 0.4, m50 / 2, m95 / 2], [1, 0.09, 0.7, 0.6, m50 + 0.1, m95 + 0.1]]
        rows.append([2, 0.08, 0.6, 0.5, m50, m95])
        text = ",".join(f"{k:>20s}" for k in keys) + "\n"
        text += "".join(",".join(f"{v:20.5g}" for v in row) + "\n" for row in rows)
        (save_dir / "results.csv").write_text(text)
        return SimpleNamespace(save_dir=str(save_dir))


class FakeUltralytics:
    """Stands in for qfocal.integrations.ultralytics.train: picks the device as Ultralytics' trainer does (which
    resets torch's thread count) and returns a trainer with Ultralytics' metric keys."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, model, *, data, cls_loss, cls_gain, **overrides):
        from ultralytics.utils.torch_utils import select_device

        select_device(overrides["device"], verbose=False)
        self.calls.append(
            {
                "model": model,
                "data": data,
                "cls_loss": cls_loss,
                "cls_gain": cls_gain,
                "threads": torch.get_num_threads(),
                **overrides,
            }
        )
        save_dir = Path(overrides["project"]) / overrides["name"]
        save_dir.mkdir(parents=True)
        m50, m95 = _MAP[(_variant_of(cls_loss, cls_gain), overrides["seed"])]
        metrics = {
            "metrics/precision(B)": 0.6,
            "metrics/recall(B)": 0.5,
            "metrics/mAP50(B)": m50,
            "metrics/mAP50-95(B)": m95,
            "val/box_loss": 1.0,
        }
        return SimpleNamespace(metrics=metrics, save_dir=save_dir)


def _check_outputs(out: Path, result: dict, label: str) -> None:
    on_disk = json.loads((out / "compare.json").read_text())
    assert on_disk["losses"] == ["bce", "qfl", "qfl@1"] and on_disk["baseline"] == "bce"
    assert [(r["loss"], r["seed"]) for r in on_disk["runs"]] == [
        (v, s) for s in (0, 1) for v in on_disk["losses"]
    ]
    for run in on_disk["runs"]:
        assert (run["mAP50"], run["mAP50-95"]) == pytest.approx(_MAP[(run["loss"], run["seed"])], abs=1e-9)
    delta = on_disk["summary"]["qfl"]["delta_vs_baseline"]
    # qfl - bce per seed: +1.5 and +2.5 points (mAP50), +2.0 and +2.0 (mAP50-95)
    assert delta["mAP50"]["mean"] == pytest.approx(2.0) and delta["mAP50"]["n"] == 2
    assert delta["mAP50"]["ci95_low"] < 2.0 < delta["mAP50"]["ci95_high"]
    assert delta["mAP50-95"]["mean"] == pytest.approx(2.0)
    assert "delta_vs_baseline" not in on_disk["summary"]["bce"]
    assert on_disk["summary"]["qfl@1"]["mean"]["mAP50"] == pytest.approx(0.21)
    assert on_disk["variants"]["qfl@1"] == {"loss": "qfl", "gain": 1.0, "warmup": 0}
    assert on_disk["variants"]["qfl"] == {"loss": "qfl", "gain": "auto", "warmup": 0}
    assert set(result) == set(on_disk)
    md = (out / "compare.md").read_text()
    columns = "mAP50 | mAP50-95 | P | R | score-IoU ρ | PR start | PR end"
    assert f"| {label} | seeds | {columns} | train s/run |" in md
    # a stand-in trainer has no model to measure: the diagnostics are n/a, the framework's numbers are there
    assert "| qfl | 2 | 32.5 ± 1.4 | 12.5 ± 0.7 | 0.60 ± 0.00 | 0.50 ± 0.00 | n/a | n/a | n/a |" in md
    assert f"| {label} − bce | n | {columns} |" in md
    assert "from scratch" in md and "fine-tuned" not in md
    assert "| qfl | 2 | +2.0 [" in md and "- qfl vs bce (n=2 seeds)" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for variant in on_disk["losses"]:
        for seed in (0, 1):
            record = json.loads((out / f"{variant}-s{seed}" / "metrics.json").read_text())
            assert record["variant"] == variant and record["seed"] == seed


def test_yolov5_collection_resume_and_outputs(tmp_path):
    """Variants set obj_loss / obj_gain (classification stays BCE), the runs get the pinned thread count, the
    final validation is what on_train_end receives, and resume reuses finished runs only with their settings."""
    fake, out, logs = FakeYOLOv5(), tmp_path / "cmp", []
    kwargs = dict(
        losses=["bce", "qfl", "qfl-unbalanced"],
        seeds=[0, 1],
        synth_images=6,  # the default data: the synthetic set, generated once under OUT/data
        epochs=1,
        imgsz=64,
        batch=2,
        device="cpu",
        threads=1,
        out=out,
        log=logs.append,
        train_fn=fake,
    )
    threads = torch.get_num_threads()
    result = compare_framework("yolov5", **kwargs)
    assert torch.get_num_threads() == threads, "the pinned thread count must be restored"
    _check_outputs(out, result, "obj loss (cls: bce)")
    assert result["framework"] == "yolov5" and result["term"] == "obj_loss"
    assert [c["hyp"] for c in fake.calls[:3]] == [
        {"obj_loss": "bce", "obj_gain": "auto", "cls_loss": "bce"},
        {"obj_loss": "qfl", "obj_gain": "auto", "cls_loss": "bce"},
        {"obj_loss": "qfl", "obj_gain": 1.0, "cls_loss": "bce"},
    ]
    first = fake.calls[0]
    assert (
        first["data"] == str((out / "data" / "data.yaml").resolve())
        and (out / "data" / "data.yaml").is_file()
    )
    assert first["cfg"] == "yolov5n.yaml" and first["threads"] == 1 and first["workers"] == 0
    assert (first["epochs"], first["imgsz"], first["batch_size"], first["device"]) == (1, 64, 2, "cpu")
    assert Path(first["project"]) / first["name"] == (out / "bce-s0").resolve()
    assert json.loads((out / "qfl-s1" / "metrics.json").read_text())["source"].startswith("final epoch")

    # resume: every finished run is reused; an unfinished one (no metrics.json) is trained again from scratch
    (out / "qfl-s1" / "metrics.json").unlink()
    again = compare_framework("yolov5", **kwargs, resume=True)
    assert [(c["name"], c["seed"]) for c in fake.calls[6:]] == [("qfl-s1", 1)]
    assert sum("reusing" in line for line in logs) == 5
    assert again["summary"]["qfl"]["delta_vs_baseline"]["mAP50"]["mean"] == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="other settings: epochs 1 \\(now 2\\)"):
        compare_framework("yolov5", **{**kwargs, "epochs": 2}, resume=True)


def test_yolov5_user_data_and_final_epoch(tmp_path):
    """A folder holding data.yaml is the user's data; the final epoch's row is reported, not the best one."""
    data = write_toy_dataset(tmp_path / "toy", n_train=2, n_val=1, imgsz=32)
    fake = FakeYOLOv5()
    result = compare_framework(
        "yolov5",
        losses=["bce", "qfl"],
        seeds=[0],
        data=data.parent,  # a folder holding data.yaml
        model="yolov5s.yaml",
        epochs=1,
        imgsz=64,
        threads=1,
        device="cpu",
        out=tmp_path / "cmp",
        log=lambda _: None,
        train_fn=fake,
    )
    assert fake.calls[0]["data"] == str(data.resolve()) and fake.calls[0]["cfg"] == "yolov5s.yaml"
    assert [r["mAP50"] for r in result["runs"]] == pytest.approx([_MAP[("bce", 0)][0], _MAP[("qfl", 0)][0]])
    record = json.loads((tmp_path / "cmp" / "qfl-s0" / "metrics.json").read_text())
    assert "results.csv, last row" in record["source"] and record["precision"] == pytest.approx(0.6)
    assert result["summary"]["qfl"]["delta_vs_baseline"]["mAP50"]["n"] == 1


def test_train_args_reach_hyp_options_and_overrides(tmp_path):
    """--train-arg values are typed; YOLOv5 hyp keys go into the hyp and the others are train.py options;
    Ultralytics takes all as overrides; the header records them and resume requires the same ones."""
    from qfocal_lab.detection.frameworks import parse_train_arg

    assert [parse_train_arg(t) for t in ("lr0=0.001", "epochs=3", "cos_lr=true", "optimizer=AdamW")] == [
        ("lr0", 0.001),
        ("epochs", 3),
        ("cos_lr", True),
        ("optimizer", "AdamW"),
    ]
    assert parse_train_arg("name= none ") == ("name", None)
    args = ["optimizer=AdamW", "lr0=0.001", "warmup_bias_lr=0"]
    fake, out = FakeYOLOv5(), tmp_path / "v5"
    kwargs = dict(
        losses=["bce", "qfl"], seeds=[0], synth_images=6, epochs=1, imgsz=64, threads=1, device="cpu"
    )
    result = compare_framework(
        "yolov5", **kwargs, train_args=args, out=out, log=lambda _: None, train_fn=fake
    )
    call = fake.calls[1]
    assert call["optimizer"] == "AdamW" and "lr0" not in call and "optimizer" not in call["hyp"]
    assert call["hyp"] == {
        "lr0": 0.001,
        "warmup_bias_lr": 0,
        "obj_loss": "qfl",
        "obj_gain": "auto",
        "cls_loss": "bce",
    }
    assert "optimizer=AdamW lr0=0.001 warmup_bias_lr=0" in (out / "compare.md").read_text()
    assert result["config"]["train_args"] == {"optimizer": "AdamW", "lr0": 0.001, "warmup_bias_lr": 0}
    with pytest.raises(ConfigError, match="train_args \\{'optimizer': 'AdamW'"):
        compare_framework("yolov5", **kwargs, out=out, resume=True, log=lambda _: None, train_fn=fake)

    fake_u = FakeUltralytics()
    compare_framework(
        "ultralytics", **kwargs, train_args={"optimizer": "SGD", "lr0": 0.01}, out=tmp_path / "u", log=lambda _: None,
        train_fn=fake_u,
    )  # fmt: skip
    assert (fake_u.calls[0]["optimizer"], fake_u.calls[0]["lr0"]) == ("SGD", 0.01)
    assert fake_u.calls[0]["val"] is False and fake_u.calls[0]["epochs"] == 1


def test_ultralytics_collection_and_outputs(tmp_path):
    """Variants set cls_loss / cls_gain; the pinned thread count holds through Ultralytics' select_device (which
    sets its own NUM_THREADS, min(8, cores - 1)); trainer.metrics are collected."""
    pytest.importorskip("ultralytics")
    data = write_toy_dataset(tmp_path / "toy", n_train=2, n_val=1, imgsz=32)
    fake, out = FakeUltralytics(), tmp_path / "cmp"
    threads = torch.get_num_threads()
    result = compare_framework(
        "ultralytics",
        losses=["bce", "qfocal", "qfl@1"],
        seeds=[0, 1],
        data=data,
        epochs=1,
        imgsz=64,
        batch=2,
        threads=2,  # select_device alone sets min(8, cores - 1): 1 here, 2 only on a 3-core machine
        device="cpu",
        out=out,
        log=lambda _: None,
        train_fn=fake,
    )
    assert [c["threads"] for c in fake.calls] == [2] * 6 and torch.get_num_threads() == threads
    _check_outputs(out, result, "cls loss")
    assert result["term"] == "cls_loss" and result["config"]["model"] == "yolov8n.yaml"
    assert [(c["cls_loss"], c["cls_gain"]) for c in fake.calls[:3]] == [
        ("bce", "auto"),
        ("qfl", "auto"),
        ("qfl", 1.0),
    ]
    assert fake.calls[0]["model"] == "yolov8n.yaml" and fake.calls[0]["plots"] is True
    assert fake.calls[0]["val"] is False  # the final epoch is validated and reported
    assert result["runs"][0]["precision"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"framework": "mmdet"}, "framework: expected one of yolov5, ultralytics"),
        ({"losses": ["bce", "gfl"]}, "losses: expected bce, focal, qfl \\(= qfocal\\), vfl"),
        ({"losses": []}, "losses: expected at least one"),
        ({"seeds": [0, 0]}, "seeds: expected each once"),
        ({"imgsz": 100}, "imgsz: expected a multiple of 32"),
        ({"epochs": 0}, "epochs: expected a positive integer"),
        ({"data": "nowhere.yaml"}, "data: expected 'synthetic', a YOLO data yaml"),
        ({"device": "tpu"}, "device: expected auto, cpu"),
        ({"threads": -1}, "threads: expected an integer >= 0"),
    ],
)
def test_arguments_are_checked_before_training(tmp_path, kwargs, match):
    fake = FakeYOLOv5()
    kwargs = {"framework": "yolov5", "out": tmp_path / "cmp", "train_fn": fake, **kwargs}
    with pytest.raises(ConfigError, match=match):
        compare_framework(kwargs.pop("framework"), **kwargs)
    assert fake.calls == [] and not (tmp_path / "cmp").exists()


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--framework", "yolov5", "--losses", "bce,bogus"], "expected bce, focal, qfl (= qfocal), vfl"),
        (["--framework", "ultralytics", "--losses", "qfl@1,qfl-unbalanced"], "qfl@1 repeated"),
        (["--framework", "mmdet"], "argument --framework: invalid choice"),
        (["--framework", "yolov5", "--model", "nope.yaml"], "model: expected a YOLOv5 model yaml"),
        (["--framework", "ultralytics", "--model", "nope.yaml"], "model: expected an Ultralytics model yaml"),
        (["--framework", "yolov5", "--lr", "0.1"], "--lr: an option of the FCOS harness"),
        (["--framework", "ultralytics", "--preset", "demo"], "--preset demo: a preset of the FCOS harness"),
        (["--framework", "yolov5", "--data", "nowhere.yaml"], "data: expected 'synthetic'"),
        (["--model", "yolov5n.yaml"], "--model: for --framework yolov5 or ultralytics"),
        (["--losses", "bce"], "argument --losses: expected one of focal"),  # FCOS: its own heads only
        (["--losses", "qfl,qfocal"], "argument --losses: expected each loss once"),
        (["--train-arg", "optimizer=SGD"], "--train-arg: for --framework yolov5 or ultralytics"),
        (["--framework", "yolov5", "--train-arg", "lr0"], "train_args: expected KEY=VALUE"),
        (["--framework", "yolov5", "--train-arg", "epochs=3"], "train_args: epochs is set by the compare"),
        (["--framework", "yolov5", "--train-arg", "lr_0=0.1"], "got unknown lr_0"),
        (["--framework", "ultralytics", "--train-arg", "val=True"], "train_args: val is set by the compare"),
        (["--framework", "ultralytics", "--train-arg", "optimiser=SGD"], "got unknown optimiser"),
        # values, checked before anything trains: YOLOv5's hyp and train.py options, Ultralytics' own check_cfg
        (["--framework", "yolov5", "--train-arg", "lr0=nan"], "train_args: lr0: expected a finite number"),
        (
            ["--framework", "yolov5", "--train-arg", "label_smoothing=2"],
            "label_smoothing: expected a fraction",
        ),
        (["--framework", "yolov5", "--train-arg", "mosaic=1.5"], "mosaic: expected a fraction in [0, 1]"),
        (["--framework", "yolov5", "--train-arg", "lr0=-1"], "lr0: expected a number > 0"),
        (["--framework", "yolov5", "--train-arg", "fl_gamma=-1"], "fl_gamma: expected a number >= 0"),
        (["--framework", "yolov5", "--train-arg", "degrees=abc"], "degrees: expected a number"),
        (
            ["--framework", "yolov5", "--train-arg", "optimizer=Foo"],
            "optimizer: expected one of SGD, Adam, AdamW",
        ),
        (["--framework", "yolov5", "--train-arg", "patience=1.5"], "patience: expected int"),
        (["--framework", "yolov5", "--train-arg", "cos_lr=3"], "cos_lr: expected true or false"),
        (["--framework", "ultralytics", "--train-arg", "lr0=nan"], "lr0: expected a finite number"),
        (["--framework", "ultralytics", "--train-arg", "lr0=2"], "'lr0=2' is an invalid value"),
        (["--framework", "ultralytics", "--train-arg", "cos_lr=3"], "'cos_lr' must be a bool"),
        (["--framework", "ultralytics", "--train-arg", "box=inf"], "box: expected a finite number"),
    ],
)
def test_command_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "cmp"
    code, err = _cli(["compare", *argv, "--out", str(out)], capsys)
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("qfocal compare: error: "), err
    assert match in errors[0], err
    assert not out.exists(), "nothing may be trained or written"


def _tiny(framework: str, tmp_path: Path) -> tuple[dict, float]:
    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    out = tmp_path / "cmp"
    t = time.perf_counter()
    code = main(
        [
            "compare",
            "--framework",
            framework,
            "--data",
            str(data),
            "--losses",
            "bce,qfl",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--imgsz",
            "64",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    seconds = time.perf_counter() - t
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert [(r["loss"], r["seed"]) for r in result["runs"]] == [
        ("bce", 0),
        ("qfl", 0),
        ("bce", 1),
        ("qfl", 1),
    ]
    for run in result["runs"]:
        for key in ("mAP50", "mAP50-95", "precision", "recall"):
            assert run[key] is not None and 0.0 <= run[key] <= 1.0, run
        # the diagnostics of a real run: the framework's own validation predictions, the gradient on a fixed batch
        rho = run["score_iou_spearman"]
        assert rho is None or -1.0 <= rho <= 1.0, run  # None: fewer than two predictions on an object
        assert run["pr_start"] >= 1.0 and run["pr_end"] >= 1.0, run
        assert run["run_facts"]["autocast"] == "fp32" and run["run_facts"]["torch_threads"] == 1, run
        run_dir = out / f"{run['loss']}-s{run['seed']}"
        assert Path(run["dir"]) == run_dir.resolve() and (run_dir / "metrics.json").is_file()
        assert (run_dir / "weights" / "best.pt").is_file(), (
            "the framework must train into OUT/<variant>-s<seed>"
        )
    delta = result["summary"]["qfl"]["delta_vs_baseline"]
    assert set(delta) == set(FRAMEWORK_METRICS.keys) and delta["mAP50"]["n"] == 2
    md = (out / "compare.md").read_text()
    assert (
        "| mAP50 | mAP50-95 | P | R | score-IoU ρ | PR start | PR end |" in md and "− bce | n | mAP50 |" in md
    )
    assert result["config"]["run_facts"]["autocast"] == ["fp32"] and result["start"] == {"from": "scratch"}
    assert (out / "compare.png").stat().st_size > 1000
    assert not torch.are_deterministic_algorithms_enabled(), "the frameworks' init_seeds switch must not leak"
    return result, seconds


def test_tiny_yolov5_compare_end_to_end(tmp_path, network_guard, qfl_calls):
    result, seconds = _tiny("yolov5", tmp_path)
    assert result["term"] == "obj_loss" and qfl_calls, "QFL must have been trained"
    assert network_guard == [], network_guard
    print(f"tiny YOLOv5 compare: {seconds:.0f} s")


def test_tiny_ultralytics_compare_end_to_end(tmp_path, network_guard, qfl_calls):
    result, seconds = _tiny("ultralytics", tmp_path)
    assert result["term"] == "cls_loss" and qfl_calls, "QFL must have been trained"
    assert network_guard == [], network_guard
    print(f"tiny Ultralytics compare: {seconds:.0f} s")
