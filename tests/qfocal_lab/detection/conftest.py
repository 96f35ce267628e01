"""Fixtures of the framework-compare tests: fake YOLOv5, Ultralytics, FCOS and random checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _fake_checkpoints(tmp_path: Path) -> dict[str, Path]:
    """A checkpoint of each framework (their own model classes, pickled as they pickle them), a qfocal FCOS
    checkpoint and a file that is no checkpoint."""
    from qfocal.integrations._offline import offline_import

    with offline_import():
        from ultralytics.nn.tasks import DetectionModel
        from yolov5.models.yolo import Model

    import yolov5

    paths = {k: tmp_path / f"{k}.pt" for k in ("yolov5", "ultralytics", "fcos", "random")}
    cfg = Path(yolov5.__file__).parent / "models" / "yolov5n.yaml"
    torch.save({"epoch": -1, "model": Model(cfg, nc=2), "ema": None}, paths["yolov5"])
    torch.save(
        {"epoch": -1, "model": None, "ema": DetectionModel("yolov8n.yaml", nc=2, verbose=False)},
        paths["ultralytics"],
    )
    torch.save(
        {"config": {"loss": "focal"}, "model": {"w": torch.zeros(2)}, "class_names": ["a"]}, paths["fcos"]
    )
    paths["random"].write_bytes(bytes(range(256)) * 8)
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return _fake_checkpoints(tmp_path_factory.mktemp("ckpts"))
