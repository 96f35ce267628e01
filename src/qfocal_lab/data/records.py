"""The in-memory form every reader produces (image records, class names, the report of skipped items) and the
checks the COCO and YOLO readers share: typed values, text decoding, paths inside the dataset root, images."""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["AnnotationError", "DetectionData", "ImageRecord", "SkipReport", "load_rgb"]

# Boxes may overrun the image by this many pixels (float rounding in exported labels) and are then clipped.
BOX_TOLERANCE_PX = 1.0
# Ids are stored as int64 by pycocotools and torch.
_MAX_ID = 2**63 - 1
_INT_TEXT = re.compile(r"\s*[+-]?\d{1,19}\s*")

SKIP_HINT = " (pass skip_bad=True / --skip-bad to skip bad items and count them)"
OUTSIDE_HINT = "pass allow_outside_root=True to read files outside the dataset root"
EMPTY_HINT = "pass allow_empty=True if the split really has no objects"


class AnnotationError(ValueError):
    """A bad annotation or image in a dataset; the message names the file and the annotation, image or line.

    ``reason`` is the :class:`SkipReport` key the item is counted under when it is skipped.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SkipReport:
    """What a reader skipped with ``skip_bad=True``: counts per reason and the first messages.

    ``dropped`` counts the annotations (or label rows) that went with a skipped image or label file: they are
    not bad themselves, so they are not in ``counts``, but :meth:`summary` reports them.
    """

    counts: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    max_messages: int = 20
    dropped: int = 0

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
        text = f"skipped {self.total} bad item(s): {parts}"
        if self.dropped:
            text += f"; {self.dropped} annotation(s) dropped along with skipped images or label files"
        return text


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
    # COCO's iscrowd regions, ``(m, 4)`` xyxy and ``(m,)``: not trained on, but kept for evaluation, where they
    # are ignored ground truth that absorbs the detections on them (as COCOeval treats them)
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    crowd_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


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

    @property
    def num_objects(self) -> int:
        return sum(len(r.labels) for r in self.records)

    def to_coco(self) -> dict:
        """The ground truth as a COCO instances dict (original pixel coordinates), for pycocotools; the crowd
        regions of the records go in with ``iscrowd: 1``."""
        images: list[dict] = []
        anns: list[dict] = []
        for rec in self.records:
            images.append(
                {"id": rec.image_id, "file_name": rec.path.name, "width": rec.width, "height": rec.height}
            )
            for boxes, labels, crowd in ((rec.boxes, rec.labels, 0), (rec.crowd_boxes, rec.crowd_labels, 1)):
                for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
                    w, h = box[2] - box[0], box[3] - box[1]
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": rec.image_id,
                            "category_id": self.category_ids[label],
                            "bbox": [box[0], box[1], w, h],
                            "area": w * h,
                            "iscrowd": crowd,
                        }
                    )
        cats = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)]
        return {"images": images, "annotations": anns, "categories": cats}


def fail_or_skip(skip_bad: bool, report: SkipReport, reason: str, message: str) -> None:
    """Raise :class:`AnnotationError` for a skippable bad item, or count it in ``report`` with ``skip_bad``."""
    if not skip_bad:
        raise AnnotationError(message + SKIP_HINT, reason=reason)
    report.add(reason, message)


# Typed values. Labelling tools export ids as 1 or 1.0 (and sometimes "1"), numbers as strings; JSON's 1e400
# parses as inf and NaN is accepted by Python's json. Each helper raises ValueError "expected X, got Y".


def as_int(value: object, what: str, *, low: int = 0) -> int:
    """An integer in ``[low, 2**63)`` from an int, an integral float (``1.0``) or a decimal string (``"1"``)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, int):
        v = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != math.floor(value):
            raise ValueError(f"{what}: expected an integer, got {value!r}")
        v = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
        v = int(value)
    else:
        raise ValueError(f"{what}: expected an integer, got {short_repr(value)}")
    if not low <= v <= _MAX_ID:
        raise ValueError(f"{what}: expected an integer in [{low}, 2**63), got {short_repr(value)}")
    return v


