"""Reader for YOLO datasets: a data yaml (``path``, ``train``, ``val``, ``names``) and ``labels/*.txt`` files."""

from __future__ import annotations

import os
from pathlib import Path

from .coco import _fail_or_skip
from .records import AnnotationError, DetectionData, SkipReport, check_box, check_image, make_record

__all__ = ["IMAGE_SUFFIXES", "read_yolo", "read_yolo_yaml"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_yolo_yaml(path: str | os.PathLike) -> dict:
    """Parse a YOLO data yaml; return ``{"root", "train", "val", "names"}`` with resolved paths."""
    import yaml

    yaml_path = Path(path)
    try:
        cfg = yaml.safe_load(yaml_path.read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{yaml_path}: data yaml not found") from None
    except yaml.YAMLError as exc:
        raise AnnotationError(f"{yaml_path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict) or "names" not in cfg or "train" not in cfg or "val" not in cfg:
        raise AnnotationError(f"{yaml_path}: expected keys 'train', 'val' and 'names'")
    root = Path(cfg.get("path") or yaml_path.parent)
    if not root.is_absolute():
        root = yaml_path.parent / root
    if not root.exists():  # a moved dataset: fall back to the yaml's own folder
        root = yaml_path.parent
    names = cfg["names"]
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise AnnotationError(f"{yaml_path}: 'names' keys must be class indices") from None
        if keys != list(range(len(keys))):
            raise AnnotationError(f"{yaml_path}: 'names' must be indexed 0..{len(keys) - 1}, got {keys}")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise AnnotationError(f"{yaml_path}: 'names' must be a list or a dict, got {type(names).__name__}")
    return {"root": root, "train": root / str(cfg["train"]), "val": root / str(cfg["val"]), "names": names}


def _label_path(image: Path) -> Path:
    """YOLO's convention: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_yolo(
    images: str | os.PathLike, names: list[str], *, skip_bad: bool = False, source: str | None = None
) -> DetectionData:
    """Read YOLO txt labels for the images in a folder (or listed in a ``.txt`` file) and check every line.

    Each label line is ``class cx cy w h`` normalised to [0, 1]. A malformed line, an unknown class, a
    non-positive size, a box outside the image, or a missing or corrupt image raises :class:`AnnotationError`
    naming the file and line, unless ``skip_bad`` is true: then the line (or image) is dropped and counted in
    ``DetectionData.skipped``. An image without a label file has no objects (YOLO's convention).

    Args:
        images: folder of images, or a text file listing image paths (relative to its folder).
        names: class names; class ``k`` of the labels is ``names[k]``.
        skip_bad: skip and count bad items instead of raising.
        source: text naming the dataset in messages (default: ``images``).
    """
    img_src = Path(images)
    report = SkipReport()
    if img_src.is_dir():
        files = sorted(p for p in img_src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif img_src.is_file() and img_src.suffix == ".txt":
        files = []
        for line in img_src.read_text().splitlines():
            if line.strip():
                p = Path(line.strip())
                files.append(p if p.is_absolute() else img_src.parent / p)
    else:
        raise AnnotationError(f"{img_src}: expected an image folder or a .txt list of images")
    records = []
    for image_id, path in enumerate(files, start=1):
        try:
            width, height = check_image(path)
        except AnnotationError as exc:
            _fail_or_skip(
                skip_bad, report, "missing image" if "not found" in str(exc) else "corrupt image", str(exc)
            )
            continue
        boxes, labels = [], []
        lbl = _label_path(path)
        if lbl.is_file():
            for n, line in enumerate(lbl.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{lbl}:{n}"
                fields = line.split()
                try:
                    if len(fields) != 5:
                        raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(fields)}")
                    cls_f = float(fields[0])
                    cx, cy, w, h = (float(v) for v in fields[1:])
                except ValueError as exc:
                    _fail_or_skip(
                        skip_bad, report, "malformed line", f"{where}: malformed line {line!r} ({exc})"
                    )
                    continue
                if cls_f != int(cls_f) or not 0 <= int(cls_f) < len(names):
                    _fail_or_skip(
                        skip_bad,
                        report,
                        "unknown class",
                        f"{where}: unknown class {fields[0]} (have {len(names)})",
                    )
                    continue
                box = [
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                ]
                bad = check_box(box, width, height, where)
                if bad is not None:
                    _fail_or_skip(skip_bad, report, *bad)
                    continue
                boxes.append(box)
                labels.append(int(cls_f))
        records.append(make_record(path, width, height, boxes, labels, image_id))
    return DetectionData(
        records=records,
        class_names=list(names),
        category_ids=list(range(1, len(names) + 1)),
        source=source or str(img_src),
        skipped=report,
    )
