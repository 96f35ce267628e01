"""qfocal.integrations.yolov5 against the installed ``yolov5`` package: equality with YOLOv5's ComputeLoss with
default keys, every new option, the reversible train patch, and an offline end-to-end run of YOLOv5's trainer."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

pytest.importorskip("yolov5")

import qfocal
import qfocal.functional as QF
from qfocal.integrations import OfflineError, offline, offline_import
from qfocal.integrations import yolov5 as qy
from qfocal_lab.data import write_toy_dataset
from tests.conftest import assert_close, doc_python_blocks

with offline_import():
    import yolov5.train as yolov5_train
    import yolov5.utils.general as yolov5_general
    from yolov5.models.yolo import Model
    from yolov5.utils.loss import ComputeLoss as YOLOv5ComputeLoss

YOLOV5_ROOT = Path(yolov5_train.__file__).parent
STOCK_HYP = yaml.safe_load((YOLOV5_ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = Model(str(YOLOV5_ROOT / "models" / "yolov5n.yaml"), nc=3)
    m.train()
    return m


@pytest.fixture(scope="module")
def targets() -> torch.Tensor:
    # (image, class, x, y, w, h): several per image, two at the border (x = 1.0 needs YOLOv5's cell clamping),
    # one tiny, one large
    return torch.tensor(
        [
            [0, 1, 0.50, 0.50, 0.30, 0.40],
            [0, 0, 0.20, 0.30, 0.10, 0.20],
            [0, 2, 0.99, 0.01, 0.05, 0.05],
            [0, 1, 1.00, 0.00, 0.10, 0.12],
            [1, 2, 0.70, 0.60, 0.50, 0.30],
            [1, 0, 0.05, 0.90, 0.10, 0.15],
            [1, 1, 0.40, 0.45, 0.90, 0.85],
        ]
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _preds(model: nn.Module, images: torch.Tensor, hyp: dict) -> list[torch.Tensor]:
    model.hyp = hyp
    with torch.no_grad():
        out = model(images)
    return [p.clone().requires_grad_(True) for p in out]


def _loss_and_grads(criterion, preds, targets):
    loss, items = criterion(preds, targets)
    grads = torch.autograd.grad(loss.sum(), preds)
    return loss.detach(), items, grads


# ----------------------------------------------------------------------------------------------------------
# Equality with YOLOv5's ComputeLoss when no new key is given
# ----------------------------------------------------------------------------------------------------------
DEFAULT_CASES = {
    "stock": {},
    "fl_gamma=1.5": {"fl_gamma": 1.5},
    "label_smoothing=0.1": {"label_smoothing": 0.1},
    "fl_gamma=1.5+label_smoothing": {"fl_gamma": 1.5, "label_smoothing": 0.1},
    "cls_pw=obj_pw=2": {"cls_pw": 2.0, "obj_pw": 2.0, "fl_gamma": 2.0},
}


@pytest.mark.parametrize("extra", DEFAULT_CASES.values(), ids=DEFAULT_CASES.keys())
def test_defaults_equal_yolov5(model, images, targets, extra):
    hyp = {**STOCK_HYP, **extra}
    preds = _preds(model, images, hyp)
    ref_loss, ref_items, ref_grads = _loss_and_grads(YOLOv5ComputeLoss(model), preds, targets)
    ours = qy.ComputeLoss(model)
    loss, items, grads = _loss_and_grads(ours, preds, targets)
    assert ref_loss.item() > 0
    assert_close(loss, ref_loss, "loss")
    assert_close(items, ref_items, "loss items (box, obj, cls)")
    for level, (g, ref_g) in enumerate(zip(grads, ref_grads, strict=True)):
        assert ref_g.abs().sum() > 0
        assert_close(g, ref_g, f"gradient of level {level}")
    if "fl_gamma" not in extra:  # plain BCE on both terms: the very same operations, bit for bit
        assert torch.equal(loss, ref_loss)
        assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))
        assert type(ours.BCEobj) is nn.BCEWithLogitsLoss and type(ours.BCEcls) is nn.BCEWithLogitsLoss
    else:
        assert isinstance(ours.BCEobj, qfocal.FocalLoss) and isinstance(ours.BCEcls, qfocal.FocalLoss)
        assert ours.BCEobj.gamma == extra["fl_gamma"] and ours.BCEobj.alpha == 0.25


def test_autobalance_and_repeated_calls_equal_yolov5(model, images, targets):
    preds = _preds(model, images, dict(STOCK_HYP))
    ref, ours = YOLOv5ComputeLoss(model, autobalance=True), qy.ComputeLoss(model, autobalance=True)
    for _ in range(2):  # the balance state evolves identically
        ref_loss, ref_items, _ = _loss_and_grads(ref, preds, targets)
        loss, items, _ = _loss_and_grads(ours, preds, targets)
        assert_close(loss, ref_loss, "loss")
        assert_close(items, ref_items, "loss items")
    assert ours.balance == pytest.approx(ref.balance, rel=1e-6)
    assert ours.balance != [4.0, 1.0, 0.4]


@pytest.mark.parametrize("n_targets", [0, 1, 7])
def test_build_targets_equal_yolov5(model, images, targets, n_targets):
    preds = _preds(model, images, dict(STOCK_HYP))
    ref = YOLOv5ComputeLoss(model).build_targets(preds, targets[:n_targets])
    ours = qy.ComputeLoss(model).build_targets(preds, targets[:n_targets])
    for name, a, b in zip(("tcls", "tbox", "indices", "anchors"), ours, ref, strict=True):
        for level, (x, y) in enumerate(zip(a, b, strict=True)):
            for u, v in zip(
                x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,), strict=True
            ):
                assert torch.equal(u, v), f"{name}[{level}] differs from YOLOv5's"
    if n_targets == 0:
        loss, items, _ = _loss_and_grads(qy.ComputeLoss(model), preds, targets[:0])
        ref_loss, _, _ = _loss_and_grads(YOLOv5ComputeLoss(model), preds, targets[:0])
        assert torch.equal(loss, ref_loss) and items[0] == 0 and items[2] == 0


def test_duck_typed_model_needs_no_yolov5_classes(model, images, targets):
    """A model that only *looks* like YOLOv5's (hyp + model[-1] with na, nc, nl, anchors, stride)."""
    detect = model.model[-1]

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.na, self.nc, self.nl, self.stride = detect.na, detect.nc, detect.nl, detect.stride
            self.register_buffer("anchors", detect.anchors.clone())
            self.conv = nn.Conv2d(1, 1, 1)

    class Lookalike(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(Head())
            self.hyp = {**STOCK_HYP, "obj_loss": "qfocal"}

    preds = _preds(model, images, {**STOCK_HYP, "obj_loss": "qfocal"})
    expected, _, _ = _loss_and_grads(qy.ComputeLoss(model), preds, targets)
    loss, _, _ = _loss_and_grads(qy.ComputeLoss(Lookalike()), preds, targets)
    assert_close(loss, expected, "loss of a duck-typed model")
    with pytest.raises(TypeError, match="Detect layer"):
        qy.ComputeLoss(
            types.SimpleNamespace(parameters=lambda: iter([torch.zeros(1)]), hyp=STOCK_HYP, model=[1])
        )
    with pytest.raises(TypeError, match=r"model\.hyp"):
        qy.ComputeLoss(nn.Sequential(nn.Linear(1, 1)))


# ----------------------------------------------------------------------------------------------------------
# The new hyp keys
# ----------------------------------------------------------------------------------------------------------
NEW_OPTIONS = {
    "obj=qfocal": {"obj_loss": "qfocal"},
    "cls=qfocal+smoothing": {"cls_loss": "qfocal", "label_smoothing": 0.1},
    "obj=varifocal": {"obj_loss": "varifocal"},
    "cls=varifocal": {"cls_loss": "varifocal"},
    "obj=focal,gamma=0.5": {"obj_loss": "focal", "fl_gamma": 0.5},  # yolov5 #673: gamma < 1 must stay finite
    "both=qfocal,paper": {"obj_loss": "qfocal", "cls_loss": "qfocal", "qfl_beta": 2.0, "fl_alpha": None},
    "obj=qfocal,gamma=0.5": {"obj_loss": "qfocal", "fl_gamma": 0.5},
    "cls=focal": {"cls_loss": "focal"},
}


@pytest.mark.parametrize("extra", NEW_OPTIONS.values(), ids=NEW_OPTIONS.keys())
def test_new_options_finite_backprop_and_change_the_loss(model, images, targets, extra):
    base_hyp = {**STOCK_HYP, "label_smoothing": extra.get("label_smoothing", 0.0)}
    preds = _preds(model, images, base_hyp)
    base_loss, base_items, _ = _loss_and_grads(qy.ComputeLoss(model), preds, targets)
    preds = _preds(model, images, {**STOCK_HYP, **extra})
    criterion = qy.ComputeLoss(model)
    loss, items, grads = _loss_and_grads(criterion, preds, targets)
    assert torch.isfinite(loss).all() and torch.isfinite(items).all()
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert not torch.allclose(loss, base_loss), "the option did not change the loss"
    assert torch.equal(items[0], base_items[0]), "the box term must not change"
    legacy = "fl_gamma" in extra  # a term not named follows YOLOv5's rule: focal when fl_gamma > 0
    if "obj_loss" in extra and "cls_loss" not in extra and not legacy:
        assert torch.equal(items[2], base_items[2]), "obj_loss must leave the classification term alone"
        assert not torch.equal(items[1], base_items[1])
    if "cls_loss" in extra and "obj_loss" not in extra and not legacy:
        assert torch.equal(items[1], base_items[1]), "cls_loss must leave the objectness term alone"
        assert not torch.equal(items[2], base_items[2])


def test_obj_qfocal_is_qfocal_quality_focal_loss(model, images, targets, qfl_calls):
    preds = _preds(model, images, {**STOCK_HYP, "obj_loss": "qfocal", "fl_gamma": 1.5})
    criterion = qy.ComputeLoss(model)
    assert isinstance(criterion.BCEobj, qfocal.QFocalLoss) and criterion.BCEobj.gamma == 1.5
    assert criterion.BCEobj.alpha is None  # the paper's QFL: no alpha unless fl_alpha / qfl_alpha is given
    assert isinstance(criterion.BCEcls, qfocal.FocalLoss), (
        "cls follows YOLOv5's rule: focal when fl_gamma > 0"
    )
    criterion(preds, targets)
    # two objectness calls per level: the loss, and its gradient norm for the balance (obj_gain "auto")
    assert qfl_calls == [tuple(p.shape[:4]) for p in preds for _ in range(2)]


def test_objectness_term_equals_quality_focal_loss_on_iou_targets(model, images, targets):
    """The obj item is sum_i balance_i * mean QFL(obj logits_i, IoU targets_i) * hyp['obj']: rebuild it (unbalanced:
    obj_gain 1; the balance is tested in test_balance.py)."""
    hyp = {**STOCK_HYP, "obj_loss": "qfocal", "qfl_beta": 2.0, "fl_alpha": None, "obj_gain": 1.0}
    preds = _preds(model, images, hyp)
    criterion = qy.ComputeLoss(model)
    seen = []
    original = criterion.BCEobj.forward
    criterion.BCEobj.forward = lambda pred, true: seen.append((pred, true)) or original(pred, true)
    _, items = criterion(preds, targets)
    assert any(bool((t > 0).any() and (t < 1).any()) for _, t in seen), "objectness targets are soft IoUs"
    expected = sum(
        b * QF.quality_focal_loss(p, t, beta=2.0, alpha=None)
        for b, (p, t) in zip(criterion.balance, seen, strict=True)
    )
    assert_close(items[1], (expected * hyp["obj"]).detach().reshape(()), "objectness item")


def test_key_semantics():
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0]))
    assert qy.build_criterion("bce", bce, {}) is bce
    assert qy.build_criterion("focal", bce, {"fl_gamma": 0.0}).gamma == 1.5  # 0 in stock hyps: default
    assert qy.build_criterion("qfocal", bce, {"fl_gamma": 0.0}).gamma == 2.0
    assert qy.build_criterion("qfocal", bce, {"fl_gamma": 1.5}).gamma == 1.5
    assert qy.build_criterion("qfocal", bce, {"fl_gamma": 1.5, "qfl_beta": 1.0}).gamma == 1.0
    assert qy.build_criterion("qfocal", bce, {"fl_alpha": None}).alpha is None
    assert qy.build_criterion("focal", bce, {"fl_alpha": 0.5}).alpha == 0.5
    vfl = qy.build_criterion("varifocal", bce, {"vfl_alpha": 0.5, "fl_gamma": 1.0})
    assert vfl.loss.alpha == 0.5 and vfl.loss.gamma == 1.0
    wrapped = qy.build_criterion("qfocal", bce, {})
    assert wrapped.loss_fcn is bce and bce.reduction == "mean", "the BCE is wrapped, never modified"