def as_number(value: object, what: str) -> float:
    """A float from an int, a float or a numeric string (non-finite values pass: the box check names them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what}: expected a number, got {short_repr(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{what}: number too large, got {short_repr(value)}") from None
    except ValueError:
        raise ValueError(f"{what}: expected a number, got {short_repr(value)}") from None


def as_flag(value: object, what: str) -> bool:
    """A 0/1 flag: 0, 1, False, True, 0.0, 1.0, "0" or "1"; anything else is an error, never a guess."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return value.strip() == "1"
    raise ValueError(f"{what}: expected 0 or 1, got {short_repr(value)}")


def duplicate_names(names: list[str]) -> str:
    """The class names given more than once (compared without surrounding spaces), as text; "" when none."""
    seen: dict[str, int] = {}
    for n in names:
        key = str(n).strip()
        seen[key] = seen.get(key, 0) + 1
    return ", ".join(repr(n) for n, k in seen.items() if k > 1)


def short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_regular_file(path: Path, what: str) -> None:
    """AnnotationError unless ``path`` (or the target of a symlink) is a regular file: a FIFO, a device such as
    ``/dev/zero``, a socket or a folder would block the reader forever or never end, so none is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AnnotationError(f"{path}: {what} not found", reason="missing file") from None
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{path}: cannot read {what} ({exc})", reason="unreadable file") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        via = f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise AnnotationError(
            f"{path}: expected a regular file as {what}, got {kind}{via}", reason="not a regular file"
        )


def read_text(path: Path, what: str) -> str:
    """The text of a UTF-8 file (a leading BOM is dropped); AnnotationError naming ``path:line`` otherwise
    (also for anything but a regular file: :func:`check_regular_file`)."""
    check_regular_file(path, what)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: {what} not found", reason="missing file") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read {what} ({exc})", reason="unreadable file") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise AnnotationError(
            f"{path}:{line}: {what} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            reason="unreadable file",
        ) from None


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies under ``root``, lexically (``..`` collapsed) or once symlinks are resolved."""
    pairs = [(os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root)))]
    with contextlib.suppress(OSError, RuntimeError, ValueError):  # a symlink loop or an unrepresentable name
        pairs.append((str(Path(path).resolve()), str(Path(root).resolve())))
    return any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for p, r in pairs)


def join_inside(
    root: Path, name: str | os.PathLike, where: str, *, allow_outside_root: bool, base: Path | None = None
) -> Path:
    """``(base or root) / name``; AnnotationError naming the path and the opt-in flag when it leaves ``root``
    (an absolute path elsewhere or one climbing out through ``..``) and ``allow_outside_root`` is false."""
    path = (root if base is None else base) / name
    if not allow_outside_root and not is_inside(path, root):
        raise AnnotationError(
            f"{where}: path {str(name)!r} leaves the dataset root {root}; {OUTSIDE_HINT}",
            reason="path outside root",
        )
    return path


# EXIF orientations that swap width and height (transpose, rotate 90 or 270, transverse).
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)


