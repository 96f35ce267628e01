"""Reader for COCO instances JSON (``annotations/instances_*.json`` plus an image folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .records import AnnotationError, DetectionData, SkipReport, check_box, check_image, make_record

__all__ = ["read_coco"]


def _fail_or_skip(skip_bad: bool, report: SkipReport, reason: str, message: str) -> None:
    if not skip_bad:
        raise AnnotationError(message + " (pass skip_bad=True / --skip-bad to skip bad items and count them)")
    report.add(reason, message)


def read_coco(
    annotations: str | os.PathLike, images_dir: str | os.PathLike, *, skip_bad: bool = False
) -> DetectionData:
    """Read a COCO instances file and check every image and annotation.

    Each bad item (box outside the image, non-positive size, unknown ``category_id`` or ``image_id``, missing or
    corrupt image, malformed entry) raises :class:`AnnotationError` naming the JSON file and the annotation id,
    unless ``skip_bad`` is true: then the annotation (or the image with its annotations) is dropped and counted in
    ``DetectionData.skipped``. ``iscrowd`` annotations are left out of training, as torchvision's references do.

    Args:
        annotations: path of the instances JSON.
        images_dir: folder holding the ``file_name`` of every image.
        skip_bad: skip and count bad items instead of raising.

    Returns:
        :class:`DetectionData` with contiguous labels in the order of the sorted category ids.
    """
    ann_path = Path(annotations)
    img_root = Path(images_dir)
    try:
        coco = json.loads(ann_path.read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{ann_path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{ann_path}: not valid JSON ({exc})") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "categories")):
        raise AnnotationError(f"{ann_path}: expected a COCO object with 'images' and 'categories' lists")
    report = SkipReport()
    try:
        cats = sorted(coco["categories"], key=lambda c: int(c["id"]))
        cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
        names = [str(c.get("name", c["id"])) for c in cats]
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{ann_path}: malformed 'categories' ({exc!r})") from None
    if not cats:
        raise AnnotationError(f"{ann_path}: no categories")

    images: dict[int, dict] = {}
    for k, im in enumerate(coco["images"]):
        try:
            image_id, file_name = int(im["id"]), str(im["file_name"])
            width, height = int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError) as exc:
            _fail_or_skip(
                skip_bad, report, "malformed image entry", f"{ann_path}: images[{k}] is malformed ({exc!r})"
            )
            continue
        path = img_root / file_name
        try:
            actual = check_image(path)
        except AnnotationError as exc:
            reason = "missing image" if "not found" in str(exc) else "corrupt image"
            _fail_or_skip(skip_bad, report, reason, f"{ann_path}: image id {image_id}: {exc}")
            continue
        if actual != (width, height):
            _fail_or_skip(
                skip_bad,
                report,
                "image size mismatch",
                f"{ann_path}: image id {image_id} ({path}): JSON says {width}x{height}, file is {actual[0]}x{actual[1]}",
            )
            continue
        images[image_id] = {"path": path, "width": width, "height": height, "boxes": [], "labels": []}

    known_ids = {int(im["id"]) for im in coco["images"] if isinstance(im, dict) and "id" in im}
    for k, ann in enumerate(coco.get("annotations", [])):
        ann_id = ann.get("id", f"#{k}") if isinstance(ann, dict) else f"#{k}"
        where = f"{ann_path}: annotation id {ann_id}"
        try:
            image_id, cat_id = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            _fail_or_skip(skip_bad, report, "malformed annotation", f"{where}: malformed ({exc!r})")
            continue
        if cat_id not in cat_index:
            _fail_or_skip(skip_bad, report, "unknown class", f"{where}: unknown category_id {cat_id}")
            continue
        if image_id not in images:
            if image_id in known_ids:  # its image was skipped above: already counted
                continue
            _fail_or_skip(skip_bad, report, "unknown image", f"{where}: unknown image_id {image_id}")
            continue
        if ann.get("iscrowd", 0):
            continue
        img = images[image_id]
        box = [x, y, x + w, y + h]
        bad = check_box(box, img["width"], img["height"], where)
        if bad is not None:
            _fail_or_skip(skip_bad, report, *bad)
            continue
        img["boxes"].append(box)
        img["labels"].append(cat_index[cat_id])

    records = [
        make_record(v["path"], v["width"], v["height"], v["boxes"], v["labels"], image_id)
        for image_id, v in sorted(images.items())
    ]
    return DetectionData(
        records=records,
        class_names=names,
        category_ids=[int(c["id"]) for c in cats],
        source=str(ann_path),
        skipped=report,
    )
