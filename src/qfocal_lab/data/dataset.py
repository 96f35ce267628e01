"""Finding a dataset on disk (COCO or YOLO layout) and serving it to torch as resized images with targets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .coco import read_coco
from .records import AnnotationError, DetectionData, load_rgb
from .yolo import read_yolo, read_yolo_yaml

__all__ = ["DetectionDataset", "collate", "load_split"]


def _coco_images_dir(root: Path, split: str) -> Path | None:
    for cand in (root / "images" / split, root / f"{split}2017", root / split, root / "images"):
        if cand.is_dir():
            return cand
    return None


def _coco_annotation_file(ann_dir: Path, split: str) -> Path | None:
    """``instances_{split}.json`` or ``instances_{split}2017.json``; both at once is ambiguous and an error."""
    found = [ann_dir / f"instances_{split}{y}.json" for y in ("", "2017")]
    found = [f for f in found if os.path.lexists(f) and not f.is_dir()]  # a FIFO: refused when read
    if len(found) > 1:
        raise AnnotationError(f"{ann_dir}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def load_split(
    path: str | os.PathLike,
    split: str,
    *,
    skip_bad: bool = False,
    allow_outside_root: bool = False,
    allow_empty: bool = False,
) -> DetectionData:
    """Read the ``split`` ("train" or "val") of the dataset at ``path``.

    ``path`` is a YOLO data yaml, or a folder holding either ``annotations/instances_{split}.json`` (COCO; images
    in ``images/{split}``, ``{split}2017``, ``{split}`` or ``images``) or a ``data.yaml`` (YOLO). A folder with
    any COCO instances file is read as COCO for both splits (its ``data.yaml``, if any, is not used), so a
    missing ``instances_val.json`` is an error naming it, never a silent switch to the YOLO labels. Only a
    folder without COCO annotations is read through its ``data.yaml``.

    Args:
        path: the dataset folder or its YOLO data yaml.
        split: "train" or "val".
        skip_bad: skip and count bad items instead of raising (see :func:`read_coco`, :func:`read_yolo`).
        allow_outside_root: read image paths that leave the dataset root (absolute or through ``..``).
        allow_empty: accept a split without any object instead of raising.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
    opts = {"skip_bad": skip_bad, "allow_outside_root": allow_outside_root, "allow_empty": allow_empty}
    p = Path(path)
    if p.suffix in (".yaml", ".yml") and os.path.lexists(p) and not p.is_dir():
        cfg = read_yolo_yaml(p, allow_outside_root=allow_outside_root)
        return read_yolo(cfg[split], cfg["names"], source=f"{p} [{split}]", root=cfg["root"], **opts)
    if not p.is_dir():
        raise AnnotationError(f"{p}: dataset not found (expected a folder or a YOLO data yaml)")
    coco = {s: _coco_annotation_file(p / "annotations", s) for s in ("train", "val")}
    yamls = [
        p / name
        for name in ("data.yaml", "data.yml")
        if os.path.lexists(p / name) and not (p / name).is_dir()
    ]
    if any(coco.values()):
        ann = coco[split]
        if ann is None:
            other = next(f for f in coco.values() if f is not None)
            unused = f"; {yamls[0].name} is not used for a folder with COCO annotations" if yamls else ""
            raise AnnotationError(
                f"{p / 'annotations' / f'instances_{split}.json'}: not found, but {other.name} is there: a COCO "
                f"dataset needs an instances file for every split{unused}"
            )
        images = _coco_images_dir(p, split)
        if images is None:
            raise AnnotationError(
                f"{p}: found {ann.name} but no image folder images/{split}, {split}2017, {split} or images"
            )
        return read_coco(ann, images, **opts)
    if len(yamls) > 1:
        raise AnnotationError(f"{p}: both data.yaml and data.yml exist; keep one")
    if yamls:
        return load_split(yamls[0], split, **opts)
    raise AnnotationError(
        f"{p}: neither annotations/instances_{split}.json (COCO) nor data.yaml (YOLO) found"
    )


class DetectionDataset(torch.utils.data.Dataset):
    """Images resized to ``imgsz x imgsz`` as float tensors in [0, 1] with ``{"boxes", "labels"}`` targets in the
    resized pixel frame. ``train=True`` adds a horizontal flip drawn from ``(seed, epoch, index)`` only, so the
    data seen in an epoch does not depend on what ran before (resume reproduces an uninterrupted run).
    Decoded images are cached in memory as uint8 when they fit in ``cache_bytes``.
    """

    def __init__(
        self, data: DetectionData, imgsz: int, *, train: bool = False, seed: int = 0, cache_bytes: float = 2e9
    ) -> None:
        self.data = data
        self.imgsz = int(imgsz)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self._cache: dict[int, torch.Tensor] | None = (
            {} if len(data.records) * 3 * self.imgsz**2 <= cache_bytes else None
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data.records)

    def _image(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rec = self.data.records[index]
        try:
            im = load_rgb(rec.path)
            if im.size != (rec.width, rec.height):
                raise ValueError(
                    f"expected {rec.width}x{rec.height} as read, got {im.size[0]}x{im.size[1]} (changed since?)"
                )
            if im.size != (self.imgsz, self.imgsz):
                im = im.resize((self.imgsz, self.imgsz), Image.Resampling.BILINEAR)
            arr = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        except Exception as exc:  # changed or damaged since the readers checked it
            raise AnnotationError(
                f"{rec.path}: cannot decode image ({type(exc).__name__}: {exc})", reason="corrupt image"
            ) from exc
        if self._cache is not None:
            self._cache[index] = arr
        return arr

    def __getitem__(self, index: int):
        rec = self.data.records[index]
        img = self._image(index).float().div_(255.0)
        scale = torch.tensor(
            [self.imgsz / rec.width, self.imgsz / rec.height, self.imgsz / rec.width, self.imgsz / rec.height]
        )
        boxes = torch.from_numpy(rec.boxes).float() * scale
        labels = torch.from_numpy(rec.labels).long()
        if self.train:
            gen = torch.Generator().manual_seed(
                ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**62
            )
            if torch.rand((), generator=gen) < 0.5:
                img = img.flip(-1)
                boxes = torch.stack(
                    [self.imgsz - boxes[:, 2], boxes[:, 1], self.imgsz - boxes[:, 0], boxes[:, 3]], 1
                )
        return img, {"boxes": boxes.reshape(-1, 4), "labels": labels}, index


def collate(batch):
    images, targets, indices = zip(*batch, strict=True)
    return list(images), list(targets), list(indices)
