"""The synthetic generator: deterministic, hard enough, and read back identically by the COCO and YOLO readers."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from qfocal_lab.data import CLASS_NAMES, DetectionDataset, generate_dataset, load_split, read_coco, read_yolo
from qfocal_lab.data.synth import CLASS_FREQUENCIES


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, images=12, seed=3, imgsz=96, min_size=4)
    return root


def test_same_seed_same_bytes_other_seed_differs(synth, tmp_path):
    generate_dataset(tmp_path / "a", images=12, seed=3, imgsz=96, min_size=4)
    generate_dataset(tmp_path / "b", images=12, seed=4, imgsz=96, min_size=4)
    assert _digest(tmp_path / "a") == _digest(synth)
    assert _digest(tmp_path / "b") != _digest(synth)


def test_layout_and_coco_round_trip(synth):
    coco = json.loads((synth / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert len(CLASS_NAMES) >= 5
    train = read_coco(synth / "annotations" / "instances_train.json", synth / "images" / "train")
    val = read_coco(synth / "annotations" / "instances_val.json", synth / "images" / "val")
    assert len(train.records) + len(val.records) == 12 and len(val.records) == 3
    assert train.skipped.total == 0
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for rec in train.records:
        anns = by_image.get(rec.image_id, [])
        expected = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32
        )
        np.testing.assert_allclose(rec.boxes, expected.reshape(-1, 4), atol=1e-4, err_msg=str(rec.path))
        assert rec.labels.tolist() == [a["category_id"] - 1 for a in anns]
        assert (rec.width, rec.height) == (96, 96)


def test_yolo_labels_match_coco(synth):
    coco = load_split(synth, "train")
    yolo = load_split(synth / "data.yaml", "train")
    assert yolo.class_names == coco.class_names
    assert [r.path for r in yolo.records] == [r.path for r in coco.records]
    for a, b in zip(coco.records, yolo.records, strict=True):
        assert a.labels.tolist() == b.labels.tolist(), a.path
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.01, err_msg=str(a.path))
    # The folder layout picks COCO when both exist; a yaml-only copy reads as YOLO.
    assert coco.source.endswith("instances_train.json")
    direct = read_yolo(synth / "images" / "train", list(CLASS_NAMES))
    assert sum(len(r.labels) for r in direct.records) == sum(len(r.labels) for r in coco.records)


def test_difficulty_properties():
    """Over many generated objects: every class, a long tail, tiny to half-image sizes, overlaps."""
    from qfocal_lab.data.synth import _make_image

    sizes, labels, overlaps = [], [], 0
    for i in range(60):
        _img, objects = _make_image(np.random.default_rng([0, 9, i]), 128, 4.0, 6.0)
        boxes = [b for b, _ in objects]
        for j, (b, c) in enumerate(objects):
            sizes.append(max(b[2] - b[0], b[3] - b[1]))
            labels.append(c)
            for b2 in boxes[j + 1 :]:
                if min(b[2], b2[2]) > max(b[0], b2[0]) and min(b[3], b2[3]) > max(b[1], b2[1]):
                    overlaps += 1
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    assert (counts > 0).all(), counts
    assert counts[0] > 2.5 * counts[-1], counts  # imbalance follows CLASS_FREQUENCIES
    assert CLASS_FREQUENCIES[0] / CLASS_FREQUENCIES[-1] > 3
    assert min(sizes) < 8 and max(sizes) > 50, (min(sizes), max(sizes))
    assert overlaps > 10


def test_dataset_resizes_boxes_and_flip_is_reproducible(synth):
    data = load_split(synth, "train")
    k = next(i for i, r in enumerate(data.records) if len(r.labels))
    ds = DetectionDataset(data, 64)
    img, tgt, idx = ds[k]
    assert img.shape == (3, 64, 64) and idx == k
    np.testing.assert_allclose(tgt["boxes"].numpy(), data.records[k].boxes * (64 / 96), rtol=1e-5)
    tr = DetectionDataset(data, 64, train=True, seed=1)
    flips = []
    for epoch in range(8):
        tr.set_epoch(epoch)
        a, b = tr[k], tr[k]
        assert bool((a[0] == b[0]).all())
        flips.append(bool((a[0] != img).any()))
    assert any(flips) and not all(flips), flips
