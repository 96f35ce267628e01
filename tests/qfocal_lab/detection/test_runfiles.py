"""A run's folder (qfocal_lab.detection.runfiles): an output folder that cannot be written is refused before
training, and a full disk is one line that keeps the last checkpoint."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
import torch

from qfocal_lab.detection import TrainConfig, compare, load_checkpoint, train
from qfocal_lab.detection.train import RunOutputError
from tests.conftest import one_line_error as _one_line
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def _cfg(data, out, **kw) -> TrainConfig:
    return tiny_config(data, out, **{"plots": False, **kw})


@pytest.mark.parametrize(
    "where", ["too long", "under a file", "last.pt a folder", ".lock a folder", "metrics.json a folder"]
)
def test_unwritable_out_is_refused_before_training(data, tmp_path, capsys, where, monkeypatch):
    trained = []
    monkeypatch.setattr(sys.modules["qfocal_lab.detection.train"], "_run", lambda *a, **k: trained.append(1))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = tmp_path / "out"
    if where == "too long":
        out = tmp_path / ("x" * 300)
    elif where == "under a file":
        out = a_file / "run"
    else:
        (out / where.split()[0]).mkdir(parents=True)
    with pytest.raises(RunOutputError, match=rf"--out {out}"):
        train(_cfg(data, out), log=lambda m: None)
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--imgsz", "64", "--batch", "4"]
    _one_line(
        capsys,
        [*argv, "--amp", "off", "--threads", "1", "--no-progress"],
        2 if where == "too long" else 1,
    )
    if where in ("too long", "under a file", ".lock a folder"):  # the others are no files of a compare
        with pytest.raises(RunOutputError):
            compare(_cfg(data, out), losses=["focal"], seeds=[0], out=out, log=lambda m: None)
    assert not trained


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(data, tmp_path, capsys, monkeypatch):
    """The disk fills up while epoch 2's checkpoint is written: one line, and epoch 1's last.pt survives."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--imgsz", "64", "--batch", "4"]
    argv += ["--amp", "off", "--threads", "1", "--no-progress", "--no-plots"]
    real, saved = torch.save, []

    def full(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        saved.append(Path(f).read_bytes() if len(saved) == 0 else b"")
        if len(saved) > 1:  # part of it written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    line = _one_line(capsys, argv, 1)
    assert f"cannot write {out / 'last.pt'}: No space left on device; the previous last.pt is kept" in line
    assert (out / "last.pt").read_bytes() == saved[0]
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
