"""Fault injection for the dataset readers: a table of mutations, each applied to a fresh copy of a tiny synthetic
dataset. Every fault must be an AnnotationError naming the file and the item (never another exception); with
skip_bad=True it is either skipped and counted with everything else read correctly, or, for structural faults
that no item can be blamed for, still an error. A second table holds what labelling tools really export
(BOM, CRLF, float ids, strings, polygons...): those must read exactly like the clean dataset."""

from __future__ import annotations

import io
import json
import shutil
import struct
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qfocal_lab.data import AnnotationError, DetectionDataset, generate_dataset, load_split


@dataclass
class Expect:
    """What a fault must produce: the error names ``file`` and ``item`` and says ``text``. With skip_bad=True,
    ``skip`` is the SkipReport counts (None: still an error), and the result misses ``lost`` objects and
    ``records_lost`` images of the clean read."""

    file: Path | str
    item: str
    text: str = ""
    skip: dict[str, int] | None = None
    lost: int = 0
    records_lost: int = 0


@dataclass
class Fault:
    mutate: Callable[[Path], Expect]
    layout: str = "coco"  # "coco": the folder (COCO wins); "yolo": its data.yaml
    split: str = "train"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "base"
    generate_dataset(root, images=8, seed=0, imgsz=64, min_size=4)
    return root


@pytest.fixture(scope="module")
def clean(base):
    return {
        (layout, split): load_split(base / "data.yaml" if layout == "yolo" else base, split)
        for layout in ("coco", "yolo")
        for split in ("train", "val")
    }