@pytest.mark.parametrize(
    "extra, error, match",
    [
        (
            {"obj_loss": "qf"},
            ValueError,
            r"obj_loss.*bce, focal, qfl \(= qfocal\), vfl \(= varifocal\), got 'qf'",
        ),
        ({"cls_loss": "Focal Loss"}, ValueError, "cls_loss"),
        ({"cls_loss": 1}, ValueError, "cls_loss"),
        ({"obj_loss": "qfocal", "fl_alpha": "0.25"}, TypeError, "fl_alpha"),
        ({"obj_loss": "qfocal", "fl_alpha": 1.5}, ValueError, "alpha"),
        ({"obj_loss": "qfocal", "qfl_beta": -1.0}, ValueError, "gamma|beta"),
        ({"obj_loss": "varifocal", "obj_pw": 2.0}, ValueError, "pos_weight"),
    ],
)
def test_invalid_keys_are_errors(model, extra, error, match):
    model.hyp = {**STOCK_HYP, **extra}
    with pytest.raises(error, match=match):
        qy.ComputeLoss(model)


# ----------------------------------------------------------------------------------------------------------
# Training through YOLOv5's train.py
# ----------------------------------------------------------------------------------------------------------
def test_patch_train_is_reversible():
    original = yolov5_train.ComputeLoss
    check_font = yolov5_general.check_font
    with qy.patch_train() as module:
        assert module is yolov5_train
        assert yolov5_train.ComputeLoss is qy.ComputeLoss
        assert yolov5_general.check_font is not check_font  # offline
    assert yolov5_train.ComputeLoss is original and yolov5_general.check_font is check_font
    with pytest.raises(RuntimeError), qy.patch_train():
        raise RuntimeError("training failed")
    assert yolov5_train.ComputeLoss is original and yolov5_general.check_font is check_font
    assert torch.nn.functional.binary_cross_entropy_with_logits.__module__ == "torch.nn.functional"


