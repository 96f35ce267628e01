"""Reader for YOLO datasets: a data yaml (``path``, ``train``, ``val``, ``names``) and ``labels/*.txt`` files."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .records import (
    AnnotationError,
    DetectionData,
    SkipReport,
    as_int,
    check_box,
    check_image,
    check_not_empty,
    check_regular_file,
    duplicate_names,
    fail_or_skip,
    join_inside,
    make_record,
    read_text,
    short_repr,
)

__all__ = ["IMAGE_SUFFIXES", "read_yolo", "read_yolo_yaml"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_yolo_yaml(path: str | os.PathLike, *, allow_outside_root: bool = False) -> dict:
    """Parse a YOLO data yaml; return ``{"root", "train", "val", "names"}`` with resolved paths.

    ``path`` (optional) is the dataset root, relative to the yaml's folder; ``train`` and ``val`` are an image
    folder or a ``.txt`` list of images, relative to the root. A root or split that leaves the yaml's folder (an
    absolute path elsewhere, or ``..``) is refused unless ``allow_outside_root`` is true, and a root that does not
    exist is an error (no fallback to another folder). ``names`` is a list or a dict ``{0: name, ...}``; ``nc``,
    if present, must equal the number of names. Lists of folders for ``train``/``val`` are not supported.
    """
    import yaml

    yaml_path = Path(path)
    text = read_text(yaml_path, "data yaml")
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise AnnotationError(f"{yaml_path}{line}: not valid YAML ({exc})") from None
    except RecursionError:
        raise AnnotationError(f"{yaml_path}: not valid YAML (nested too deeply)") from None
    if not isinstance(cfg, dict) or "names" not in cfg or "train" not in cfg or "val" not in cfg:
        raise AnnotationError(f"{yaml_path}: expected keys 'train', 'val' and 'names'")
    base = yaml_path.parent
    root_value = cfg.get("path")
    if root_value is None or root_value == "":
        root = base
    elif isinstance(root_value, str):
        root = join_inside(base, root_value, f"{yaml_path}: 'path'", allow_outside_root=allow_outside_root)
        if not root.is_dir():
            raise AnnotationError(
                f"{yaml_path}: 'path' {root} is not a folder (a moved dataset? fix 'path' or remove it to use "
                "the yaml's folder)"
            )
    else:
        raise AnnotationError(f"{yaml_path}: 'path' must be a folder path, got {short_repr(root_value)}")
    splits = {}
    for key in ("train", "val"):
        value = cfg[key]
        if isinstance(value, list):
            raise AnnotationError(
                f"{yaml_path}: '{key}' is a list; lists of image folders are not supported (use one folder or "
                "a .txt list of images)"
            )
        if not isinstance(value, str) or not value.strip():
            raise AnnotationError(
                f"{yaml_path}: '{key}' must be a folder or .txt path, got {short_repr(value)}"
            )
        splits[key] = join_inside(
            root, value.strip(), f"{yaml_path}: '{key}'", allow_outside_root=allow_outside_root
        )
    names = _names(yaml_path, cfg)
    return {"root": root, "train": splits["train"], "val": splits["val"], "names": names}


def _names(yaml_path: Path, cfg: dict) -> list[str]:
    names = cfg["names"]
    if isinstance(names, dict):
        try:
            index = {as_int(k, "key"): v for k, v in names.items()}
        except ValueError:
            raise AnnotationError(
                f"{yaml_path}: 'names' keys must be class indices, got {short_repr(list(names))}"
            ) from None
        keys = sorted(index)
        if keys != list(range(len(keys))):
            raise AnnotationError(f"{yaml_path}: 'names' must be indexed 0..{len(keys) - 1}, got {keys}")
        names = [index[k] for k in keys]
    elif not isinstance(names, list):
        raise AnnotationError(
            f"{yaml_path}: 'names' must be a list or a dict, got {type(names).__name__} {short_repr(names)}"
        )
    if not names:
        raise AnnotationError(f"{yaml_path}: 'names' is empty")
    bad = [n for n in names if not isinstance(n, (str, int, float))]
    if bad:
        raise AnnotationError(f"{yaml_path}: 'names' must be class names, got {short_repr(bad[0])}")
    if "nc" in cfg:
        try:
            nc = as_int(cfg["nc"], "nc")
        except ValueError as exc:
            raise AnnotationError(f"{yaml_path}: {exc}") from None
        if nc != len(names):
            raise AnnotationError(f"{yaml_path}: 'nc' is {nc} but 'names' has {len(names)} entries")
    names = [str(n) for n in names]
    repeated = duplicate_names(names)
    if repeated:
        raise AnnotationError(
            f"{yaml_path}: expected distinct class names in 'names', got {repeated} repeated"
        )
    return names


def _label_path(image: Path) -> Path:
    """YOLO's convention: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _class_index(text: str) -> int:
    """A class index from ``"3"`` or an integral float ``"3.0"`` (labelling tools write both)."""
    value = float(text)
    if not math.isfinite(value) or value != math.floor(value):
        raise ValueError(f"class must be an integer index, got {text!r}")
    return int(value)


