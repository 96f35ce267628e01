"""Reader for COCO instances JSON (``annotations/instances_*.json`` plus an image folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .records import (
    AnnotationError,
    DetectionData,
    SkipReport,
    as_flag,
    as_int,
    as_number,
    check_box,
    check_image,
    check_not_empty,
    duplicate_names,
    fail_or_skip,
    join_inside,
    make_record,
    read_text,
    short_repr,
)

__all__ = ["read_coco"]


def read_coco(
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    skip_bad: bool = False,
    allow_outside_root: bool = False,
    allow_empty: bool = False,
) -> DetectionData:
    """Read a COCO instances file and check every image and annotation.

    Structural faults stop the reader whatever ``skip_bad`` says, because no item can be blamed for them: a file
    that is not UTF-8 JSON (a BOM is accepted), a missing or non-list ``images``, ``annotations`` or
    ``categories``, a malformed or duplicate category, duplicate image ids, duplicate ``file_name`` entries,
    duplicate annotation ids, and a split left without a single object.

    Each bad item raises :class:`AnnotationError` naming the JSON file and the image or annotation id, unless
    ``skip_bad`` is true: then the item is dropped and counted in ``DetectionData.skipped`` (a dropped image takes
    its annotations with it, counted in ``skipped.dropped``). Bad items are: a malformed image entry, an image
    ``file_name`` leaving ``images_dir``, a missing, corrupt or too large image, a JSON size that differs from the
    file's; a malformed annotation (``image_id``, ``category_id``, ``bbox`` or ``iscrowd`` of the wrong type or
    range), an unknown ``category_id`` or ``image_id``, and a box that is non-finite, empty or outside the image.

    Accepted as labelling tools (CVAT, Label Studio, Roboflow) export them: ids as ``1``, ``1.0`` or ``"1"``;
    ``bbox`` numbers as strings; ``iscrowd`` as 0/1, ``false``/``true`` or ``"0"``/``"1"`` (anything else is an
    error, never a silent drop); annotations without an ``id``; extra keys; ``segmentation`` in any form (it is
    not read: boxes come from ``bbox`` only). ``iscrowd`` annotations are left out of training, as torchvision's
    references do, and kept (``ImageRecord.crowd_boxes``) for evaluation, where COCOeval ignores them and the
    detections on them.

    Args:
        annotations: path of the instances JSON.
        images_dir: folder holding the ``file_name`` of every image: the root no image may leave.
        skip_bad: skip and count bad items instead of raising.
        allow_outside_root: read ``file_name`` values that are absolute or climb out of ``images_dir``.
        allow_empty: accept a split without any object (a negative-only set) instead of raising.

    Returns:
        :class:`DetectionData` with contiguous labels in the order of the sorted category ids.
    """
    ann_path = Path(annotations)
    img_root = Path(images_dir)
    coco = _load_json(ann_path)
    report = SkipReport()
    cat_ids, names = _categories(ann_path, coco["categories"])
    cat_index = {c: i for i, c in enumerate(cat_ids)}
    entries = _image_entries(ann_path, coco["images"])
    ann_ids = _annotation_ids(ann_path, coco["annotations"])

    images: dict[int, dict] = {}
    known_ids = {e["id"] for e in entries if e.get("id") is not None}
    for e in entries:
        if "error" in e:
            fail_or_skip(skip_bad, report, "malformed image entry", e["error"])
            continue
        where = f"{ann_path}: image id {e['id']}"
        try:
            path = join_inside(img_root, e["file_name"], where, allow_outside_root=allow_outside_root)
        except AnnotationError as exc:
            fail_or_skip(skip_bad, report, exc.reason or "path outside root", str(exc))
            continue
        try:
            actual = check_image(path)
        except AnnotationError as exc:
            fail_or_skip(skip_bad, report, exc.reason or "corrupt image", f"{where}: {exc}")
            continue
        if actual != (e["width"], e["height"]):
            fail_or_skip(
                skip_bad,
                report,
                "image size mismatch",
                f"{where} ({path}): JSON says {e['width']}x{e['height']}, file is {actual[0]}x{actual[1]}",
            )
            continue
        images[e["id"]] = {
            "path": path,
            "width": e["width"],
            "height": e["height"],
            "boxes": [],
            "labels": [],
            "crowd_boxes": [],
            "crowd_labels": [],
        }

    n_crowd = 0
    for k, ann in enumerate(coco["annotations"]):
        where = f"{ann_path}: " + (f"annotation id {ann_ids[k]}" if k in ann_ids else f"annotations[{k}]")
        try:
            if not isinstance(ann, dict):
                raise ValueError(f"expected an object, got {short_repr(ann)}")
            if "id" in ann and k not in ann_ids:
                as_int(ann["id"], "id")  # raises: the id is malformed
            image_id = as_int(ann.get("image_id"), "image_id")
            cat_id = as_int(ann.get("category_id"), "category_id")
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError(f"bbox: expected [x, y, w, h], got {short_repr(bbox)}")
            x, y, w, h = (as_number(v, "bbox") for v in bbox)
            crowd = as_flag(ann.get("iscrowd", 0), "iscrowd")
        except ValueError as exc:
            fail_or_skip(skip_bad, report, "malformed annotation", f"{where}: malformed ({exc})")
            continue
        if cat_id not in cat_index:
            fail_or_skip(skip_bad, report, "unknown class", f"{where}: unknown category_id {cat_id}")
            continue
        if image_id not in images:
            if image_id in known_ids:  # its image was skipped above and counted there
                report.dropped += 1
                continue
            fail_or_skip(skip_bad, report, "unknown image", f"{where}: unknown image_id {image_id}")
            continue
        img = images[image_id]
        box = [x, y, x + w, y + h]
        bad = check_box(box, img["width"], img["height"], where)
        if bad is not None:
            fail_or_skip(skip_bad, report, *bad)
            continue
        n_crowd += crowd
        img["crowd_boxes" if crowd else "boxes"].append(box)
        img["crowd_labels" if crowd else "labels"].append(cat_index[cat_id])

    records = [
        make_record(
            v["path"],
            v["width"],
            v["height"],
            v["boxes"],
            v["labels"],
            image_id,
            v["crowd_boxes"],
            v["crowd_labels"],
        )
        for image_id, v in sorted(images.items())
    ]
    data = DetectionData(
        records=records, class_names=names, category_ids=cat_ids, source=str(ann_path), skipped=report
    )
    n_ann = len(coco["annotations"])
    return check_not_empty(
        data, f"{n_ann} annotation(s) in the file, {n_crowd} of them iscrowd", allow_empty=allow_empty
    )


def _load_json(ann_path: Path) -> dict:
    """The parsed instances file with list-valued ``images``, ``annotations`` and ``categories``."""
    text = read_text(ann_path, "annotation file")
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{ann_path}:{exc.lineno}: not valid JSON ({exc})") from None
    except RecursionError:
        raise AnnotationError(f"{ann_path}: not valid JSON (nested too deeply)") from None
    if not isinstance(coco, dict):
        raise AnnotationError(f"{ann_path}: expected a COCO object with 'images', got {_json_type(coco)}")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            hint = " (an image-info file without annotations?)" if key == "annotations" else ""
            raise AnnotationError(
                f"{ann_path}: expected a COCO object with an '{key}' list, it has none{hint}"
            )
        if not isinstance(coco[key], list):
            raise AnnotationError(f"{ann_path}: '{key}' must be a list, got {_json_type(coco[key])}")
    if not coco["images"]:
        raise AnnotationError(f"{ann_path}: 'images' is empty")
    return coco


def _json_type(value: object) -> str:
    names = {type(None): "null", dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


def _categories(ann_path: Path, cats: list) -> tuple[list[int], list[str]]:
    """Sorted category ids and their names; any malformed or duplicate category is an error (not skippable:
    dropping a category would renumber every label)."""
    if not cats:
        raise AnnotationError(f"{ann_path}: 'categories' is empty")
    seen: dict[int, int] = {}
    parsed = []
    for k, c in enumerate(cats):
        where = f"{ann_path}: categories[{k}]"
        if not isinstance(c, dict):
            raise AnnotationError(f"{where}: expected an object with 'id' and 'name', got {short_repr(c)}")
        try:
            cid = as_int(c.get("id"), "id")
        except ValueError as exc:
            raise AnnotationError(f"{where}: malformed ({exc})") from None
        if cid in seen:
            raise AnnotationError(
                f"{ann_path}: duplicate category id {cid} (categories[{seen[cid]}] and categories[{k}])"
            )
        seen[cid] = k
        parsed.append((cid, str(c.get("name", cid))))
    parsed.sort()
    names = [n for _, n in parsed]
    repeated = duplicate_names(names)
    if repeated:
        raise AnnotationError(
            f"{ann_path}: expected distinct category names, got {repeated} for several ids (results per class "
            "would be merged under one name); rename or merge them"
        )
    return [c for c, _ in parsed], names


def _image_entries(ann_path: Path, images: list) -> list[dict]:
    """Each ``images`` entry as ``{"id", "file_name", "width", "height"}`` or ``{"error", "id"}``. Duplicate ids
    and duplicate file names are errors here (not skippable: no annotation could be attributed safely)."""
    entries: list[dict] = []
    by_id: dict[int, int] = {}
    by_name: dict[str, tuple[int, int]] = {}
    for k, im in enumerate(images):
        where = f"{ann_path}: images[{k}]"
        if not isinstance(im, dict):
            entries.append({"error": f"{where} is malformed (expected an object, got {short_repr(im)})"})
            continue
        try:
            image_id = as_int(im.get("id"), "id")
        except ValueError as exc:
            entries.append({"error": f"{where} is malformed ({exc})"})
            continue
        if image_id in by_id:
            j = by_id[image_id]
            raise AnnotationError(
                f"{ann_path}: duplicate image id {image_id}: images[{j}] ({short_repr(images[j].get('file_name'))}) "
                f"and images[{k}] ({short_repr(im.get('file_name'))}); annotations cannot be attributed"
            )
        by_id[image_id] = k
        where = f"{ann_path}: image id {image_id} (images[{k}])"
        try:
            file_name = im.get("file_name")
            if not isinstance(file_name, str) or not file_name.strip():
                raise ValueError(f"file_name: expected a file name, got {short_repr(file_name)}")
            width = as_int(im.get("width"), "width", low=1)
            height = as_int(im.get("height"), "height", low=1)
        except ValueError as exc:
            entries.append({"error": f"{where} is malformed ({exc})", "id": image_id})
            continue
        key = os.path.normpath(file_name)
        if key in by_name:
            j, other = by_name[key]
            raise AnnotationError(
                f"{ann_path}: duplicate file_name {file_name!r}: image id {other} (images[{j}]) and image id "
                f"{image_id} (images[{k}])"
            )
        by_name[key] = (k, image_id)
        entries.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    return entries


def _annotation_ids(ann_path: Path, anns: list) -> dict[int, int]:
    """``{index: id}`` for the annotations with a well-formed ``id``; duplicate ids are an error. An annotation
    without an id is named by its index; one with a malformed id is reported as malformed when it is read."""
    ids: dict[int, int] = {}
    first: dict[int, int] = {}
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict) or "id" not in ann:
            continue
        try:
            ann_id = as_int(ann["id"], "id")
        except ValueError:
            continue
        if ann_id in first:
            raise AnnotationError(
                f"{ann_path}: duplicate annotation id {ann_id} (annotations[{first[ann_id]}] and annotations[{k}])"
            )
        first[ann_id] = k
        ids[k] = ann_id
    return ids
