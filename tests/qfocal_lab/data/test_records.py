"""Every kind of bad annotation stops the COCO and YOLO readers with a message naming the file and the item,
unless skip_bad is set, in which case the item is skipped and counted."""

from __future__ import annotations

import json
import shutil

import pytest

from qfocal_lab.data import AnnotationError, load_split, read_coco, read_yolo


def _coco(root):
    path = root / "annotations" / "instances_train.json"
    return path, json.loads(path.read_text())


COCO_CASES = {
    "box outside image": (lambda a: a.update(bbox=[50.0, 50.0, 30.0, 10.0]), "outside the 64x64 image"),
    "non-positive size": (lambda a: a.update(bbox=[5.0, 5.0, 0.0, 10.0]), "non-positive size"),
    "unknown class": (lambda a: a.update(category_id=99), "unknown category_id 99"),
    "malformed annotation": (lambda a: a.update(bbox=[1.0, 2.0]), "malformed"),
}


@pytest.mark.parametrize("reason", list(COCO_CASES))
def test_coco_bad_annotation(ds, reason):
    path, coco = _coco(ds)
    edit, text = COCO_CASES[reason]
    ann = coco["annotations"][1]
    edit(ann)
    path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError) as err:
        read_coco(path, ds / "images" / "train")
    msg = str(err.value)
    assert str(path) in msg and f"annotation id {ann['id']}" in msg and text in msg, msg
    data = read_coco(path, ds / "images" / "train", skip_bad=True)
    assert data.skipped.counts == {reason: 1}, data.skipped.counts
    assert sum(len(r.labels) for r in data.records) == len(coco["annotations"]) - 1
    assert "skipped 1 bad item(s)" in data.skipped.summary()


def test_coco_unknown_image_id(ds):
    path, coco = _coco(ds)
    coco["annotations"][0]["image_id"] = 777
    path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match="unknown image_id 777"):
        read_coco(path, ds / "images" / "train")


@pytest.mark.parametrize("kind", ["missing image", "corrupt image"])
def test_coco_missing_or_corrupt_image(ds, kind):
    path, coco = _coco(ds)
    img = ds / "images" / "train" / coco["images"][2]["file_name"]
    if kind == "missing image":
        img.unlink()
    else:
        img.write_bytes(img.read_bytes()[:60])  # truncated PNG
    with pytest.raises(AnnotationError) as err:
        read_coco(path, ds / "images" / "train")
    assert str(img) in str(err.value) and "image id 3" in str(err.value), str(err.value)
    data = read_coco(path, ds / "images" / "train", skip_bad=True)
    assert data.skipped.counts == {kind: 1}
    assert len(data.records) == len(coco["images"]) - 1
    assert 3 not in [r.image_id for r in data.records]


def test_coco_not_json(ds):
    path, _ = _coco(ds)
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        read_coco(path, ds / "images" / "train")


def _first_label(root):
    return next(p for p in sorted((root / "labels" / "train").glob("*.txt")) if p.read_text().strip())


YOLO_CASES = {
    "malformed line": ("0 0.5 0.5 0.2", "expected 5 fields"),
    "unknown class": ("9 0.5 0.5 0.2 0.2", "unknown class 9"),
    "non-positive size": ("1 0.5 0.5 -0.1 0.2", "non-positive size"),
    "box outside image": ("1 0.95 0.5 0.3 0.2", "outside the 64x64 image"),
}


@pytest.mark.parametrize("reason", list(YOLO_CASES))
def test_yolo_bad_line(ds, reason):
    label = _first_label(ds)
    line, text = YOLO_CASES[reason]
    lines = label.read_text().splitlines()
    label.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(AnnotationError) as err:
        load_split(ds / "data.yaml", "train")
    assert f"{label}:2" in str(err.value) and text in str(err.value), str(err.value)
    data = load_split(ds / "data.yaml", "train", skip_bad=True)
    assert data.skipped.counts == {reason: 1}
    assert (
        sum(len(r.labels) for r in data.records)
        == sum(len(p.read_text().splitlines()) for p in (ds / "labels" / "train").glob("*.txt")) - 1
    )


def test_yolo_non_numeric_field(ds):
    label = _first_label(ds)
    label.write_text("0 0.5 zero 0.2 0.2\n")
    with pytest.raises(AnnotationError, match=f"{label}:1: malformed line"):
        read_yolo(ds / "images" / "train", ["a", "b", "c", "d", "e", "f"])


