"""The in-memory form every reader produces: image records, class names, and the report of skipped items."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["AnnotationError", "DetectionData", "ImageRecord", "SkipReport"]

# Boxes may overrun the image by this many pixels (float rounding in exported labels) and are then clipped.
BOX_TOLERANCE_PX = 1.0


class AnnotationError(ValueError):
    """A bad annotation or image in a dataset; the message names the file and the annotation or line."""


@dataclass
class SkipReport:
    """What a reader skipped with ``skip_bad=True``: counts per reason and the first messages."""

    counts: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    max_messages: int = 20

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.messages) < self.max_messages:
            self.messages.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "skipped nothing"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total} bad item(s): {parts}"


@dataclass
class ImageRecord:
    """One image: its file, size, and boxes ``(n, 4)`` float32 as ``[x1, y1, x2, y2]`` pixels with contiguous
    labels ``(n,)`` int64 in ``[0, num_classes)``."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int


@dataclass
class DetectionData:
    """One split of a dataset: records, class names, the COCO category id of each contiguous label, and what
    was skipped while reading."""

    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]
    source: str
    skipped: SkipReport = field(default_factory=SkipReport)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_coco(self) -> dict:
        """The ground truth as a COCO instances dict (original pixel coordinates), for pycocotools."""
        images, anns = [], []
        for rec in self.records:
            images.append(
                {"id": rec.image_id, "file_name": rec.path.name, "width": rec.width, "height": rec.height}
            )
            for box, label in zip(rec.boxes.tolist(), rec.labels.tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": rec.image_id,
                        "category_id": self.category_ids[label],
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        cats = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)]
        return {"images": images, "annotations": anns, "categories": cats}


def check_image(path: Path) -> tuple[int, int]:
    """The ``(width, height)`` of an image file; AnnotationError naming the file if missing or unreadable."""
    if not path.is_file():
        raise AnnotationError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # walks the file: truncated or corrupt data raises here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise AnnotationError(f"{path}: corrupt or unreadable image ({exc})") from None
    return size


def check_box(box: list[float], width: int, height: int, where: str) -> tuple[str, list[float]] | None:
    """``None`` if the xyxy box is valid (clipping overruns within tolerance in place), else ``(reason, message)``."""
    x1, y1, x2, y2 = box
    if not all(np.isfinite(v) for v in box):
        return "non-finite box", f"{where}: non-finite box coordinates {box}"
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return "non-positive size", f"{where}: box has non-positive size (w={x2 - x1:g}, h={y2 - y1:g})"
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return (
            "box outside image",
            f"{where}: box [x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}] lies outside the {width}x{height} image",
        )
    box[0], box[1] = max(x1, 0.0), max(y1, 0.0)
    box[2], box[3] = min(x2, float(width)), min(y2, float(height))
    if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
        return "non-positive size", f"{where}: box has non-positive size inside the image after clipping"
    return None


def make_record(path: Path, width: int, height: int, boxes: list, labels: list, image_id: int) -> ImageRecord:
    return ImageRecord(
        path=path,
        width=int(width),
        height=int(height),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        image_id=int(image_id),
    )
