"""The embedded dataset: a deterministic procedural generator of detection images with COCO and YOLO labels.

Six shape classes with a long-tailed frequency, object sizes from a few pixels to half the image, overlapping and
occluded objects, unlabeled distractors that look like the classes (ellipses, blobs, strokes) and textured
backgrounds. Only numpy and Pillow drawing primitives are used: no fonts, no downloads. The same ``seed`` gives
byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TypedDict

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ("disc", "square", "triangle", "ring", "cross", "star")
# Long tail: the rarest class appears about 7x less often than the commonest.
CLASS_FREQUENCIES = (0.30, 0.22, 0.17, 0.13, 0.10, 0.08)

__all__ = [
    "CLASS_FREQUENCIES",
    "CLASS_NAMES",
    "DIFFICULTIES",
    "MARKER",
    "NotSyntheticError",
    "generate_dataset",
    "prepare_synthetic",
    "write_toy_dataset",
]


class _Difficulty(TypedDict):
    distractors: float
    blur: float
    noise: tuple[float, float]
    min_fraction: float | None


# Difficulty presets: clutter (mean distractors per image), chance of blur, sensor-noise range, and the smallest
# object as a fraction of the image side (None: the ``min_size`` argument, 6 px by default).
# "hard" is the original embedded dataset (byte-identical); "easy" has larger objects, little clutter and no
# blur, so a small detector trained for minutes localises well and the losses differ in localisation quality.
DIFFICULTIES: dict[str, _Difficulty] = {
    "hard": {"distractors": 4.0, "blur": 0.3, "noise": (2.0, 10.0), "min_fraction": None},
    "easy": {"distractors": 1.0, "blur": 0.0, "noise": (1.0, 4.0), "min_fraction": 0.1},
}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random field in [0, 1] (bilinearly upsampled value noise plus a sinusoid), shape (size, size)."""
    cells = int(rng.integers(3, 9))
    grid = rng.random((cells, cells)).astype(np.float32)
    small = Image.fromarray((grid * 255).astype(np.uint8))
    field = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, math.pi)
    freq = rng.uniform(2, 12)
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)))
    mix = rng.uniform(0.0, 0.6)
    return (1 - mix) * field + mix * wave


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    t = _texture(rng, size)[..., None]
    img = c0 * (1 - t) + c1 * t
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _rotate(points: np.ndarray, angle: float, center: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rel = points - np.asarray(center)
    return np.stack([rel[:, 0] * c - rel[:, 1] * s, rel[:, 0] * s + rel[:, 1] * c], axis=1) + np.asarray(
        center
    )


def _shape_polygon(kind: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (K, 2) of a polygonal class shape of radius ``r``, randomly rotated."""
    if kind == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * r / math.sqrt(2)
    elif kind == "triangle":
        a = np.deg2rad([90, 210, 330])
        pts = np.stack([np.cos(a), -np.sin(a)], axis=1) * r
    elif kind == "cross":
        w = 0.33
        pts = (
            np.array(
                [
                    [-w, -1],
                    [w, -1],
                    [w, -w],
                    [1, -w],
                    [1, w],
                    [w, w],
                    [w, 1],
                    [-w, 1],
                    [-w, w],
                    [-1, w],
                    [-1, -w],
                    [-w, -w],
                ],
                dtype=np.float64,
            )
            * r
            / math.sqrt(1 + w * w)
        )
    elif kind == "star":
        a = np.deg2rad(np.arange(10) * 36 + 90)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(a) * rad, -np.sin(a) * rad], axis=1) * r
    else:  # pragma: no cover - internal
        raise ValueError(f"kind: expected a polygonal class, got {kind!r}")
    pts = pts + np.array([cx, cy])
    return _rotate(pts, rng.uniform(0, 2 * math.pi), (cx, cy))


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _draw_object(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, rng) -> list[float]:
    """Draw one labeled object; return its tight box [x1, y1, x2, y2]."""
    fill = _color(rng)
    if kind in ("disc", "ring"):
        ax = r * rng.uniform(0.85, 1.0)
        ay = r * rng.uniform(0.85, 1.0)
        box = [cx - ax, cy - ay, cx + ax, cy + ay]
        if kind == "disc":
            draw.ellipse(box, fill=fill)
        else:
            draw.ellipse(box, outline=fill, width=max(1, round(r * rng.uniform(0.25, 0.4))))
        return box
    pts = _shape_polygon(kind, cx, cy, r, rng)
    draw.polygon([tuple(p) for p in pts], fill=fill)
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


def _draw_distractor(draw: ImageDraw.ImageDraw, size: int, min_r: float, max_r: float, rng) -> None:
    """An unlabeled clutter item: an elongated ellipse, an irregular blob, a stroke or an arc."""
    kind = rng.integers(0, 4)
    r = math.exp(rng.uniform(math.log(min_r), math.log(max_r)))
    cx, cy = rng.uniform(0, size, 2)
    fill = _color(rng)
    if kind == 0:  # elongated ellipse: close to a disc, but not one
        draw.ellipse(
            [cx - r, cy - r * rng.uniform(0.2, 0.5), cx + r, cy + r * rng.uniform(0.2, 0.5)], fill=fill
        )
    elif kind == 1:  # irregular blob
        n = int(rng.integers(5, 9))
        a = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = r * rng.uniform(0.4, 1.0, n)
        draw.polygon(
            [(cx + ra * math.cos(t), cy + ra * math.sin(t)) for ra, t in zip(rad, a, strict=True)], fill=fill
        )
    elif kind == 2:  # stroke
        t = rng.uniform(0, math.pi)
        dx, dy = math.cos(t) * r * 2, math.sin(t) * r * 2
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=int(rng.integers(1, 4)))
    else:  # open arc
        start = rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 200), fill=fill, width=2)


def _overlap_fraction(a: list[float], b: list[float]) -> float:
    """Intersection area over the area of ``b``."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)


def _frequencies(num_classes: int) -> np.ndarray:
    """The long-tailed class frequencies of the first ``num_classes`` classes, summing to 1."""
    f = np.asarray(CLASS_FREQUENCIES[:num_classes], dtype=np.float64)
    return f / f.sum()


def _make_image(
    rng: np.random.Generator,
    size: int,
    min_size: float,
    mean_objects: float,
    num_classes: int = len(CLASS_NAMES),
    difficulty: str = "hard",
):
    knobs = DIFFICULTIES[difficulty]
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    min_r, max_r = min_size / 2, size / 4  # diameters from min_size to half the image
    n_distract = int(rng.poisson(knobs["distractors"]))
    n_before = int(rng.integers(0, n_distract + 1))
    for _ in range(n_before):
        _draw_distractor(draw, size, min_r, max_r * 0.6, rng)
    objects: list[tuple[list[float], int]] = []
    n_obj = max(1, int(rng.poisson(mean_objects)))
    for _ in range(n_obj):
        for _attempt in range(10):
            cls = int(rng.choice(num_classes, p=_frequencies(num_classes)))
            r = math.exp(rng.uniform(math.log(min_r), math.log(max_r)))
            cx, cy = rng.uniform(r, size - r, 2)
            probe = [cx - r, cy - r, cx + r, cy + r]
            # Overlap and partial occlusion are allowed; hiding most of an earlier object is not.
            if all(_overlap_fraction(probe, b) < 0.5 for b, _ in objects):
                break
        else:
            continue
        box = _draw_object(draw, CLASS_NAMES[cls], cx, cy, r, rng)
        box = [min(max(v, 0.0), float(size)) for v in box]
        if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            objects.append((box, cls))
    for _ in range(n_distract - n_before):
        _draw_distractor(draw, size, min_r, max_r * 0.4, rng)
    if rng.random() < knobs["blur"]:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(*knobs["noise"]), (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), objects


def generate_dataset(
    out: str | os.PathLike,
    *,
    images: int = 400,
    seed: int = 0,
    imgsz: int = 256,
    val_fraction: float = 0.25,
    min_size: float = 6.0,
    mean_objects: float = 6.0,
    n_val: int | None = None,
    num_classes: int = len(CLASS_NAMES),
    difficulty: str = "hard",
) -> dict[str, Path]:
    """Write a synthetic detection dataset to ``out`` and return the paths of its parts.

    Layout (the COCO and YOLO readers both read it like user data)::

        out/images/{train,val}/000000.png
        out/labels/{train,val}/000000.txt       YOLO: "class cx cy w h", normalised
        out/annotations/instances_{train,val}.json   COCO instances, category ids 1..6
        out/data.yaml                           YOLO data file (path, train, val, names)

    Args:
        out: output directory: created, or empty, or a synthetic set written by qfocal (its marker file
            :data:`MARKER`), whose images, labels, annotations and data.yaml are removed first so that nothing
            of the old set remains. Any other non-empty folder raises :class:`NotSyntheticError`.
        images: total number of images, ``>= 2``; ``round(images * val_fraction)`` (at least 1) go to val.
        seed: the generator seed; the same seed gives identical files.
        imgsz: image side in pixels, ``>= 32``.
        val_fraction: share of images in the validation split, in (0, 1).
        min_size: smallest object diameter in pixels; the largest is ``imgsz / 2``.
        mean_objects: mean number of labeled objects per image (Poisson, at least 1).
        n_val: images in val, overriding ``val_fraction`` (``1 <= n_val < images``).
        num_classes: use the first ``num_classes`` of :data:`CLASS_NAMES` (1 to 6).
        difficulty: ``"hard"`` (the default, the original dataset) or ``"easy"`` (:data:`DIFFICULTIES`: larger
            objects, little clutter, no blur); ``"easy"`` sets the smallest object to a tenth of ``imgsz``.
    """
    if int(images) != images or images < 2:
        raise ValueError(f"images: expected an integer >= 2, got {images!r}")
    if imgsz < 32:
        raise ValueError(f"imgsz: expected >= 32, got {imgsz!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a value in (0, 1), got {val_fraction!r}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty: expected one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    min_fraction = DIFFICULTIES[difficulty]["min_fraction"]
    if min_fraction is not None:
        min_size = max(min_size, min_fraction * imgsz)
    if not 1 <= min_size < imgsz / 2:
        raise ValueError(f"min_size: expected a value in [1, imgsz / 2), got {min_size!r}")
    if n_val is not None and (int(n_val) != n_val or not 1 <= n_val < images):
        raise ValueError(f"n_val: expected an integer in [1, images), got {n_val!r}")
    if int(num_classes) != num_classes or not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes: expected an integer in [1, {len(CLASS_NAMES)}], got {num_classes!r}")
    root = Path(out)
    _claim(root)
    names = CLASS_NAMES[:num_classes]
    if n_val is None:
        n_val = max(1, round(images * val_fraction))
    splits = {"train": images - n_val, "val": n_val}
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names)]
    paths: dict[str, Path] = {}
    for split_id, (split, count) in enumerate(splits.items()):
        img_dir = root / "images" / split
        lbl_dir = root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        coco_images: list[dict] = []
        coco_anns: list[dict] = []
        for i in range(count):
            rng = np.random.default_rng([seed, split_id, i])
            img, objects = _make_image(rng, imgsz, min_size, mean_objects, num_classes, difficulty)
            name = f"{i:06d}.png"
            img.save(img_dir / name, optimize=False)
            coco_images.append({"id": i + 1, "file_name": name, "width": imgsz, "height": imgsz})
            lines = []
            for box, cls in objects:
                x1, y1, x2, y2 = (round(v, 2) for v in box)
                w, h = round(x2 - x1, 2), round(y2 - y1, 2)
                coco_anns.append(
                    {
                        "id": len(coco_anns) + 1,
                        "image_id": i + 1,
                        "category_id": cls + 1,
                        "bbox": [x1, y1, w, h],
                        "area": round(w * h, 2),
                        "iscrowd": 0,
                    }
                )
                lines.append(
                    f"{cls} {(x1 + w / 2) / imgsz:.6f} {(y1 + h / 2) / imgsz:.6f} {w / imgsz:.6f} {h / imgsz:.6f}"
                )
            (lbl_dir / f"{i:06d}.txt").write_text("".join(line + "\n" for line in lines))
        ann_dir = root / "annotations"
        ann_dir.mkdir(parents=True, exist_ok=True)
        ann_path = ann_dir / f"instances_{split}.json"
        coco = {"images": coco_images, "annotations": coco_anns, "categories": categories}
        ann_path.write_text(json.dumps(coco))
        paths[f"{split}_json"] = ann_path
        paths[f"{split}_images"] = img_dir
    names_yaml = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    yaml_path = root / "data.yaml"
    # No 'path' key, so a copied or moved dataset reads its own files: qfocal and Ultralytics then use this file's
    # folder; qfocal's YOLOv5 integration adds the absolute path YOLOv5 needs when it starts a run.
    yaml_path.write_text(
        f"# qfocal synthetic dataset, seed {seed}, difficulty {difficulty}\ntrain: images/train\nval: images/val\n"
        f"nc: {len(names)}\nnames:\n{names_yaml}"
    )
    paths["yaml"] = yaml_path
    paths["root"] = root
    stamp = {"images": images, "seed": seed, "imgsz": imgsz, "n_val": n_val, "num_classes": num_classes}
    _write_marker(root, f"{_COMPLETE} {json.dumps({**stamp, 'difficulty': difficulty}, sort_keys=True)}\n")
    return paths


# The file that marks a folder as a synthetic set written by qfocal: "writing" while it is written, then
# "complete" with its settings. Such a folder is qfocal's to regenerate (its parts removed first, so nothing stale
# remains); any other non-empty folder is refused. ".complete" is the marker of earlier versions.
MARKER = ".qfocal-synthetic"
_LEGACY_MARKER = ".complete"  # = _PREPARED
_COMPLETE = "complete"
# What generate_dataset writes (and removes before writing again).
_PARTS = ("images", "labels", "annotations", "data.yaml", _LEGACY_MARKER)


class NotSyntheticError(FileExistsError):
    """A non-empty output folder that is not a synthetic set written by qfocal: never overwritten."""


def _write_marker(root: Path, text: str) -> None:
    tmp = root / f"{MARKER}.tmp"
    tmp.write_text(text)
    tmp.replace(root / MARKER)


def _claim(root: Path) -> None:
    """Make ``root`` an empty folder owned by the generator: create it, or clear a synthetic set written by qfocal
    (its images, labels, annotations and data.yaml: a smaller set leaves no stale files), or refuse a non-empty
    folder that qfocal did not write (:class:`NotSyntheticError`)."""
    if root.exists() and not root.is_dir():
        raise NotSyntheticError(f"{root}: expected a folder for the synthetic dataset, got a file")
    root.mkdir(parents=True, exist_ok=True)
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        _write_marker(root, "writing\n")
        return
    if MARKER not in entries and _LEGACY_MARKER not in entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise NotSyntheticError(
            f"{root}: expected an empty folder or a synthetic set written by qfocal (with its {MARKER} file), "
            f"got a folder holding {shown}; choose another folder, or empty this one"
        )
    _write_marker(root, "writing\n")  # an interrupted clean-up stays qfocal's to finish
    for name in _PARTS:
        part = root / name
        if part.is_dir() and not part.is_symlink():
            shutil.rmtree(part)
        elif part.exists() or part.is_symlink():
            part.unlink()


def synthetic_stamp(root: str | os.PathLike) -> str | None:
    """The settings line of a complete synthetic set written by qfocal in ``root``, or None."""
    try:
        text = (Path(root) / MARKER).read_text()
    except OSError:
        return None
    return text if text.startswith(_COMPLETE + " ") else None


_DEFAULTS = {"difficulty": "hard"}


def prepare_synthetic(root: str | os.PathLike, *, images: int, seed: int = 0, log=print, **options) -> Path:
    """Generate the synthetic dataset in ``root`` unless a complete one with the same settings is there.

    The one preparation used by ``qfocal train`` and ``qfocal compare`` (and the framework compares): a marker file
    written last records the settings, so an interrupted generation or a different size is generated again, with
    the old set's files removed first (:func:`generate_dataset`); a non-empty folder that is not a synthetic set
    written by qfocal is refused (:class:`NotSyntheticError`). Returns ``root``.
    """
    root = Path(root)
    stamp = (
        " ".join(f"{k}={v}" for k, v in sorted({"images": images, "seed": seed, **options}.items())) + "\n"
    )
    # complete: the generator's marker says so (or, from an earlier version, there is none) and this function's
    # record of the options it asked for matches
    complete = synthetic_stamp(root) is not None or not (root / MARKER).exists()
    if not (complete and _read(root / _PREPARED) == stamp):
        log(f"generating the synthetic dataset ({images} images, seed {seed}) in {root}")
        generate_dataset(root, images=images, seed=seed, **options)
        (root / _PREPARED).write_text(stamp)
    return root


# prepare_synthetic's record of the options it asked for (beside the generator's own marker); the marker of
# the sets earlier versions wrote.
_PREPARED = ".complete"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def write_toy_dataset(
    root: str | os.PathLike,
    *,
    n_train: int = 16,
    n_val: int = 8,
    imgsz: int = 64,
    num_classes: int = 2,
    seed: int = 0,
) -> Path:
    """A small synthetic dataset to try the YOLOv5 and Ultralytics integrations on; returns its ``data.yaml``.

    The embedded generator (:func:`generate_dataset`) at a small size: ``n_train`` + ``n_val`` images of
    ``imgsz`` pixels with the first ``num_classes`` shape classes, about three objects each. ``data.yaml`` is read
    as is by Ultralytics, qfocal and qfocal's YOLOv5 integration.

    Example:
        >>> import tempfile
        >>> write_toy_dataset(tempfile.mkdtemp(), n_train=2, n_val=1).name
        'data.yaml'
    """
    for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 1), ("imgsz", imgsz, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    paths = generate_dataset(
        root,
        images=n_train + n_val,
        n_val=n_val,
        seed=seed,
        imgsz=imgsz,
        num_classes=num_classes,
        min_size=max(2.0, imgsz / 10),
        mean_objects=3.0,
    )
    return paths["yaml"]
