"""The checks a framework compare makes before it trains (qfocal_lab.detection.framework_checks): the weights
a run starts from and the fine-tune settings."""

from __future__ import annotations

import pytest

from qfocal_lab.detection.config import ConfigError
from qfocal_lab.detection.frameworks import compare_framework
from tests.qfocal_lab.detection.test_frameworks import FakeUltralytics, FakeYOLOv5


def test_weights_are_checked_before_training(tmp_path, checkpoints):
    from qfocal_lab.detection.framework_checks import check_weights

    assert check_weights(checkpoints["yolov5"], "yolov5") == checkpoints["yolov5"].resolve()
    assert check_weights(checkpoints["ultralytics"], "ultralytics") == checkpoints["ultralytics"].resolve()
    for framework, other in (("yolov5", "ultralytics"), ("ultralytics", "yolov5")):
        with pytest.raises(
            ConfigError,
            match=f"weights: expected .*got an? {'YOLOv5' if other == 'yolov5' else 'Ultralytics'} checkpoint",
        ):
            check_weights(checkpoints[other], framework)
        with pytest.raises(ConfigError, match=r"weights: expected .* got a qfocal FCOS checkpoint"):
            check_weights(checkpoints["fcos"], framework)
        with pytest.raises(ConfigError, match=r"weights: expected .* \(not loadable: "):
            check_weights(checkpoints["random"], framework)
        with pytest.raises(ConfigError, match="\\(no such file\\)"):
            check_weights(tmp_path / "missing.pt", framework)


@pytest.mark.parametrize(
    "framework, kwargs, match",
    [
        ("yolov5", {"pretrain_epochs": -1}, "pretrain_epochs: expected an integer >= 0"),
        ("yolov5", {"jobs": 0}, "jobs: expected an integer >= 1"),
        (
            "yolov5",
            {"losses": ["bce", "qfl-warmup3"], "epochs": 3},
            r"shorter than the 3 epochs \(the loss must train after it\), got qfl-warmup3",
        ),
        ("ultralytics", {"term": "cls"}, "term: expected none for ultralytics"),
        ("ultralytics", {"term": "obj"}, "term: expected none for ultralytics"),
        ("yolov5", {"term": "box"}, "term: expected obj or cls for yolov5, got 'box'"),
        (
            "yolov5",
            {"weights": "W", "pretrain_epochs": 2},
            "weights: expected either weights or pretrain_epochs",
        ),
        ("yolov5", {"weights": "W", "model": "yolov5s.yaml"}, "model: the architecture comes from weights"),
        ("yolov5", {"weights": "missing.pt"}, "weights: expected a YOLOv5 detection checkpoint"),
        ("yolov5", {"weights": "ultralytics"}, "got an Ultralytics checkpoint"),
        ("ultralytics", {"weights": "yolov5"}, "got a YOLOv5 checkpoint"),
        ("ultralytics", {"weights": "fcos"}, "got a qfocal FCOS checkpoint"),
        ("yolov5", {"weights": "random"}, "not loadable"),
    ],
)
def test_bad_fine_tune_settings_are_refused_before_training(tmp_path, checkpoints, framework, kwargs, match):
    if "weights" in kwargs:
        kwargs = {**kwargs, "weights": checkpoints.get(kwargs["weights"], tmp_path / kwargs["weights"])}
    fake = FakeYOLOv5() if framework == "yolov5" else FakeUltralytics()
    with pytest.raises(ConfigError, match=match) as info:
        compare_framework(framework, out=tmp_path / "cmp", train_fn=fake, **{"epochs": 3, **kwargs})
    assert "\n" not in str(info.value)
    assert fake.calls == [] and not (tmp_path / "cmp").exists()