def test_offline_refuses_weight_downloads(network_guard, tmp_path):
    import yolov5.utils.downloads as downloads

    with offline():
        with pytest.raises(OfflineError, match="not found locally"):
            downloads.attempt_download(str(tmp_path / "yolov5s.pt"))
        assert yolov5_general.check_online() is False
        assert yolov5_train.attempt_download_from_hub("yolov5s") is None
    assert network_guard == []


def test_train_end_to_end_offline_with_qfl(tmp_path, network_guard, qfl_calls):
    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    opt = qy.train(
        data=data,
        cfg="yolov5n.yaml",
        hyp={"obj_loss": "qfocal", "cls_loss": "qfocal"},
        epochs=1,
        imgsz=64,
        batch_size=4,
        workers=0,
        device="cpu",
        project=str(tmp_path / "runs"),
        name="qfl",
        noplots=True,
    )
    save_dir = Path(opt.save_dir)
    assert (save_dir / "weights" / "last.pt").is_file()
    recorded = yaml.safe_load((save_dir / "hyp.yaml").read_text())  # the effective values, canonical names
    assert recorded["obj_loss"] == "qfl" and recorded["obj_gain"] == "auto" and recorded["qfl_alpha"] is None
    # 2 training batches and 1 validation batch, 3 levels each, objectness and classification
    assert len(qfl_calls) >= 2 * 2 * 3, qfl_calls
    assert network_guard == [], network_guard
    assert yolov5_train.ComputeLoss is YOLOv5ComputeLoss
    assert not torch.are_deterministic_algorithms_enabled(), "YOLOv5's init_seeds switch must not leak"


