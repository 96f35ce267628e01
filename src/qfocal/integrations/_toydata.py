"""A tiny synthetic YOLO-format dataset (coloured rectangles), written in well under a second, to try the
YOLOv5 and Ultralytics integrations offline and to test them end to end."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_toy_dataset"]

_COLOURS = ((230, 60, 60), (60, 200, 60), (60, 90, 230), (230, 200, 40), (200, 60, 220))


def write_toy_dataset(
    root: str | Path,
    *,
    n_train: int = 16,
    n_val: int = 8,
    imgsz: int = 64,
    num_classes: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt`` and ``data.yaml`` under ``root``.

    Each image holds one to three filled rectangles; the class of a rectangle is its colour. ``data.yaml`` has
    absolute paths and is read as is by YOLOv5 and Ultralytics.

    Args:
        root: output folder (created).
        n_train, n_val: number of images per split, ``>= 1``.
        imgsz: image side in pixels, ``>= 16``.
        num_classes: number of classes in ``[1, 5]``.
        seed: random seed (the dataset is deterministic).

    Returns:
        the path of ``data.yaml``.

    Example:
        >>> import tempfile
        >>> from qfocal.integrations import write_toy_dataset
        >>> write_toy_dataset(tempfile.mkdtemp(), n_train=2, n_val=1).name
        'data.yaml'
    """
    import numpy as np
    from PIL import Image, ImageDraw

    for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 1), ("imgsz", imgsz, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 1 <= num_classes <= len(_COLOURS)
    ):
        raise ValueError(f"num_classes: expected an integer in [1, {len(_COLOURS)}], got {num_classes!r}")

    root = Path(root).resolve()
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            background = tuple(int(v) for v in rng.integers(0, 80, 3))
            image = Image.new("RGB", (imgsz, imgsz), background)
            draw = ImageDraw.Draw(image)
            rows = []
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.integers(0, num_classes))
                w, h = rng.uniform(0.2, 0.5, 2) * imgsz
                x0, y0 = rng.uniform(0, imgsz - w), rng.uniform(0, imgsz - h)
                draw.rectangle((x0, y0, x0 + w, y0 + h), fill=_COLOURS[c])
                cx, cy = (x0 + w / 2) / imgsz, (y0 + h / 2) / imgsz
                rows.append(f"{c} {cx:.6f} {cy:.6f} {w / imgsz:.6f} {h / imgsz:.6f}")
            image.save(images / f"{split}_{i:04d}.jpg", quality=95)
            (labels / f"{split}_{i:04d}.txt").write_text("\n".join(rows) + "\n")

    names = "".join(f"  {k}: class{k}\n" for k in range(num_classes))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data