def _to_8bit(im: Image.Image) -> Image.Image:
    """An 8-bit image of a 16-bit, 32-bit integer or float one, scaled by what its values mean: 16-bit by 65535,
    float in [0, 1] by 255, other ranges (and 32-bit integers beyond 16 bits) from their minimum to their
    maximum. Pillow's own ``convert`` clips these to 255, which turns any 16-bit or float image white."""
    arr = np.asarray(im, dtype=np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if im.mode.startswith("I;16"):
        scaled = arr / 65535.0
    elif im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = arr
    elif lo >= 0.0 and hi <= 255.0 and im.mode == "F":
        scaled = arr / 255.0
    elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        # Pillow opens 16-bit PNGs as mode I: 8-bit content stays as it is, 16-bit is scaled by 65535
        scaled = arr / (255.0 if hi <= 255.0 else 65535.0)
    else:
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8), "L")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as it is displayed, in 8-bit RGB: the one image loader of the harness (training,
    evaluation, plots), so labels made on the displayed image fit the pixels the model sees.

    EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`), 16-bit and float images are scaled to
    8 bits by their range (:func:`_to_8bit`) instead of clipped, and anything but a regular file is refused
    before it is opened (:func:`check_regular_file`)."""
    path = Path(path)
    check_regular_file(path, "image")
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            im = _to_8bit(im)
        return im.convert("RGB")


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an open image once its EXIF orientation is applied (what :func:`load_rgb` gives)."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # unreadable EXIF: Pillow's exif_transpose ignores it too
        orientation = None
    w, h = im.size
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def check_image(path: Path) -> tuple[int, int]:
    """The displayed ``(width, height)`` of an image file (after its EXIF orientation); AnnotationError naming the file (and with a ``reason``) if it is
    missing, unreadable, truncated or corrupt, or larger than Pillow's decompression-bomb limit."""
    if not os.path.lexists(path) or (os.path.islink(path) and not os.path.exists(path)):
        raise AnnotationError(f"{path}: image file not found", reason="missing image")
    check_regular_file(path, "image")
    try:
        with Image.open(path) as im:  # EXIF is read on its own: verify() must come straight after open()
            size = displayed_size(im)
        with Image.open(path) as im:
            fmt = im.format
            im.verify()  # walks PNG chunks and checksums: truncated or corrupt data raises here
        # verify() does not decode JPEG: a file without its end marker is decoded fully to tell a truncated
        # file from one with trailing bytes.
        if fmt == "JPEG":
            with path.open("rb") as f:
                f.seek(-2, os.SEEK_END)
                if f.read() != b"\xff\xd9":
                    with Image.open(path) as im:
                        im.load()
    except Image.DecompressionBombError as exc:
        raise AnnotationError(
            f"{path}: image too large ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted",
            reason="image too large",
        ) from None
    except Exception as exc:  # any decoder failure (OSError, SyntaxError, struct.error, ...) is a bad file
        raise AnnotationError(
            f"{path}: corrupt or unreadable image ({type(exc).__name__}: {exc})", reason="corrupt image"
        ) from None
    if size[0] < 1 or size[1] < 1:
        raise AnnotationError(f"{path}: image has no pixels ({size[0]}x{size[1]})", reason="corrupt image")
    return size


def check_box(box: list[float], width: int, height: int, where: str) -> tuple[str, str] | None:
    """``None`` if the xyxy box is valid (clipping overruns within tolerance in place), else ``(reason, message)``."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
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


def check_not_empty(data: DetectionData, what: str, *, allow_empty: bool) -> DetectionData:
    """``data`` unless it has no objects at all: a whole split without objects is a missing or unread label
    source far more often than a real negative-only set, so it is an error unless ``allow_empty``."""
    if allow_empty or data.num_objects:
        return data
    detail = f"; {data.skipped.summary()}" if data.skipped.total else ""
    raise AnnotationError(
        f"{data.source}: no objects in {len(data.records)} image(s): {what}{detail}; {EMPTY_HINT}",
        reason="no objects",
    )


def make_record(
    path: Path,
    width: int,
    height: int,
    boxes: list,
    labels: list,
    image_id: int,
    crowd_boxes: Sequence = (),
    crowd_labels: Sequence = (),
) -> ImageRecord:
    return ImageRecord(
        path=path,
        width=int(width),
        height=int(height),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        image_id=int(image_id),
        crowd_boxes=np.asarray(crowd_boxes, dtype=np.float32).reshape(-1, 4),
        crowd_labels=np.asarray(crowd_labels, dtype=np.int64).reshape(-1),
    )