@pytest.mark.parametrize("kind", ["missing image", "corrupt image"])
def test_yolo_missing_or_corrupt_image(ds, kind):
    img = sorted((ds / "images" / "train").glob("*.png"))[1]
    lst = ds / "train.txt"
    lst.write_text(
        "\n".join(f"images/train/{p.name}" for p in sorted((ds / "images" / "train").glob("*.png")))
    )
    if kind == "missing image":
        img.unlink()
    else:
        img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(AnnotationError) as err:
        read_yolo(lst, ["a", "b", "c", "d", "e", "f"])
    assert str(img) in str(err.value)
    data = read_yolo(lst, ["a", "b", "c", "d", "e", "f"], skip_bad=True)
    assert data.skipped.counts == {kind: 1}
    assert img not in [r.path for r in data.records]


def test_training_reports_skipped_items(ds, capsys):
    from qfocal_lab.detection.train import TrainConfig, prepare_data

    path, coco = _coco(ds)
    coco["annotations"][0]["bbox"] = [0.0, 0.0, -1.0, 3.0]
    path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match="--skip-bad"):
        prepare_data(TrainConfig(data=str(ds)))
    logged = []
    train, _ = prepare_data(TrainConfig(data=str(ds), skip_bad=True), log=logged.append)
    assert train.skipped.total == 1
    assert any("skipped 1 bad item(s): 1 non-positive size" in m for m in logged), logged


def test_coco_duplicate_image_id_is_an_error_not_a_dangling_annotation(ds):
    """Two images sharing an id used to put boxes on the wrong image silently; it cannot be skipped."""
    path, coco = _coco(ds)
    coco["images"][1]["id"] = coco["images"][0]["id"]
    path.write_text(json.dumps(coco))
    for skip_bad in (False, True):
        with pytest.raises(AnnotationError, match=r"duplicate image id 1: images\[0\].*images\[1\]") as err:
            read_coco(path, ds / "images" / "train", skip_bad=skip_bad)
        assert "unknown image_id" not in str(err.value)


def test_coco_skipped_image_reports_its_annotations(ds):
    path, coco = _coco(ds)
    (ds / "images" / "train" / coco["images"][2]["file_name"]).unlink()
    n = sum(a["image_id"] == 3 for a in coco["annotations"])
    data = read_coco(path, ds / "images" / "train", skip_bad=True)
    assert data.skipped.dropped == n
    assert f"{n} annotation(s) dropped along with skipped images" in data.skipped.summary()


@pytest.mark.parametrize(("value", "kept"), [("0", True), (False, True), (0.0, True), ("1", False)])
def test_coco_iscrowd_spellings(ds, value, kept):
    """iscrowd "0"/"1" (a string) used to drop every annotation; now it is read as the flag it spells."""
    path, coco = _coco(ds)
    for a in coco["annotations"]:
        a["iscrowd"] = value
    coco["annotations"][0]["iscrowd"] = 0
    path.write_text(json.dumps(coco))
    data = read_coco(path, ds / "images" / "train")
    assert data.num_objects == (len(coco["annotations"]) if kept else 1)


def test_coco_iscrowd_other_values_are_errors(ds):
    path, coco = _coco(ds)
    coco["annotations"][1]["iscrowd"] = "no"
    path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match=f"annotation id {coco['annotations'][1]['id']}: .*iscrowd"):
        read_coco(path, ds / "images" / "train")


def test_folder_missing_val_json_does_not_fall_back_to_yolo(ds):
    """The folder has data.yaml and labels too: reading them for val only would mix two annotation sources."""
    (ds / "annotations" / "instances_val.json").unlink()
    assert load_split(ds, "train").source.endswith("instances_train.json")
    with pytest.raises(AnnotationError, match=r"instances_val\.json: not found"):
        load_split(ds, "val")
    shutil.rmtree(ds / "annotations")  # YOLO throughout: the yaml is used
    assert load_split(ds, "val").source.endswith("data.yaml [val]")


@pytest.mark.parametrize(
    ("cls", "error"), [("1.0", None), ("1.5", "integer index"), ("inf", "integer index")]
)
def test_yolo_class_spellings(ds, cls, error):
    """Labelling tools write "1.0"; "1.5" and "inf" used to escape as OverflowError / ValueError."""
    label = _first_label(ds)
    label.write_text(f"{cls} 0.5 0.5 0.2 0.2\n")
    if error is None:
        data = read_yolo(ds / "images" / "train", ["a", "b", "c", "d", "e", "f"])
        assert [1] in [r.labels.tolist() for r in data.records]
    else:
        with pytest.raises(AnnotationError, match=f"{label}:1: malformed line .*{error}"):
            read_yolo(ds / "images" / "train", ["a", "b", "c", "d", "e", "f"])


def test_yolo_missing_labels_folder_is_an_error(ds):
    shutil.rmtree(ds / "labels")
    with pytest.raises(AnnotationError, match=r"no objects in .*no label files found"):
        load_split(ds / "data.yaml", "train", skip_bad=True)
