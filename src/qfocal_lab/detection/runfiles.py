"""A run's folder: the lock that keeps one run per folder, atomic writes (checkpoint, history, metrics), the
check that the folder can be written before training, and the fingerprint of the data a run trained on.

:mod:`qfocal_lab.detection.train` and the compares (:mod:`qfocal_lab.detection.compare`,
:mod:`qfocal_lab.detection.frameworks`) use these; :mod:`qfocal_lab.detection.train` re-exports them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text))


def _write_history(history: list[dict], path: Path) -> None:
    if not history:
        return
    # Every key of every row: a run resumed from an older checkpoint has rows without the newer columns (AP90).
    keys = list(dict.fromkeys(k for row in history for k in row))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, restval="")
            w.writeheader()
            w.writerows(history)

    _write_atomic(path, write)


class RunLockedError(RuntimeError):
    """Another process is running in the same ``--out`` folder."""


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the block: a second run on the same folder fails at once, naming the
    process that holds it (the lock goes with the process, so a killed run leaves nothing to clean up)."""
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / ".lock", "a+")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        raise RunOutputError(f"cannot lock {out / '.lock'}: {os_error_text(exc)}") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunLockedError(
                f"{out} is in use by another qfocal run ({holder}); wait for it or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


class RunOutputError(RuntimeError):
    """The run's output folder or one of its files cannot be written (a path too long, under a regular file,
    read-only, a folder where a file goes, a full disk); the files written before are kept."""


def os_error_text(exc: BaseException) -> str:
    """One line for an OSError (or torch's writer failing): its reason, without the path when it is known."""
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# torch.save reports a failed write (a full disk) as a RuntimeError from its zip writer.
_TORCH_WRITE_FAILED = ("PytorchStreamWriter", "inline_container", "file write failed")


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a temporary file unique to this process, flush it to disk, then rename it over ``path``.
    A failure (a full disk, a folder in the way) is a one-line :class:`RunOutputError`; ``path`` keeps its
    previous content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(21, "a folder is in the way of the file", str(path))
        os.replace(tmp, path)
    except OSError as exc:
        raise RunOutputError(f"cannot write {path}: {os_error_text(exc)}{_kept(path)}") from None
    except RuntimeError as exc:
        if not any(w in str(exc) for w in _TORCH_WRITE_FAILED):
            raise
        raise RunOutputError(f"cannot write {path}: {os_error_text(exc)} (disk full?){_kept(path)}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the rename itself, where the file system allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _kept(path: Path) -> str:
    return f"; the previous {path.name} is kept" if path.is_file() else ""


# Files of a run folder that must be files (a folder by that name would fail the run after its first epoch).
RUN_FILES = ("last.pt", "metrics.json", "history.csv", "facts.json", "score_iou.npz", ".lock")


def check_output_dir(out: str | os.PathLike, files: Sequence[str] = RUN_FILES) -> Path:
    """Make sure a run can write to ``out`` before it trains: create the folder, write and remove a probe file,
    and find no folder where one of ``files`` goes. Returns ``out``.

    Raises:
        RunOutputError: one line: the path is too long, lies under a regular file, is read-only, or has a folder
            in the way of a file.
    """
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(20, "expected a folder, got a file", str(out))
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".qfocal-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"probe\n")
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as exc:
        raise RunOutputError(f"--out {out}: cannot write there ({os_error_text(exc)})") from None
    for name in files:
        if (out / name).is_dir():
            raise RunOutputError(
                f"--out {out}: expected {name} to be a file, got a folder; remove or rename it"
            )
    return out


def data_fingerprint(*splits) -> dict:
    """What identifies the data a run trained on: per split, the image count, classes, and a hash of every image
    path (relative to the split's source), size, box and label after reading (skips included)."""
    result = {}
    for name, data in splits:
        digest = hashlib.sha256()
        root = Path(data.source).parent
        for rec in data.records:
            path = Path(rec.path)
            rel = path.relative_to(root.parent) if path.is_relative_to(root.parent) else path.name
            digest.update(f"{rel}|{rec.width}|{rec.height}|".encode())
            digest.update(np.ascontiguousarray(rec.boxes, dtype=np.float32).tobytes())
            digest.update(np.ascontiguousarray(rec.labels, dtype=np.int64).tobytes())
            if len(
                rec.crowd_labels
            ):  # only then: the fingerprints of data without crowd regions stay as they were
                digest.update(b"crowd|" + np.ascontiguousarray(rec.crowd_boxes, dtype=np.float32).tobytes())
                digest.update(np.ascontiguousarray(rec.crowd_labels, dtype=np.int64).tobytes())
        result[name] = {
            "images": len(data.records),
            "classes": list(data.class_names),
            "sha256": digest.hexdigest()[:16],
        }
    return result
