"""Inputs that used to be read silently wrong or to hang: special files (FIFOs, /dev/zero) as labels,
annotations or images; 16-bit, float and EXIF-rotated images; duplicate class names; COCO crowd regions in the
evaluation (checked against pycocotools' COCOeval on the same file)."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from qfocal_lab.data import AnnotationError, generate_dataset, load_split, read_coco, read_yolo
from qfocal_lab.data.dataset import DetectionDataset
from qfocal_lab.data.records import check_image, load_rgb

NAMES = ["disc", "square", "triangle", "ring", "cross", "star"]


def _within(seconds: float, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a daemon thread; fails the test (instead of hanging it) past ``seconds``."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _special(path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_label_file_is_refused_or_skipped_never_read(ds, kind):
    label = sorted((ds / "labels" / "train").glob("*.txt"))[0]
    _special(label, kind)
    with pytest.raises(AnnotationError, match=rf"{label}: expected a regular file as label file, got a "):
        _within(20, load_split, ds / "data.yaml", "train")
    data = _within(20, load_split, ds / "data.yaml", "train", skip_bad=True)
    assert data.skipped.counts == {"unreadable label file": 1}
    assert label.with_suffix(".png").name not in [r.path.name for r in data.records]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_image_file_is_refused_or_skipped(ds, kind):
    image = sorted((ds / "images" / "train").glob("*.png"))[0]
    _special(image, kind)
    for read in (
        lambda **k: load_split(ds / "data.yaml", "train", **k),
        lambda **k: load_split(ds, "train", **k),
    ):
        with pytest.raises(AnnotationError, match=r"expected a regular file as image, got a "):
            _within(20, read)
        data = _within(20, read, skip_bad=True)
        assert data.skipped.counts == {"not a regular file": 1}
    with pytest.raises(AnnotationError, match="expected a regular file"):
        _within(20, load_rgb, image)


@pytest.mark.parametrize("what", ["annotations", "yaml", "image list"])
def test_special_annotation_yaml_or_list_file_is_refused(ds, what):
    if what == "annotations":
        path = ds / "annotations" / "instances_train.json"
        _special(path, "fifo")
        read = lambda: load_split(ds, "train", skip_bad=True)  # noqa: E731
    elif what == "yaml":
        path = ds / "data.yaml"
        _special(path, "dev-zero")
        read = lambda: load_split(path, "train", skip_bad=True)  # noqa: E731
    else:
        path = ds / "train.txt"
        _special(path, "fifo")
        read = lambda: read_yolo(path, NAMES, skip_bad=True)  # noqa: E731
    with pytest.raises(AnnotationError, match=rf"{path}: expected a regular file as .*, got a "):
        _within(20, read)


# Images the loader used to read wrong: the pixel each should give at (row 1, column 0), and its displayed size.
def _gradient16(path):
    arr = np.zeros((8, 12), dtype=np.uint16)
    arr[1, 0] = 32768  # half of 16 bits: 128 in 8 bits, not white
    Image.fromarray(arr).save(path)


def _float_unit(path):
    arr = np.zeros((8, 12), dtype=np.float32)
    arr[1, 0] = 0.5
    Image.fromarray(arr, "F").save(path)


def _float_wide(path):
    arr = np.full((8, 12), -100.0, dtype=np.float32)
    arr[1, 0] = 0.0  # halfway between -100 and 100
    arr[0, 0] = 100.0
    Image.fromarray(arr, "F").save(path)


@pytest.mark.parametrize(
    ("name", "make", "pixel"),
    [("a16.png", _gradient16, 128), ("f01.tif", _float_unit, 128), ("fwide.tiff", _float_wide, 128)],
)
def test_16bit_and_float_images_are_scaled_not_white(tmp_path, name, make, pixel):
    path = tmp_path / name
    make(path)
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (8, 12, 3) and rgb.dtype == np.uint8
    assert abs(int(rgb[1, 0, 0]) - pixel) <= 1, rgb[1, 0]
    assert rgb.mean() < 200, "the image loaded (almost) white"
    assert check_image(path) == (12, 8)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_image_is_loaded_as_displayed(tmp_path, suffix, orientation):
    """A YOLO label made on the displayed (rotated) image lands on the object the model sees."""
    stored = np.zeros((40, 60, 3), dtype=np.uint8)  # stored 60 wide x 40 high
    stored[2:10, 4:20] = 255  # a white block near the stored top-left corner
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    path = root / "images" / f"a{suffix}"
    im.save(path, exif=exif.tobytes(), **({"quality": 100} if suffix == ".jpg" else {}))
    from PIL import ImageOps

    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)))  # what a labelling tool displays
    ys, xs = np.nonzero(shown[..., 0] > 128)
    h, w = shown.shape[:2]
    cx, cy = (xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h
    bw, bh = (xs.max() + 1 - xs.min()) / w, (ys.max() + 1 - ys.min()) / h
    (root / "labels" / "a.txt").write_text(f"0 {cx} {cy} {bw} {bh}\n")
    data = read_yolo(root / "images", ["block"])
    rec = data.records[0]
    assert (rec.width, rec.height) == (w, h) == ((40, 60) if orientation in (6, 8) else (60, 40))
    img, target, _ = DetectionDataset(data, 64)[0]
    x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
    inside = img[0, y1:y2, x1:x2].mean().item()
    outside = (img[0].sum() - img[0, y1:y2, x1:x2].sum()).item() / (img[0].numel() - (y2 - y1) * (x2 - x1))
    assert inside > 0.8 and outside < 0.1, (inside, outside)


def test_duplicate_class_names_are_refused(ds):
    path = ds / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    coco["categories"][1]["name"] = coco["categories"][0]["name"]
    path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match=r"expected distinct category names, got 'disc'"):
        read_coco(path, ds / "images" / "train")
    yaml = ds / "data.yaml"
    yaml.write_text(yaml.read_text().replace("1: square", "1: disc"))
    with pytest.raises(
        AnnotationError, match=r"data.yaml: expected distinct class names in 'names', got 'disc'"
    ):
        load_split(yaml, "train")
    with pytest.raises(AnnotationError, match=r"expected distinct class names, got 'a'"):
        read_yolo(ds / "images" / "train", ["a", "b", "a "])


def _crowd_case(tmp_path):
    """Two images: one object each; image 2 also has a crowd region, with a detection on it."""
    root = tmp_path / "crowd"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(root / "images" / name)
    gt = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 100, "height": 100},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = root / "instances.json"
    ann.write_text(json.dumps(gt))
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.5},
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.4},
        # on the crowd region, scored above the true positives: a false positive if the crowd were dropped
        {"image_id": 2, "category_id": 1, "bbox": [55, 55, 20, 20], "score": 0.9},
    ]
    return root, ann, dets


def test_crowd_regions_are_evaluated_as_cocoeval_does(tmp_path):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from qfocal_lab.detection.evaluate import coco_metrics

    root, ann, dets = _crowd_case(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # the oracle: the detection on the crowd region is ignored
    data = read_coco(ann, root / "images")
    assert data.num_objects == 2 and len(data.records[1].crowd_labels) == 1  # not trained on, kept
    ours = coco_metrics(data.to_coco(), dets)
    for k, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        assert ours[key] == pytest.approx(float(ev.stats[k])), key
    assert ours["AP50"] == pytest.approx(1.0)


def _images(root):
    return sorted(p.relative_to(root) for p in (root / "images").rglob("*.png"))


def test_synth_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    from qfocal.cli import main
    from qfocal_lab.data.synth import NotSyntheticError, prepare_synthetic

    user = tmp_path / "user"
    (user / "annotations").mkdir(parents=True)
    mine = user / "annotations" / "instances_train.json"
    mine.write_text('{"mine": true}')
    with pytest.raises(
        NotSyntheticError, match=r"expected an empty folder or a synthetic set written by qfocal"
    ):
        generate_dataset(user, images=4, imgsz=32, min_size=2)
    with pytest.raises(NotSyntheticError):
        prepare_synthetic(user, images=4, imgsz=32, min_size=2, log=lambda m: None)
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "--out", str(user), "--images", "4", "--imgsz", "32"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and "written by qfocal" in err, err
    assert mine.read_text() == '{"mine": true}'  # untouched


@pytest.mark.parametrize("how", ["generate", "prepare", "cli"])
def test_regenerating_a_smaller_set_leaves_nothing_stale(tmp_path, capsys, how):
    from qfocal.cli import main
    from qfocal_lab.data.synth import prepare_synthetic

    root = tmp_path / "s"

    def make(images: int) -> None:
        if how == "generate":
            generate_dataset(root, images=images, imgsz=32, min_size=2)
        elif how == "prepare":
            prepare_synthetic(root, images=images, imgsz=32, min_size=2, log=lambda m: None)
        else:
            assert main(["data", "synth", "--out", str(root), "--images", str(images), "--imgsz", "32"]) == 0
            capsys.readouterr()

    make(12)
    assert len(_images(root)) == 12
    (root / "labels" / "train.cache").write_text("a framework's cache of the old labels")
    make(6)
    assert len(_images(root)) == 6
    assert not (root / "labels" / "train.cache").exists()
    for split in ("train", "val"):
        data = load_split(root, split)
        yolo = load_split(root / "data.yaml", split)
        assert [r.path.name for r in data.records] == [r.path.name for r in yolo.records]
    assert len(load_split(root, "train").records) + len(load_split(root, "val").records) == 6
