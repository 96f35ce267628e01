"""One vocabulary: every loss name and alias, in any case, works in every entry point, and an unknown name is an
error that lists the valid ones."""

from __future__ import annotations

import pytest
import torch

import qfocal
from qfocal._names import LOSS_ALIASES, loss_name
from qfocal.cli import parse_args

SPELLINGS = {
    canonical: [canonical, canonical.upper(), *aliases, *(a.upper() for a in aliases)]
    for canonical, aliases in LOSS_ALIASES.items()
}


def _cases(*canonicals: str) -> list[tuple[str, str]]:
    return [(spelling, c) for c in canonicals for spelling in SPELLINGS[c]]


@pytest.mark.parametrize("spelling, canonical", _cases("qfl", "vfl", "focal", "dfl"))
def test_functions_and_modules(spelling, canonical):
    functions = {
        "qfl": qfocal.quality_focal_loss,
        "vfl": qfocal.varifocal_loss,
        "focal": qfocal.sigmoid_focal_loss,
        "dfl": qfocal.distribution_focal_loss,
    }
    assert qfocal.loss_function(spelling) is functions[canonical]
    modules = {
        "qfl": qfocal.QualityFocalLoss,
        "vfl": qfocal.VarifocalLoss,
        "focal": qfocal.SigmoidFocalLoss,
        "dfl": qfocal.DistributionFocalLoss,
    }
    assert type(qfocal.build_loss(spelling)) is modules[canonical]


@pytest.mark.parametrize("spelling, canonical", _cases("qfl", "vfl", "focal", "gfl"))
def test_harness_train_and_compare(spelling, canonical):
    from qfocal_lab.detection import TrainConfig

    assert TrainConfig(loss=spelling).validate().loss == canonical
    assert parse_args(["train", "--loss", spelling]).loss == canonical
    from qfocal._cli import loss_list_arg
    from qfocal_lab.detection.config import HARNESS_LOSSES

    given = parse_args(
        ["compare", "--losses", f"focal,{spelling}" if canonical != "focal" else spelling]
    ).losses
    assert loss_list_arg(HARNESS_LOSSES)(",".join(given))[-1] == canonical  # what `qfocal compare` runs


@pytest.mark.parametrize("spelling, canonical", _cases("bce", "qfl", "vfl", "focal"))
def test_yolov5_hyp_keys_and_command(spelling, canonical):
    from qfocal.integrations import yolov5 as qy

    expected = {"bce": torch.nn.BCEWithLogitsLoss, "qfl": qfocal.QFocalLoss, "focal": qfocal.FocalLoss}
    criterion = qy.build_criterion(spelling, torch.nn.BCEWithLogitsLoss(), {})
    if canonical in expected:
        assert type(criterion) is expected[canonical]
    else:
        assert isinstance(criterion.loss, qfocal.VarifocalLoss)
    args = parse_args(["yolov5-train", "--obj-loss", spelling, "--cls-loss", spelling])
    assert args.obj_loss == args.cls_loss == canonical


@pytest.mark.parametrize("spelling, canonical", _cases("bce", "qfl", "vfl", "focal"))
def test_ultralytics_cls_loss_and_command(spelling, canonical):
    from qfocal.integrations import ultralytics as qu

    assert qu._check_cls_loss(spelling, {})[0] == canonical
    assert parse_args(["ultralytics-train", "--cls-loss", spelling, "data=x.yaml"]).cls_loss == canonical


@pytest.mark.parametrize("name", ["AUTO", "Reference", "eager", " Inductor "])
def test_backend_names_any_case(name):
    previous = qfocal.set_backend(name)
    try:
        assert qfocal.get_backend() == name.strip().lower()
    finally:
        qfocal.set_backend(previous)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"loss: expected one of bce, qfl \(= qfocal\), got 'quality'"):
        loss_name("quality", ("bce", "qfl"))
    with pytest.raises(ValueError, match="expected one of"):
        loss_name(None)
    with pytest.raises(ValueError, match=r"dfl, got 'gfl'"):
        qfocal.build_loss("gfl")  # a harness head, not a loss module
    with pytest.raises(ValueError, match=r"backend: expected one of \('auto'"):
        qfocal.set_backend("turbo")


# Each entry point of the loss table, probed through its own code path: returns the canonical name it resolved
# (and checks what it built), or raises ValueError for a name it does not take.
def _functional(spelling: str) -> str:
    function = qfocal.loss_function(spelling)
    module = qfocal.build_loss(spelling)
    entry = next(e for e in qfocal.LOSS_TABLE if getattr(qfocal, e.function or "-", None) is function)
    assert type(module).__name__ == entry.module
    defaults = {k: getattr(module, k) for k in entry.defaults}
    assert defaults == dict(entry.defaults), (entry.name, defaults)
    return entry.name


def _yolov5(spelling: str) -> str:
    from qfocal.integrations import yolov5 as qy

    qy.check_loss_keys({"cls_loss": spelling, "obj_loss": "bce"})
    canonical = parse_args(["yolov5-train", "--cls-loss", spelling]).cls_loss
    options = qy.criterion_options(spelling, {})
    defaults = qfocal.loss_entry(canonical).defaults_at("yolov5")
    assert sorted(options.values(), key=str) == sorted(
        (v for k, v in defaults.items() if k != "iou_weighted"), key=str
    ), (canonical, options, defaults)
    return canonical


def _ultralytics(spelling: str) -> str:
    from qfocal.integrations import ultralytics as qu

    canonical, options = qu._check_cls_loss(spelling, {})
    assert options == qfocal.loss_entry(canonical).defaults_at("ultralytics")
    assert parse_args(["ultralytics-train", "--cls-loss", spelling, "data=x.yaml"]).cls_loss == canonical
    return canonical


def _fcos(spelling: str) -> str:
    from qfocal.integrations.torchvision import check_loss
    from qfocal_lab.detection import TrainConfig

    canonical = check_loss(spelling)
    assert TrainConfig(loss=spelling).validate().loss == canonical
    assert parse_args(["train", "--loss", spelling]).loss == canonical
    return canonical


ENTRY_POINT_PROBES = {
    "functional": _functional,
    "yolov5": _yolov5,
    "ultralytics": _ultralytics,
    "fcos": _fcos,
}


def test_every_entry_point_of_the_table_is_probed():
    assert set(ENTRY_POINT_PROBES) == set(qfocal._names.ENTRY_POINTS)


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINT_PROBES))
@pytest.mark.parametrize("spelling, canonical", [c for e in qfocal.LOSS_TABLE for c in _cases(e.name)])
def test_each_entry_point_takes_exactly_the_names_the_table_gives_it(
    entry_point, spelling, canonical, capsys
):
    probe = ENTRY_POINT_PROBES[entry_point]
    if canonical in qfocal.losses_for(entry_point):
        assert probe(spelling) == canonical
        return
    with pytest.raises((ValueError, SystemExit)) as info:
        probe(spelling)
    message = str(info.value) + capsys.readouterr().err
    # the error lists what this entry point takes, as the table says
    for name in qfocal.losses_for(entry_point):
        assert name in message, (entry_point, spelling, message)