@pytest.fixture
def ds(base, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(base, root)
    return root


def _read(root: Path, fault: Fault, **kw):
    """``(data, None)`` or ``(None, AnnotationError)``; any other exception fails the test with its traceback."""
    src = root / "data.yaml" if fault.layout == "yolo" else root
    try:
        return load_split(src, fault.split, **kw), None
    except AnnotationError as exc:
        return None, exc
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped instead of AnnotationError:\n{traceback.format_exc()}")


# ---------------------------------------------------------------------------------------------- COCO helpers


def _json_path(root: Path, split: str = "train") -> Path:
    return root / "annotations" / f"instances_{split}.json"


def _edit(root: Path, fn, raw: dict[str, str] | None = None) -> Path:
    """Apply ``fn`` to the train JSON and write it back; ``raw`` replaces quoted placeholders with literal JSON
    text (``1e400``, a 400-digit integer) that json.dumps cannot write."""
    path = _json_path(root)
    coco = json.loads(path.read_text())
    fn(coco)
    text = json.dumps(coco)
    for key, literal in (raw or {}).items():
        text = text.replace(json.dumps(key), literal)
    path.write_text(text)
    return path


def _anns_of(root: Path, image_id: int) -> int:
    coco = json.loads(_json_path(root).read_text())
    return sum(a["image_id"] == image_id for a in coco["annotations"])


def _structural(text: str, fn, raw=None, item: str | None = None) -> Callable[[Path], Expect]:
    def mutate(root):
        path = _edit(root, fn, raw)
        return Expect(path, item if item is not None else str(path), text)

    return mutate


def _bad_annotation(reason: str, text: str, fn, raw=None, index: int = 1) -> Callable[[Path], Expect]:
    """Annotation ``index`` edited by ``fn(ann)``: one skipped annotation, one object lost."""

    def mutate(root):
        ids = []

        def edit(coco):
            ann = coco["annotations"][index]
            ids.append(ann.get("id"))
            fn(ann)

        path = _edit(root, edit, raw)
        return Expect(path, f"annotation id {ids[0]}", text, {reason: 1}, lost=1)

    return mutate


def _bad_image_entry(reason: str, text: str, fn, raw=None, unknown: bool = False) -> Callable[[Path], Expect]:
    """Image entry 2 (id 3) edited by ``fn(entry)`` (or replaced by what it returns): the image and its
    annotations are dropped. With
    ``unknown`` its id is lost too, so its annotations are counted as pointing to an unknown image."""

    def mutate(root):
        n = _anns_of(root, 3)

        def edit(coco):
            replacement = fn(coco["images"][2])
            if replacement is not None:
                coco["images"][2] = replacement

        path = _edit(root, edit, raw)
        skip = {reason: 1, **({"unknown image": n} if unknown and n else {})}
        item = "images[2]" if unknown else "image id 3"
        return Expect(path, item, text, skip, lost=n, records_lost=1)

    return mutate


def _image_file(root: Path, index: int = 2, split: str = "train") -> Path:
    return root / "images" / split / f"{index:06d}.png"


def _bomb_png(path: Path, side: int = 100_000) -> None:
    """Rewrite the PNG header to claim ``side x side`` pixels: Pillow refuses it on open (decompression bomb)."""
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def _image_fault(reason: str, text: str, damage) -> Callable[[Path], Expect]:
    """Image 000002.png (id 3) damaged by ``damage(path, root)``; it is skipped with its annotations."""

    def mutate(root):
        n = _anns_of(root, 3)
        shown = damage(_image_file(root), root) or _image_file(root)
        return Expect(shown, "image id 3", text, {reason: 1}, lost=n, records_lost=1)

    return mutate


def _truncate(img, root):
    img.write_bytes(img.read_bytes()[:80])


def _garbage(img, root):
    img.write_bytes(b"this is not an image")


def _bomb(img, root):
    _bomb_png(img)


def _missing(img, root):
    img.unlink()


def _truncated_jpeg(img, root):
    jpg = img.with_suffix(".jpg")
    buf = io.BytesIO()
    Image.open(img).save(buf, "JPEG", quality=90)
    jpg.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    img.unlink()
    path = _json_path(root)
    coco = json.loads(path.read_text())
    coco["images"][2]["file_name"] = jpg.name
    path.write_text(json.dumps(coco))
    return jpg


def _outside(where: str) -> Callable[[Path], Expect]:
    """Image id 3's file_name set to an absolute path or a ``..`` path leaving images/train."""

    def mutate(root):
        n = _anns_of(root, 3)
        if where == "absolute":
            elsewhere = root.parent / "elsewhere"
            elsewhere.mkdir()
            name = str(shutil.copy(_image_file(root), elsewhere / "x.png"))
        else:
            name = "../val/000000.png"

        def edit(coco):
            coco["images"][2]["file_name"] = name

        path = _edit(root, edit)
        return Expect(path, "image id 3", "allow_outside_root=True", {"path outside root": 1}, n, 1)

    return mutate


def _missing_split_file(split: str) -> Callable[[Path], Expect]:
    def mutate(root):
        _json_path(root, split).unlink()
        return Expect(_json_path(root, split), "not found", "COCO dataset needs an instances file")

    return mutate


def _images_folder_gone(root: Path) -> Expect:
    shutil.rmtree(root / "images" / "train")  # falls to images/: every file_name is missing there
    return Expect(_json_path(root), "image id 1", "not found")


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _set(key, value):
    def fn(obj):
        obj[key] = value

    return fn


def _delete(key):
    def fn(obj):
        del obj[key]

    return fn


def _set_bbox(i, value):
    def fn(ann):
        ann["bbox"][i] = value

    return fn


def _dup(section: str, key: str):
    def fn(coco):
        coco[section][1][key] = coco[section][0][key]

    return fn


def _replace(section: str, index: int, value):
    def fn(coco):
        coco[section][index] = value

    return fn


def _all_crowd(coco):
    for a in coco["annotations"]:
        a["iscrowd"] = 1


def _bad_ann_entry(value, text: str) -> Callable[[Path], Expect]:
    """Annotation 1 replaced by a non-object, or given a malformed id: named by its index."""

    def mutate(root):
        def edit(coco):
            if isinstance(value, dict):
                coco["annotations"][1].update(value)
            else:
                coco["annotations"][1] = value

        path = _edit(root, edit)
        return Expect(path, "annotations[1]", text, {"malformed annotation": 1}, lost=1)

    return mutate


BIG = "1" + "0" * 400


def _whole_file(text_or_bytes, msg: str, item_line: bool = True) -> Callable[[Path], Expect]:
    def mutate(root):
        path = _json_path(root)
        data = text_or_bytes(path.read_bytes()) if callable(text_or_bytes) else text_or_bytes
        _write(path, data)
        return Expect(path, f"{path}:1" if item_line else str(path), msg)

    return mutate


COCO_FAULTS = {
    # whole-file and structural faults: errors even with skip_bad
    "json not utf-8": _whole_file(lambda b: b.replace(b'"disc"', b'"d\xe9sc"'), "not UTF-8"),
    "json truncated": _whole_file(lambda b: b[: len(b) // 2], "not valid JSON"),
    "json top-level array": _whole_file("[]", "expected a COCO object", item_line=False),
    "json nested too deeply": _whole_file("[" * 100_000 + "]" * 100_000, "nested too deeply", False),
    "json empty file": _whole_file(b"", "not valid JSON"),
    "no annotations key": _structural("it has none", _delete("annotations"), item="'annotations'"),
    "annotations null": _structural(
        "must be a list, got null", _set("annotations", None), item="'annotations'"
    ),
    "annotations object": _structural("got an object", _set("annotations", {}), item="'annotations'"),
    "no images key": _structural("it has none", _delete("images"), item="'images'"),
    "categories empty": _structural("is empty", _set("categories", []), item="'categories'"),
    "category not an object": _structural(
        "expected an object", _replace("categories", 0, "disc"), None, "categories[0]"
    ),
    "category id 1e400": _structural(
        "expected an integer",
        lambda c: c["categories"][2].update(id="@inf"),
        {"@inf": "1e400"},
        "categories[2]",
    ),
    "category id missing": _structural(
        "expected an integer", lambda c: c["categories"][1].pop("id"), None, "categories[1]"
    ),
    "duplicate category id": _structural(
        "duplicate category id 1", _dup("categories", "id"), None, "categories[1]"
    ),
    "duplicate image id": _structural(
        "annotations cannot be attributed", _dup("images", "id"), None, "duplicate image id 1"
    ),
    "duplicate file_name": _structural("duplicate file_name", _dup("images", "file_name"), None, "images[1]"),
    "duplicate annotation id": _structural(
        "duplicate annotation id", _dup("annotations", "id"), None, "annotations[1]"
    ),
    "annotations empty": _structural("allow_empty=True", _set("annotations", []), item="no objects"),
    "all annotations crowd": _structural("iscrowd", _all_crowd, item="no objects"),
    "images empty": _structural("is empty", _set("images", []), item="'images'"),
    "instances_train.json missing": _missing_split_file("train"),
    "image folder missing": _images_folder_gone,
    # image entries: skippable, the image and its annotations are dropped
    "image id text": _bad_image_entry(
        "malformed image entry", "expected an integer", _set("id", "abc"), unknown=True
    ),
    "image id 1e400": _bad_image_entry(
        "malformed image entry", "expected an integer", _set("id", "@inf"), {"@inf": "1e400"}, unknown=True
    ),
    "image entry not an object": _bad_image_entry(
        "malformed image entry", "expected an object", lambda e: "000002.png", unknown=True
    ),
    "image width zero": _bad_image_entry("malformed image entry", "width", _set("width", 0)),
    "image width fraction": _bad_image_entry("malformed image entry", "width", _set("width", 64.5)),
    "image width bool": _bad_image_entry("malformed image entry", "width", _set("width", True)),
    "image height huge int": _bad_image_entry(
        "malformed image entry", "height", _set("height", "@big"), {"@big": BIG}
    ),
    "image file_name missing": _bad_image_entry("malformed image entry", "file_name", _delete("file_name")),
    "image file_name number": _bad_image_entry("malformed image entry", "file_name", _set("file_name", 7)),
    "image size mismatch": _bad_image_entry("image size mismatch", "JSON says 65x64", _set("width", 65)),
    "image file_name absolute": _outside("absolute"),
    "image file_name ..": _outside("dotdot"),
    "image missing": _image_fault("missing image", "not found", _missing),
    "image truncated png": _image_fault("corrupt image", "corrupt", _truncate),
    "image not an image": _image_fault("corrupt image", "corrupt", _garbage),
    "image decompression bomb": _image_fault("image too large", "MAX_IMAGE_PIXELS", _bomb),
    "image truncated jpeg": _image_fault("corrupt image", "truncated", _truncated_jpeg),
    # annotations: skippable, one object lost
    "bbox NaN": _bad_annotation("non-finite box", "non-finite", _set_bbox(0, float("nan"))),
    "bbox 1e400": _bad_annotation("non-finite box", "non-finite", _set_bbox(2, "@inf"), {"@inf": "1e400"}),
    "bbox huge int": _bad_annotation(
        "malformed annotation", "too large", _set_bbox(1, "@big"), {"@big": BIG}
    ),
    "bbox null": _bad_annotation("malformed annotation", "bbox", _set("bbox", None)),
    "bbox missing": _bad_annotation("malformed annotation", "bbox", _delete("bbox")),
    "bbox words": _bad_annotation("malformed annotation", "bbox", _set("bbox", ["a", "b", "c", "d"])),
    "bbox bool": _bad_annotation("malformed annotation", "bbox", _set_bbox(0, True)),
    "bbox 5 numbers": _bad_annotation("malformed annotation", "bbox", _set("bbox", [1, 2, 3, 4, 5])),
    "bbox negative width": _bad_annotation("non-positive size", "non-positive", _set_bbox(2, -3.0)),
    "bbox outside image": _bad_annotation("box outside image", "outside", _set("bbox", [60, 0, 30, 10])),
    "category_id unknown": _bad_annotation(
        "unknown class", "unknown category_id 99", _set("category_id", 99)
    ),
    "category_id fraction": _bad_annotation("malformed annotation", "category_id", _set("category_id", 1.5)),
    "category_id 1e400": _bad_annotation(
        "malformed annotation", "category_id", _set("category_id", "@inf"), {"@inf": "1e400"}
    ),
    "category_id null": _bad_annotation("malformed annotation", "category_id", _set("category_id", None)),
    "image_id unknown": _bad_annotation("unknown image", "unknown image_id 777", _set("image_id", 777)),
    "image_id missing": _bad_annotation("malformed annotation", "image_id", _delete("image_id")),
    "image_id negative": _bad_annotation("malformed annotation", "image_id", _set("image_id", -1)),
    "iscrowd yes": _bad_annotation("malformed annotation", "iscrowd", _set("iscrowd", "yes")),
    "iscrowd 2": _bad_annotation("malformed annotation", "iscrowd", _set("iscrowd", 2)),
    "iscrowd null": _bad_annotation("malformed annotation", "iscrowd", _set("iscrowd", None)),
    "annotation not an object": _bad_ann_entry([1, 2], "expected an object"),
    "annotation id fraction": _bad_ann_entry({"id": 1.5}, "id: expected an integer"),
}


# ---------------------------------------------------------------------------------------------- YOLO helpers


def _label(root: Path, index: int = 0, split: str = "train") -> Path:
    return root / "labels" / split / f"{index:06d}.txt"


def _bad_line(reason: str, text: str, line: str) -> Callable[[Path], Expect]:
    """``line`` inserted as line 2 of the first label file: one counted skip, nothing lost."""

    def mutate(root):
        lbl = _label(root)
        lines = lbl.read_text().splitlines()
        lbl.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
        return Expect(lbl, f"{lbl}:2", text, {reason: 1})

    return mutate


def _rows(path: Path) -> int:
    return len([x for x in path.read_text().splitlines() if x.strip()])


def _bad_label_file(text: str, damage) -> Callable[[Path], Expect]:
    """The label file of image 2 damaged: the image is skipped with all its objects."""

    def mutate(root):
        lbl = _label(root, 2)
        n = _rows(lbl)
        item = damage(lbl) or str(lbl)
        return Expect(lbl, item, text, {"unreadable label file": 1}, lost=n, records_lost=1)

    return mutate


def _latin1_line2(lbl: Path) -> str:
    lines = lbl.read_bytes().splitlines()
    lbl.write_bytes(b"\n".join([lines[0], b"1 0.5 0.5 0.2 0.2 # caf\xe9", *lines[1:]]) + b"\n")
    return f"{lbl}:2"


def _label_dir(lbl: Path) -> None:
    lbl.unlink()
    lbl.mkdir()


def _yaml_fault(text: str, content: str | bytes, item: str = "") -> Callable[[Path], Expect]:
    """data.yaml replaced by ``content`` (``{root}``, ``{elsewhere}`` are filled in); an ``item`` starting with
    ":" is a line of the yaml."""

    def mutate(root):
        elsewhere = root.parent / "elsewhere"
        (elsewhere / "images" / "train").mkdir(parents=True, exist_ok=True)
        path = root / "data.yaml"
        if isinstance(content, str):
            _write(path, content.format(root=root, elsewhere=elsewhere))
        else:
            _write(path, content)
        return Expect(path, f"{path}{item}" if item.startswith(":") else item or str(path), text)

    return mutate


NAMES = "names: [disc, square, triangle, ring, cross, star]\n"


def _yolo_structural(text: str, damage) -> Callable[[Path], Expect]:
    def mutate(root):
        shown, item = damage(root)
        return Expect(shown, item, text)

    return mutate


def _labels_gone(root):
    shutil.rmtree(root / "labels")
    return root / "data.yaml", str(_label(root))


def _labels_empty(root):
    for p in (root / "labels" / "train").glob("*.txt"):
        p.write_text("")
    return root / "data.yaml", "no objects"


def _listed_twice(root):
    lst = root / "train.txt"
    names = [f"images/train/{p.name}" for p in sorted((root / "images" / "train").glob("*.png"))]
    lst.write_text("\n".join([*names, names[1]]) + "\n")
    (root / "data.yaml").write_text(f"train: train.txt\nval: images/val\n{NAMES}")
    return lst, f"{lst}:{len(names) + 1}"


def _shared_label(root):
    img = _image_file(root, 1)
    Image.open(img).save(img.with_suffix(".jpg"), quality=90)
    return _label(root, 1), "label file shared"


def _image_and_label(reason: str, text: str, damage) -> Callable[[Path], Expect]:
    def mutate(root):
        img, lbl = _image_file(root), _label(root, 2)
        n = _rows(lbl)
        damage(img, root)
        return Expect(img, str(img), text, {reason: 1}, lost=n, records_lost=1)

    return mutate


def _list_outside(root: Path) -> Expect:
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    outside = shutil.copy(_image_file(root, 5), elsewhere / "x.png")
    lst = root / "train.txt"
    names = [f"images/train/{p.name}" for p in sorted((root / "images" / "train").glob("*.png"))]
    lst.write_text("\n".join([*names, str(outside)]) + "\n")
    (root / "data.yaml").write_text(f"train: train.txt\nval: images/val\n{NAMES}")
    return Expect(lst, f"{lst}:{len(names) + 1}", "allow_outside_root=True", {"path outside root": 1})


def _orphan(root: Path) -> Expect:
    img, lbl = _image_file(root), _label(root, 2)
    n = _rows(lbl)
    img.unlink()
    return Expect(lbl, str(lbl), "without an image", {"label without image": 1}, lost=n, records_lost=1)


YOLO_FAULTS = {
    "line with 4 fields": _bad_line("malformed line", "expected 5 fields", "0 0.5 0.5 0.2"),
    "line with 6 fields": _bad_line("malformed line", "got 6", "0 0.5 0.5 0.2 0.2 0.9"),
    "line with 8 fields": _bad_line("malformed line", "got 8", "0 0.1 0.1 0.2 0.1 0.2 0.2 0.1"),
    "comment line": _bad_line("malformed line", "got 3", "# a comment"),
    "class 1.5": _bad_line("malformed line", "integer index", "1.5 0.5 0.5 0.2 0.2"),
    "class inf": _bad_line("malformed line", "integer index", "inf 0.5 0.5 0.2 0.2"),
    "class nan": _bad_line("malformed line", "integer index", "nan 0.5 0.5 0.2 0.2"),
    "class word": _bad_line("malformed line", "could not convert", "disc 0.5 0.5 0.2 0.2"),
    "class -1": _bad_line("unknown class", "unknown class -1", "-1 0.5 0.5 0.2 0.2"),
    "class 6 of 6": _bad_line("unknown class", "unknown class 6", "6 0.5 0.5 0.2 0.2"),
    "class 1e400": _bad_line("malformed line", "integer index", "1e400 0.5 0.5 0.2 0.2"),
    "cx nan": _bad_line("non-finite box", "non-finite", "1 nan 0.5 0.2 0.2"),
    "w 1e400": _bad_line("non-finite box", "non-finite", "1 0.5 0.5 1e400 0.2"),
    "coordinate word": _bad_line("malformed line", "could not convert", "1 0.5 half 0.2 0.2"),
    "negative size": _bad_line("non-positive size", "non-positive", "1 0.5 0.5 -0.1 0.2"),
    "box outside": _bad_line("box outside image", "outside", "1 0.95 0.5 0.3 0.2"),
    "polygon nan": _bad_line("non-finite box", "non-finite", "1 0.1 0.1 nan 0.1 0.2 0.2"),
    "polygon outside": _bad_line("box outside image", "outside", "1 0.1 0.1 1.5 0.1 0.2 0.2"),
    "polygon degenerate": _bad_line("non-positive size", "non-positive", "1 0.1 0.1 0.1 0.1 0.1 0.1"),
    "label not utf-8": _bad_label_file("not UTF-8", _latin1_line2),
    "label is a folder": _bad_label_file("expected a regular file as label file, got a folder", _label_dir),
    "image truncated": _image_and_label("corrupt image", "corrupt", _truncate),
    "image not an image": _image_and_label("corrupt image", "corrupt", _garbage),
    "image decompression bomb": _image_and_label("image too large", "MAX_IMAGE_PIXELS", _bomb),
    "image deleted, label left": _orphan,
    "listed image outside root": _list_outside,
    "labels folder missing": _yolo_structural("no label files found", _labels_gone),
    "label files all empty": _yolo_structural("allow_empty=True", _labels_empty),
    "image listed twice": _yolo_structural("listed twice", _listed_twice),
    "two images one label": _yolo_structural("rename one", _shared_label),
    "yaml not utf-8": _yaml_fault(
        "not UTF-8", b"train: images/tr\xe4in\nval: images/val\n" + NAMES.encode(), ":1"
    ),
    "yaml invalid": _yaml_fault("not valid YAML", "train: [images/train\nval: images/val\n" + NAMES, ":2"),
    "yaml a list": _yaml_fault("expected keys", "- train\n- val\n"),
    "yaml names missing": _yaml_fault("expected keys", "train: images/train\nval: images/val\n"),
    "yaml names a number": _yaml_fault("list or a dict", "train: images/train\nval: images/val\nnames: 6\n"),
    "yaml names empty": _yaml_fault("'names' is empty", "train: images/train\nval: images/val\nnames: []\n"),
    "yaml names with a gap": _yaml_fault(
        "indexed 0..1", "train: images/train\nval: images/val\nnames: {{0: a, 2: b}}\n"
    ),
    "yaml nc mismatch": _yaml_fault("'nc' is 3", "train: images/train\nval: images/val\nnc: 3\n" + NAMES),
    "yaml train a list": _yaml_fault(
        "lists of image folders", "train: [images/train]\nval: images/val\n" + NAMES
    ),
    "yaml train missing value": _yaml_fault("'train' must be", "train:\nval: images/val\n" + NAMES),
    "yaml path absolute elsewhere": _yaml_fault(
        "allow_outside_root=True",
        "path: {elsewhere}\ntrain: images/train\nval: images/val\n" + NAMES,
        "'path'",
    ),
    "yaml path ..": _yaml_fault(
        "allow_outside_root=True", "path: ..\ntrain: ds/images/train\nval: ds/images/val\n" + NAMES, "'path'"
    ),
    "yaml path missing folder": _yaml_fault(
        "is not a folder", "path: moved\ntrain: images/train\nval: images/val\n" + NAMES, "'path'"
    ),
    "yaml train ..": _yaml_fault(
        "allow_outside_root=True", "train: ../elsewhere/images/train\nval: images/val\n" + NAMES, "'train'"
    ),
    "yaml train absolute elsewhere": _yaml_fault(
        "allow_outside_root=True", "train: {elsewhere}/images/train\nval: images/val\n" + NAMES, "'train'"
    ),
}


def _layout_val_json_missing(root: Path) -> Expect:
    _json_path(root, "val").unlink()  # data.yaml and labels/ are still there: no silent switch to YOLO
    return Expect(_json_path(root, "val"), "instances_train.json is there", "data.yaml is not used")


FAULTS: dict[str, Fault] = {
    **{f"coco: {k}": Fault(m) for k, m in COCO_FAULTS.items()},
    **{f"yolo: {k}": Fault(m, "yolo") for k, m in YOLO_FAULTS.items()},
    "layout: instances_val.json missing": Fault(_layout_val_json_missing, "coco", "val"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault(ds, clean, name):
    fault = FAULTS[name]
    expect = fault.mutate(ds)
    data, err = _read(ds, fault)
    assert err is not None, (
        f"{name}: read without error ({data.skipped.summary()}, {data.num_objects} objects)"
    )
    msg = str(err)
    for part in (str(expect.file), expect.item, expect.text):
        assert part in msg, f"{name}: {part!r} not in the message:\n{msg}"
    data, err = _read(ds, fault, skip_bad=True)
    if expect.skip is None:
        assert err is not None, f"{name}: a structural fault was skipped ({data.skipped.summary()})"
        assert str(expect.file) in str(err) or str(ds) in str(err), str(err)
        return
    assert err is None, f"{name}: skip_bad=True still raised: {err}"
    ref = clean[(fault.layout, fault.split)]
    assert data.skipped.counts == expect.skip, (name, data.skipped.counts)
    assert data.num_objects == ref.num_objects - expect.lost, (name, data.num_objects, ref.num_objects)
    assert len(data.records) == len(ref.records) - expect.records_lost, name
    assert data.skipped.messages and str(expect.file) in data.skipped.messages[0]
    dataset = DetectionDataset(data, 32)
    for i in range(len(dataset)):  # everything kept is really readable
        img, target, _ = dataset[i]
        assert img.shape == (3, 32, 32) and len(target["boxes"]) == len(data.records[i].labels)


# ---------------------------------------------------------------------------------------- accepted artefacts


def _coco_edit(fn) -> Callable[[Path], None]:
    def mutate(root):
        _edit(root, fn)

    return mutate


def _float_ids(coco):
    for section in ("images", "annotations", "categories"):
        for e in coco[section]:
            e["id"] = float(e["id"])
    for a in coco["annotations"]:
        a["image_id"], a["category_id"] = float(a["image_id"]), float(a["category_id"])


def _string_ids(coco):
    for section in ("images", "annotations", "categories"):
        for e in coco[section]:
            e["id"] = str(e["id"])
    for a in coco["annotations"]:
        a["image_id"], a["category_id"] = str(a["image_id"]), str(a["category_id"])


def _string_bbox(coco):
    for a in coco["annotations"]:
        a["bbox"] = [str(v) for v in a["bbox"]]


def _export_extras(coco):
    """What CVAT, Label Studio and Roboflow add: info, licenses, attributes, segmentation lists and RLE."""
    coco["info"] = {"description": "export", "year": 2024}
    coco["licenses"] = [{"id": 0, "name": "", "url": ""}]
    for k, a in enumerate(coco["annotations"]):
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h]] if k % 2 else {"counts": "abc", "size": [64, 64]}
        a["attributes"] = {"occluded": False}
        a["iscrowd"] = ["0", False, 0.0, 0][k % 4]
    for im in coco["images"]:
        im.update(license=0, coco_url="", date_captured=0, flickr_url="")


def _no_ann_ids(coco):
    for a in coco["annotations"]:
        del a["id"]


def _bom_crlf_json(root):
    path = _json_path(root)
    text = json.dumps(json.loads(path.read_text()), indent=2).replace("\n", "\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())


def _yolo_rewrite(row) -> Callable[[Path], None]:
    """Every label row rewritten by ``row(fields) -> str``; files get a BOM and CRLF line ends."""

    def mutate(root):
        for p in (root / "labels" / "train").glob("*.txt"):
            rows = [row(line.split()) for line in p.read_text().splitlines() if line.strip()]
            p.write_bytes(b"\xef\xbb\xbf" + "".join(r + "\r\n" for r in rows).encode())

    return mutate


def _as_polygon(f):
    c, cx, cy, w, h = f[0], *map(float, f[1:])
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    return f"{c} " + " ".join(f"{v:.6f}" for v in (x1, y1, x2, y1, x2, y2, x1, y2))


def _yaml_bom_crlf(root):
    path = root / "data.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())


def _yaml_path_self(root):
    path = root / "data.yaml"
    path.write_text(f"path: {root}\n" + path.read_text())  # as Ultralytics' and qfocal's toy writers do


def _list_inside(root):
    lst = root / "train.txt"
    files = sorted((root / "images" / "train").glob("*.png"))
    lst.write_text("".join(f"./images/train/{p.name}\n" if i % 2 else f"{p}\n" for i, p in enumerate(files)))
    (root / "data.yaml").write_text(f"train: train.txt\nval: images/val\n{NAMES}")


def _classes_txt(root):
    (root / "labels" / "train" / "classes.txt").write_text("\n".join(["disc", "square"]) + "\n")


def _yolo_only(root):
    shutil.rmtree(root / "annotations")


def _coco_only(root):
    (root / "data.yaml").unlink()
    shutil.rmtree(root / "labels")


ACCEPTED = {  # name: (mutation, read through "folder" or "yaml", the clean read to compare with)
    "coco: BOM and CRLF": (_bom_crlf_json, "folder", "coco"),
    "coco: float ids 1.0": (_coco_edit(_float_ids), "folder", "coco"),
    "coco: string ids": (_coco_edit(_string_ids), "folder", "coco"),
    "coco: bbox as strings": (_coco_edit(_string_bbox), "folder", "coco"),
    "coco: export extras and iscrowd spellings": (_coco_edit(_export_extras), "folder", "coco"),
    "coco: annotations without id": (_coco_edit(_no_ann_ids), "folder", "coco"),
    "coco: COCO-only folder": (_coco_only, "folder", "coco"),
    "yolo: BOM, CRLF, tabs, trailing spaces, blank lines": (
        _yolo_rewrite(lambda f: "\t".join(f) + "   \r\n"),
        "yaml",
        "yolo",
    ),
    "yolo: class 1.0 and exponents": (
        _yolo_rewrite(lambda f: f"{float(f[0]):.1f} " + " ".join(f"{float(v):.8e}" for v in f[1:])),
        "yaml",
        "yolo",
    ),
    "yolo: polygon rows": (_yolo_rewrite(_as_polygon), "yaml", "yolo"),
    "yolo: yaml BOM and CRLF": (_yaml_bom_crlf, "yaml", "yolo"),
    "yolo: yaml path is its own folder": (_yaml_path_self, "yaml", "yolo"),
    "yolo: image list with ./ and absolute paths inside": (_list_inside, "yaml", "yolo"),
    "yolo: LabelImg classes.txt": (_classes_txt, "yaml", "yolo"),
    "yolo: YOLO-only folder": (_yolo_only, "folder", "yolo"),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_export(ds, clean, name):
    mutate, via, ref_layout = ACCEPTED[name]
    mutate(ds)
    data, err = _read(ds, Fault(mutate, "yolo" if via == "yaml" else "coco"))
    assert err is None, f"{name}: {err}"
    ref = clean[(ref_layout, "train")]
    assert data.skipped.total == 0, data.skipped.summary()
    assert [r.path.name for r in data.records] == [r.path.name for r in ref.records]
    for a, b in zip(data.records, ref.records, strict=True):
        assert a.labels.tolist() == b.labels.tolist(), (name, a.path)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, err_msg=f"{name}: {a.path}")


def test_allow_outside_root(ds, clean):
    """The opt-in reads what the faults above refuse: an absolute file_name, a yaml root elsewhere."""
    elsewhere = ds.parent / "elsewhere"
    elsewhere.mkdir()
    outside = shutil.copy(_image_file(ds), elsewhere)
    _edit(ds, lambda c: c["images"][2].update(file_name=str(outside)))
    data = load_split(ds, "train", allow_outside_root=True)
    assert data.num_objects == clean[("coco", "train")].num_objects
    assert data.records[2].path == Path(outside)
    for part in ("images", "labels"):
        shutil.copytree(ds / part, elsewhere / part)
    (ds / "data.yaml").write_text(f"path: {elsewhere}\ntrain: images/train\nval: images/val\n{NAMES}")
    data = load_split(ds / "data.yaml", "val", allow_outside_root=True)
    assert data.num_objects == clean[("yolo", "val")].num_objects
    assert all(r.path.is_relative_to(elsewhere) for r in data.records)


def test_allow_empty(ds, clean):
    """A split without objects is an error unless asked for (a negative-only evaluation set)."""
    _edit(ds, _set("annotations", []))
    data = load_split(ds, "train", allow_empty=True)
    assert data.num_objects == 0 and len(data.records) == len(clean[("coco", "train")].records)
    shutil.rmtree(ds / "labels")
    data = load_split(ds / "data.yaml", "val", allow_empty=True)
    assert data.num_objects == 0 and len(data.records) == len(clean[("yolo", "val")].records)


def test_image_damaged_after_reading(ds):
    """An image that breaks between reading and training is an AnnotationError naming it, not a PIL error."""
    data = load_split(ds, "train")
    data.records[1].path.write_bytes(b"gone")
    with pytest.raises(AnnotationError, match=str(data.records[1].path)):
        DetectionDataset(data, 32)[1]


ODD_VALUES = [
    None,
    "x",
    "",
    [],
    {},
    [1],
    1e308,
    float("inf"),
    float("nan"),
    -1,
    True,
    1.5,
    10**30,
    " 1 ",
    "../x",
]


@pytest.mark.parametrize("section", ["images", "annotations", "categories"])
def test_odd_value_in_any_field_never_escapes(ds, section):
    """Every field of an entry (and an extra one) set to each odd JSON value: a read or an AnnotationError."""
    path = _json_path(ds)
    original = path.read_text()
    coco = json.loads(original)
    fault = Fault(lambda r: None)
    for key in [*coco[section][1], "extra"]:
        for value in ODD_VALUES:
            edited = json.loads(original)
            edited[section][1][key] = value
            path.write_text(json.dumps(edited))
            for skip_bad in (False, True):
                data, err = _read(ds, fault, skip_bad=skip_bad)  # fails on any other exception
                assert (data is None) != (err is None), (section, key, value)
