"""qfocal.integrations.ultralytics against the installed ``ultralytics`` package: DetectionLoss equals
v8DetectionLoss with bce, each classification loss is normalised like BCE and leaves box/DFL alone, the trainer
builds it, and an offline end-to-end run of Ultralytics' trainer uses qfocal's QFL."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss

import qfocal.functional as QF
from qfocal.integrations import OfflineError, offline
from qfocal.integrations import ultralytics as qu
from qfocal_lab.data import write_toy_dataset
from tests.conftest import assert_close, doc_python_blocks


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> DetectionModel:
    torch.manual_seed(0)
    m = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    m.args = get_cfg()
    m.train()
    return m


@pytest.fixture(scope="module")
def batch() -> dict:
    return {
        "img": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
        "batch_idx": torch.tensor([0.0, 0, 0, 1, 1]),
        "cls": torch.tensor([[1.0], [0], [2], [2], [0]]),
        "bboxes": torch.tensor(
            [
                [0.50, 0.50, 0.30, 0.40],
                [0.20, 0.30, 0.10, 0.20],
                [0.80, 0.20, 0.35, 0.30],
                [0.70, 0.60, 0.50, 0.30],
                [0.10, 0.85, 0.15, 0.20],
            ]
        ),
    }


@pytest.fixture(scope="module")
def preds(model, batch):
    with torch.no_grad():
        out = model(batch["img"])
    return out


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _run(criterion, model, batch):
    """Loss, items and the gradient with respect to every trainable parameter, through the real head."""
    loss, items = criterion(model(batch["img"]), batch)
    grads = torch.autograd.grad(loss.sum(), _params(model), allow_unused=True)
    return loss.detach(), items, grads


# ----------------------------------------------------------------------------------------------------------
# DetectionLoss
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("class_weights", [False, True], ids=["plain", "class_weights"])
def test_bce_default_equals_ultralytics(model, batch, class_weights, monkeypatch):
    if class_weights:  # Ultralytics' cls_pw feature: a per-class weight the criterion reads from the model
        monkeypatch.setattr(model, "class_weights", torch.tensor([0.5, 1.0, 1.5]), raising=False)
    ref_loss, ref_items, ref_grads = _run(v8DetectionLoss(model), model, batch)
    criterion = qu.DetectionLoss(model)
    loss, items, grads = _run(criterion, model, batch)
    assert criterion.cls_loss == "bce" and type(criterion.bce) is torch.nn.BCEWithLogitsLoss
    assert ref_loss[1] > 0
    assert torch.equal(loss, ref_loss), f"loss {loss} != Ultralytics' {ref_loss}"
    assert items.keys() == ref_items.keys() and all(torch.equal(items[k], ref_items[k]) for k in items)
    checked = 0
    for g, ref_g in zip(grads, ref_grads, strict=True):
        if ref_g is not None:
            assert torch.equal(g, ref_g)
            checked += 1
    assert checked > 100


CLS_OPTIONS = {
    "qfocal": ("qfocal", {}),
    "qfocal(beta=1,alpha=0.25)": ("qfocal", {"beta": 1.0, "alpha": 0.25}),
    "varifocal": ("varifocal", {}),
    "varifocal(not iou_weighted)": ("varifocal", {"iou_weighted": False, "gamma": 1.0}),
    "focal": ("focal", {}),
    "focal(gamma=0.5)": ("focal", {"gamma": 0.5}),
}


@pytest.mark.parametrize("cls_loss, kwargs", CLS_OPTIONS.values(), ids=CLS_OPTIONS.keys())
def test_options_change_only_the_classification_term(model, batch, cls_loss, kwargs):
    ref_loss, _, _ = _run(v8DetectionLoss(model), model, batch)
    loss, items, grads = _run(qu.DetectionLoss(model, cls_loss, **kwargs), model, batch)
    assert torch.isfinite(loss).all() and all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0
    assert loss[1] > 0 and not torch.allclose(loss[1], ref_loss[1]), "the classification term did not change"
    assert torch.equal(loss[0], ref_loss[0]) and torch.equal(loss[2], ref_loss[2]), (
        "box and DFL must not change"
    )
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss"]


@pytest.mark.parametrize("cls_loss", ["qfocal", "varifocal", "focal"])
def test_classification_term_is_normalised_like_ultralytics_bce(model, preds, batch, cls_loss):
    """cls item = sum(criterion(pred_scores, target_scores)) / max(sum(target_scores), 1) * hyp.cls (unbalanced:
    cls_gain 1; the balance is tested in test_balance.py)."""
    criterion = qu.DetectionLoss(model, cls_loss, cls_gain=1.0)
    seen = []
    original = criterion.bce.forward
    criterion.bce.forward = lambda pred, target: seen.append((pred, target)) or original(pred, target)
    loss, _ = criterion(preds, batch)
    (pred, target), bs = seen[0], batch["img"].shape[0]
    assert bool((target > 0).any()) and bool((target < 1).all()), "Ultralytics' targets are soft scores"
    functions = {
        "qfocal": functools.partial(QF.quality_focal_loss, beta=2.0, alpha=None),
        "varifocal": functools.partial(QF.varifocal_loss, alpha=0.75, gamma=2.0),
        "focal": functools.partial(QF.sigmoid_focal_loss, alpha=0.25, gamma=1.5),
    }
    expected = functions[cls_loss](pred, target, reduction="sum") / target.sum().clamp(min=1) * model.args.cls
    assert_close(loss[1] / bs, expected, f"{cls_loss} classification term")


def test_qfocal_is_qfocal_quality_focal_loss(model, preds, batch, qfl_calls):
    criterion = qu.DetectionLoss(model, "qfocal", beta=1.5)
    before = len(qfl_calls)  # construction tries the options once on a (1, 1) input
    criterion(preds, batch)
    # the loss, and its gradient norm for the balance (cls_gain "auto")
    assert qfl_calls[before:] == [tuple(preds["scores"].permute(0, 2, 1).shape)] * 2
    assert criterion.bce.loss.beta == 1.5 and criterion.bce.loss.alpha is None
    assert "'qfl'" in repr(criterion) and "beta=1.5" in repr(criterion)


@pytest.mark.parametrize(
    "cls_loss, kwargs, error, match",
    [
        ("qf", {}, ValueError, r"bce, focal, qfl \(= qfocal\), vfl \(= varifocal\), got 'qf'"),
        (None, {}, ValueError, "cls_loss"),
        ("qfocal", {"gamma": 2.0}, TypeError, r"\['alpha', 'beta'\]"),
        ("bce", {"beta": 2.0}, TypeError, "none"),
        ("qfocal", {"beta": -1.0}, ValueError, "beta"),
        ("varifocal", {"alpha": None}, ValueError, "alpha"),
    ],
)
def test_invalid_options_are_errors(model, cls_loss, kwargs, error, match):
    with pytest.raises(error, match=match):
        qu.DetectionLoss(model, cls_loss, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Model, trainer, offline
# ----------------------------------------------------------------------------------------------------------
def test_model_init_criterion_builds_detection_loss():
    m = qu.QFocalDetectionModel(
        "yolov8n.yaml", nc=2, verbose=False, cls_loss="varifocal", loss_kwargs={"gamma": 1}
    )
    m.args = get_cfg()
    criterion = m.init_criterion()
    assert isinstance(criterion, qu.DetectionLoss) and criterion.cls_loss == "vfl"
    assert criterion.cls_options == {"alpha": 0.75, "gamma": 1, "iou_weighted": True}
    with pytest.raises(ValueError, match="cls_loss"):
        qu.QFocalDetectionModel("yolov8n.yaml", nc=2, verbose=False, cls_loss="quality")


@pytest.mark.slow
def test_end_to_end_head_gets_e2e_loss_of_detection_losses():
    m = qu.QFocalDetectionModel("yolo26n.yaml", nc=2, verbose=False, cls_loss="qfocal")
    m.args = get_cfg()
    criterion = m.init_criterion()
    assert isinstance(criterion, E2ELoss)
    assert isinstance(criterion.one2many, qu.DetectionLoss) and isinstance(
        criterion.one2one, qu.DetectionLoss
    )
    assert criterion.one2one.cls_loss == "qfl" and criterion.one2one.assigner.topk == 7


def test_offline_is_reversible_and_refuses_downloads(network_guard, tmp_path):
    import ultralytics.utils as U
    import ultralytics.utils.checks as C
    import ultralytics.utils.downloads as D

    check_font, online, attempt = C.check_font, C.ONLINE, D.attempt_download_asset
    with offline(yolov5_package=None):
        assert C.ONLINE is False and U.ONLINE is False and C.AUTOINSTALL is False
        assert C.check_font("NoSuchFont.ttf") is None
        with pytest.raises(OfflineError, match="not found locally"):
            D.attempt_download_asset(str(tmp_path / "yolo26n.pt"))
        assert D.is_url("https://ultralytics.com", check=True) is False
    assert C.check_font is check_font and online == C.ONLINE and D.attempt_download_asset is attempt
    assert network_guard == []


def test_train_end_to_end_offline_with_qfl(tmp_path, network_guard, qfl_calls):
    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    trainer = qu.train(
        "yolov8n.yaml",
        data=data,
        cls_loss="qfocal",
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        project=str(tmp_path / "runs"),
        name="qfl",
        plots=False,
        verbose=False,
    )
    assert isinstance(trainer.model, qu.QFocalDetectionModel)
    assert isinstance(trainer.model.criterion, qu.DetectionLoss) and trainer.model.criterion.cls_loss == "qfl"
    assert len(qfl_calls) >= 2, qfl_calls  # two training batches (and the validation loss)
    ckpt = torch.load(trainer.best, map_location="cpu", weights_only=False)
    assert type(ckpt["model"]) is DetectionModel, "checkpoints must load without qfocal"
    assert network_guard == [], network_guard
    assert not torch.are_deterministic_algorithms_enabled(), "Ultralytics' init_seeds switch must not leak"


def test_trainer_takes_cls_loss_from_overrides(tmp_path):
    data = write_toy_dataset(tmp_path / "toy", n_train=1, n_val=1, imgsz=32)
    overrides = {
        "model": "yolov8n.yaml",
        "data": str(data),
        "cls_loss": "focal",
        "loss_kwargs": {"gamma": 2.0},
    }
    overrides |= {"project": str(tmp_path / "runs"), "device": "cpu"}
    with offline(yolov5_package=None):
        trainer = qu.QFocalDetectionTrainer(overrides=overrides)
    assert trainer.cls_loss == "focal" and trainer.loss_kwargs == {"gamma": 2.0}
    assert not hasattr(trainer.args, "cls_loss")
    with pytest.raises(ValueError, match="cls_loss"), offline(yolov5_package=None):
        qu.QFocalDetectionTrainer(overrides={**overrides, "cls_loss": "gfl"})
    trainer.ddp = True  # what device="0,1" sets: Ultralytics' DDP workers would silently drop cls_loss
    with pytest.raises(NotImplementedError, match="DDP"):
        trainer.train()


@pytest.mark.slow
def test_command_and_yolo_api_end_to_end(tmp_path, network_guard, qfl_calls):
    from ultralytics import YOLO

    from qfocal.cli import main

    data = write_toy_dataset(tmp_path / "toy", n_train=8, n_val=4, imgsz=64)
    common = {
        "epochs": 1,
        "imgsz": 64,
        "batch": 4,
        "workers": 0,
        "device": "cpu",
        "project": str(tmp_path / "runs"),
    }
    argv = ["ultralytics-train", "yolov8n.yaml", f"data={data}", *(f"{k}={v}" for k, v in common.items())]
    assert main([*argv, "name=cli", "--cls-loss", "qfocal"]) == 0  # with plots
    assert (tmp_path / "runs" / "cli" / "weights" / "best.pt").is_file() and qfl_calls
    n = len(qfl_calls)
    with offline(yolov5_package=None):  # Ultralytics' own API with the trainer class
        YOLO("yolov8n.yaml").train(
            trainer=functools.partial(qu.QFocalDetectionTrainer, cls_loss="qfocal"),
            data=str(data),
            name="api",
            plots=False,
            **common,
        )
    assert len(qfl_calls) > n and network_guard == []
    assert Path(tmp_path / "runs" / "api" / "weights" / "last.pt").is_file()


def test_docs_examples_run_offline(tmp_path, monkeypatch, network_guard, qfl_calls):
    blocks = doc_python_blocks("docs/frameworks/ultralytics.md")
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md Ultralytics example {i}", "exec"), {})
    assert (tmp_path / "runs" / "ultralytics" / "qfl" / "weights" / "best.pt").is_file()
    assert (tmp_path / "runs" / "ultralytics" / "api" / "weights" / "last.pt").is_file()
    assert qfl_calls and network_guard == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["cls_loss=qfl", "data={data}", "epochs=1"], ("yolov8n.yaml", "qfl", "auto", {}, {"epochs": 1})),
        (["model=yolov8n.yaml", "data={data}"], ("yolov8n.yaml", "bce", "auto", {}, {})),
        (["data={data}", "imgsz=64"], ("yolov8n.yaml", "bce", "auto", {}, {"imgsz": 64})),
        (
            ["yolov8s.yaml", "data={data}", "cls_loss=qfocal", "cls_gain=2", "loss_kwargs={{beta: 1.5}}"],
            ("yolov8s.yaml", "qfl", 2.0, {"beta": 1.5}, {}),
        ),
        (
            ["--cls-loss", "vfl", "cls_loss=varifocal", "--cls-gain", "1", "data={data}"],
            ("yolov8n.yaml", "vfl", 1.0, {}, {}),
        ),
    ],
)
def test_ultralytics_train_key_value_forms_mean_the_options(tmp_path, monkeypatch, argv, expected):
    import qfocal.integrations.ultralytics as qu
    from qfocal.cli import main

    data = write_toy_dataset(tmp_path / "toy", n_train=1, n_val=1, imgsz=32)
    seen = {}

    class Done:
        save_dir = tmp_path

    def fake(model, *, data, cls_loss, loss_kwargs, cls_gain, offline_mode, **overrides):
        seen.update(
            model=model, cls_loss=cls_loss, cls_gain=cls_gain, loss_kwargs=loss_kwargs, overrides=overrides
        )
        return Done()

    monkeypatch.setattr(qu, "train", fake)
    assert main(["ultralytics-train", *(a.format(data=data) for a in argv)]) == 0
    model, loss, gain, kwargs, overrides = expected
    assert seen["model"] == model and qu.loss_name(seen["cls_loss"], qu.ULTRALYTICS_LOSSES) == loss
    assert seen["cls_gain"] == gain and seen["loss_kwargs"] == kwargs and seen["overrides"] == overrides


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["model=nope.yaml", "data={data}"], "model: expected an Ultralytics model yaml"),
        (["model=missing.pt", "data={data}"], "is not on disk"),
        (["cls_loss=bogus", "data={data}"], "cls_loss: expected"),
        (["--cls-loss", "qfl", "cls_loss=vfl", "data={data}"], "disagree"),
        (["cls_gain=-1", "data={data}"], "cls_gain: expected 'auto' or a finite number"),
        (["loss_kwargs=3", "data={data}"], "loss_kwargs: expected a mapping"),
        (["yolov8n.yaml", "model=yolov8s.yaml", "data={data}"], "disagree"),
        (["epochs=1"], "expected data="),
        # Ultralytics' own validator, before anything is built
        (["data={data}", "epochs=-1"], "'epochs' must be >= 1"),
        (["data={data}", "lr0=2"], "Valid 'lr0' values are between 0.0 and 1.0"),
        (["data={data}", "batch=abc"], "'batch=abc' is of invalid type str"),
    ],
)
def test_ultralytics_train_bad_key_value_forms_are_one_line(tmp_path, monkeypatch, capsys, argv, match):
    import qfocal.integrations.ultralytics as qu
    from qfocal.cli import main

    data = write_toy_dataset(tmp_path / "toy", n_train=1, n_val=1, imgsz=32)
    monkeypatch.setattr(qu, "train", lambda *a, **k: pytest.fail("trained despite a bad argument"))
    with pytest.raises(SystemExit) as info:
        main(["ultralytics-train", *(a.format(data=data) for a in argv)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and match in err, err