def _fake_train_module(tmp_path: Path) -> types.ModuleType:
    """A stand-in for train.py that records what the command passes to YOLOv5's parse_opt and main."""
    module = types.ModuleType("fake_yolov5.train")
    module.__file__ = str(YOLOV5_ROOT / "train.py")
    module.ComputeLoss = YOLOv5ComputeLoss
    module.seen = {}

    def parse_opt(known=False):
        parser = argparse.ArgumentParser()
        parser.add_argument("--weights", default="yolov5s.pt")
        parser.add_argument("--hyp", default=str(YOLOV5_ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
        parser.add_argument("--img", type=int, default=640)
        parser.add_argument("--data")
        module.seen["argv"] = list(sys.argv)
        return parser.parse_args()

    def main(opt):
        module.seen["opt"] = opt
        module.seen["hyp"] = yaml.safe_load(Path(opt.hyp).read_text())
        module.seen["ComputeLoss"] = module.ComputeLoss

    module.parse_opt, module.main = parse_opt, main
    return module


def test_command_passes_yolov5_arguments_through(tmp_path):
    from qfocal.cli import parse_args

    fake = _fake_train_module(tmp_path)
    args = parse_args(
        ["yolov5-train", "--obj-loss", "qfocal", "--data", "d.yaml", "--fl-alpha", "none", "--img", "64"]
    )
    assert args.pass_through
    assert args.framework_args == ["--data", "d.yaml", "--img", "64"]
    assert qy.run_command(args, args.framework_args, train_module=fake) == 0
    opt, hyp = fake.seen["opt"], fake.seen["hyp"]
    assert opt.weights == "" and opt.img == 64 and opt.data == "d.yaml"
    assert hyp["obj_loss"] == "qfl" and hyp["fl_alpha"] is None and hyp["qfl_alpha"] is None
    # the effective values are filled in
    assert hyp["cls_loss"] == "bce" and hyp["obj_gain"] == hyp["cls_gain"] == "auto"
    assert hyp["lr0"] == STOCK_HYP["lr0"]
    assert fake.seen["ComputeLoss"] is qy.ComputeLoss and fake.ComputeLoss is YOLOv5ComputeLoss
    assert sys.argv[0] != "fake_yolov5.train.py"
    with pytest.raises(SystemExit):
        parse_args(["yolov5-train", "--obj-loss", "qf"])


@pytest.mark.slow
def test_command_end_to_end(tmp_path, network_guard, qfl_calls):
    from qfocal.cli import main

    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    argv = [
        "yolov5-train",
        "--obj-loss",
        "qfocal",
        "--qfl-beta",
        "2",
        "--fl-alpha",
        "none",
        "--data",
        str(data),
    ]
    argv += ["--cfg", "yolov5n.yaml", "--img", "64", "--epochs", "1", "--batch-size", "4", "--workers", "0"]
    argv += ["--device", "cpu", "--project", str(tmp_path / "runs"), "--name", "cli"]  # with plots
    assert main(argv) == 0
    assert (tmp_path / "runs" / "cli" / "weights" / "best.pt").is_file()
    assert qfl_calls and network_guard == []


def test_docs_examples_run_offline(tmp_path, monkeypatch, network_guard, qfl_calls):
    blocks = doc_python_blocks("docs/frameworks/yolov5.md")
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["docs-example"])  # train.run parses sys.argv, not pytest's arguments
    for i, block in enumerate(blocks):
        namespace: dict = {}
        exec(compile(block, f"README.md YOLOv5 example {i}", "exec"), namespace)
        if "loss" in namespace:
            assert (
                torch.isfinite(namespace["loss"]).all()
                and namespace["model"].model[-1].m[0].weight.grad is not None
            )
    assert (tmp_path / "runs" / "yolov5" / "qfl" / "weights" / "last.pt").is_file()
    assert (tmp_path / "runs" / "yolov5" / "patched" / "weights" / "last.pt").is_file()
    assert yolov5_train.ComputeLoss is YOLOv5ComputeLoss
    assert qfl_calls and network_guard == []


_REPO_SCRIPT = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access in a test")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
sys.path.insert(0, ".")
import yaml
import qfocal.modules
from qfocal.integrations import offline_import
from qfocal.integrations.yolov5 import patch_train
calls = []
original = qfocal.modules.QFocalLoss.loss_fn
qfocal.modules.QFocalLoss.loss_fn = staticmethod(lambda *a, **k: calls.append(1) or original(*a, **k))
with offline_import():
    import train  # the repository layout: top-level train, utils, models
assert not [m for m in sys.modules if m.startswith("yolov5")], "the pip package was imported"
stock = yaml.safe_load(open("data/hyps/hyp.scratch-low.yaml"))
open("hyp.qfl.yaml", "w").write(yaml.safe_dump({**stock, "obj_loss": "qfocal"}))
sys.argv = sys.argv[:1]
with patch_train(train) as t:
    import utils.general
    assert utils.general.check_font.__module__ == "qfocal.integrations._offline"
    t.run(data=DATA, cfg="yolov5n.yaml", weights="", hyp="hyp.qfl.yaml", imgsz=64, epochs=1,
          batch_size=4, workers=0, device="cpu", project=PROJECT, name="repo", noplots=True)
assert train.ComputeLoss.__module__ == "utils.loss"
assert utils.general.check_font.__module__ == "utils.general"
print("calls", len(calls), "attempts", len(attempts))
"""


@pytest.mark.slow
def test_repository_layout(tmp_path):
    """A checkout of ultralytics/yolov5 (top-level train, utils, models), rebuilt from the pip package by undoing
    its `yolov5.` import prefix, trains through patch_train(train) in a fresh process, offline, with QFL."""
    import re
    import shutil

    repo = tmp_path / "yolov5-repo"
    shutil.copytree(YOLOV5_ROOT, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for path in repo.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"^(\s*)from yolov5 import __version__ as (\w+)", r'\1\2 = "repo"', text, flags=re.M)
        text = re.sub(r"^(\s*)from yolov5 import __version__", r'\1__version__ = "repo"', text, flags=re.M)
        text = re.sub(r"^(\s*)from yolov5\.", r"\1from ", text, flags=re.M)
        text = re.sub(r"^(\s*)import yolov5\.([\w.]+) as", r"\1import \2 as", text, flags=re.M)
        path.write_text(text)
    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    script = f"DATA = {str(data)!r}\nPROJECT = {str(tmp_path / 'runs')!r}\n" + _REPO_SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    calls, attempts = re.search(r"calls (\d+) attempts (\d+)", result.stdout).groups()
    assert int(calls) > 0 and int(attempts) == 0, result.stdout[-2000:]
    assert (tmp_path / "runs" / "repo" / "weights" / "last.pt").is_file()