def _parse_line(fields: list[str], width: int, height: int) -> tuple[int, list[float]]:
    """``(class, [x1, y1, x2, y2] pixels)`` of a label row: ``class cx cy w h`` normalised, or a polygon
    ``class x1 y1 x2 y2 x3 y3 ...`` (segmentation export) whose box is the points' extent, as Ultralytics does.
    Non-finite coordinates come back in the box for :func:`check_box` to name. ValueError if malformed."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        raise ValueError(
            f"expected 5 fields 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...' (an odd count >= 7),"
            f" got {n}"
        )
    cls = _class_index(fields[0])
    coords = [float(v) for v in fields[1:]]
    if n == 5:
        cx, cy, w, h = coords
        return cls, [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    if not all(math.isfinite(v) for v in coords):
        return cls, [math.nan] * 4
    xs, ys = coords[0::2], coords[1::2]
    return cls, [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]


def _count_rows(label: Path) -> int:
    try:
        check_regular_file(label, "label file")
        return sum(1 for line in label.read_text(errors="replace").splitlines() if line.strip())
    except (OSError, AnnotationError):
        return 0


def _image_files(img_src: Path, root: Path, allow_outside_root: bool) -> list[tuple[Path, str | None]]:
    """``(path, error)`` per image of a folder or a ``.txt`` list; an error is a path leaving ``root``."""
    if img_src.is_dir():
        return [(p, None) for p in sorted(img_src.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not (img_src.suffix == ".txt" and os.path.lexists(img_src)):  # a FIFO .txt: refused by read_text
        what = "not found" if not img_src.exists() else "neither a folder nor a .txt file"
        raise AnnotationError(f"{img_src}: expected an image folder or a .txt list of images ({what})")
    files: list[tuple[Path, str | None]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(read_text(img_src, "image list").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        where = f"{img_src}:{n}"
        key = os.path.normpath(os.path.join(img_src.parent, name))
        if key in seen:
            raise AnnotationError(f"{where}: image {name!r} is listed twice (lines {seen[key]} and {n})")
        seen[key] = n
        try:
            path = join_inside(root, name, where, allow_outside_root=allow_outside_root, base=img_src.parent)
        except AnnotationError as exc:
            files.append((img_src.parent / name, str(exc)))
            continue
        files.append((path, None))
    return files


# LabelImg writes the class list beside the label files.
_NOT_LABELS = ("classes.txt",)


def _orphan_labels(img_dir: Path, owners: dict[Path, Path], skip_bad: bool, report: SkipReport) -> None:
    """A label file in the ``labels/`` mirror of an image folder without its image (deleted, renamed, or in a
    format not read): its objects would vanish silently, so it is a bad item."""
    label_dir = _label_path(img_dir / "x.png").parent
    if label_dir == img_dir or not label_dir.is_dir():
        return
    for lbl in sorted(label_dir.rglob("*.txt")):
        if lbl not in owners and lbl.name not in _NOT_LABELS:
            stem = lbl.relative_to(label_dir).with_suffix("")
            fail_or_skip(
                skip_bad,
                report,
                "label without image",
                f"{lbl}: label file without an image ({img_dir / stem}.* with a suffix in {', '.join(IMAGE_SUFFIXES)})",
            )
            report.dropped += _count_rows(lbl)


def read_yolo(
    images: str | os.PathLike,
    names: list[str],
    *,
    skip_bad: bool = False,
    source: str | None = None,
    root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    allow_empty: bool = False,
) -> DetectionData:
    """Read YOLO txt labels for the images in a folder (or listed in a ``.txt`` file) and check every line.

    A label row is ``class cx cy w h`` normalised to [0, 1], or a polygon ``class x1 y1 x2 y2 x3 y3 ...`` (an odd
    number of fields >= 7, as segmentation exports write) read as the box around its points, as Ultralytics does.
    Label files may be UTF-8 with or without a BOM, with LF or CRLF line ends, blank lines and extra spaces;
    the class may be written ``1`` or ``1.0``.

    Structural faults stop the reader whatever ``skip_bad`` says: an image listed twice, two images sharing one
    label file (``a.png`` and ``a.jpg``), and a split without a single object (for example a missing ``labels/``
    folder). Each bad item raises :class:`AnnotationError` naming the file and line, unless ``skip_bad`` is true:
    then the line, or the image with its labels, is dropped and counted in ``DetectionData.skipped``. Bad lines
    are: a wrong field count, a class that is not an integer (``1.5``, ``nan``) or out of range, a non-finite,
    empty or out-of-image box. Bad images are: missing, corrupt or too large files, a label file that is not
    UTF-8 or cannot be read, a listed path leaving ``root``, and a label file in the ``labels/`` mirror of an image
    folder without its image (``classes.txt`` excepted). An image without a label file has no objects (YOLO's
    convention for background images).

    Args:
        images: folder of images, or a text file listing image paths (relative to its folder).
        names: class names; class ``k`` of the labels is ``names[k]``.
        skip_bad: skip and count bad items instead of raising.
        source: text naming the dataset in messages (default: ``images``).
        root: the dataset root no listed image may leave (default: the list file's folder).
        allow_outside_root: read listed images that are absolute paths elsewhere or climb out of ``root``.
        allow_empty: accept a split without any object (a negative-only set) instead of raising.
    """
    img_src = Path(images)
    if not names:
        raise AnnotationError(f"{source or img_src}: no class names")
    repeated = duplicate_names([str(n) for n in names])
    if repeated:
        raise AnnotationError(f"{source or img_src}: expected distinct class names, got {repeated} repeated")
    check_root = Path(root) if root is not None else (img_src if img_src.is_dir() else img_src.parent)
    report = SkipReport()
    files = _image_files(img_src, check_root, allow_outside_root)
    owners: dict[Path, Path] = {}
    for path, _ in files:
        lbl = _label_path(path)
        if lbl in owners:
            raise AnnotationError(
                f"{lbl}: label file shared by two images, {owners[lbl]} and {path}; rename one of them"
            )
        owners[lbl] = path
    if img_src.is_dir():
        _orphan_labels(img_src, owners, skip_bad, report)
    records = []
    n_label_files = 0
    for image_id, (path, error) in enumerate(files, start=1):
        if error is not None:
            fail_or_skip(skip_bad, report, "path outside root", error)
            continue
        lbl = _label_path(path)
        try:
            width, height = check_image(path)
        except AnnotationError as exc:
            fail_or_skip(skip_bad, report, exc.reason or "corrupt image", str(exc))
            report.dropped += _count_rows(lbl)
            continue
        try:
            text = read_text(lbl, "label file") if os.path.lexists(lbl) else None
        except AnnotationError as exc:
            fail_or_skip(skip_bad, report, "unreadable label file", str(exc))
            report.dropped += _count_rows(lbl)
            continue
        boxes, labels = [], []
        if text is not None:
            n_label_files += 1
            for n, line in enumerate(text.splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                where = f"{lbl}:{n}"
                try:
                    cls, box = _parse_line(fields, width, height)
                except ValueError as exc:
                    msg = f"{where}: malformed line {short_repr(line)} ({exc})"
                    fail_or_skip(skip_bad, report, "malformed line", msg)
                    continue
                if not 0 <= cls < len(names):
                    msg = f"{where}: unknown class {fields[0]} (have {len(names)})"
                    fail_or_skip(skip_bad, report, "unknown class", msg)
                    continue
                bad = check_box(box, width, height, where)
                if bad is not None:
                    fail_or_skip(skip_bad, report, *bad)
                    continue
                boxes.append(box)
                labels.append(cls)
        records.append(make_record(path, width, height, boxes, labels, image_id))
    data = DetectionData(
        records=records,
        class_names=list(names),
        category_ids=list(range(1, len(names) + 1)),
        source=source or str(img_src),
        skipped=report,
    )
    if n_label_files == 0 and files:
        what = f"no label files found (expected YOLO labels such as {_label_path(files[0][0])})"
    else:
        what = f"{n_label_files} label file(s) without a usable row"
    return check_not_empty(data, what, allow_empty=allow_empty)
