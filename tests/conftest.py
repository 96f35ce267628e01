"""Shared pytest set-up: the slow marker, offline switches, and the tolerance table keyed by dtype."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

import qfocal.functional as QF
import qfocal.modules

# No test may touch the network: frameworks are told so before they are imported.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# (rtol, atol) per dtype, kornia's _DTYPE_PRECISIONS style.
DTYPE_PRECISIONS = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the long cases marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, rtol=None, atol=None) -> None:
    """torch.testing.assert_close with the tolerance of ``expected``'s dtype and a message naming the tensor."""
    if rtol is None or atol is None:
        rtol, atol = DTYPE_PRECISIONS.get(expected.dtype, (1e-5, 1e-6))
    actual = actual.to(expected.dtype) if actual.dtype != expected.dtype else actual
    diff = (actual.double() - expected.double()).abs()
    largest = diff.max().item() if diff.numel() else 0.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=rtol,
        atol=atol,
        equal_nan=False,
        msg=lambda m: f"{name}: largest |diff| {largest:.3e}\n{m}",
    )


@pytest.fixture
def network_guard(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every socket connection, DNS look-up, download or pip/git/curl subprocess is recorded and refused."""
    attempts: list = []

    def refuse(what):
        def _refuse(*args, **kwargs):
            attempts.append((what, args[1:] if what == "connect" else args))
            raise OSError(f"network access in a test: {what}")

        return _refuse

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("download_url_to_file"))
    popen_init = subprocess.Popen.__init__

    def popen(self, args, *rest, **kwargs):
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        if any(word in text for word in ("pip", "git", "curl", "wget", "uv ")):
            attempts.append(("subprocess", text))
            raise OSError(f"subprocess in a test: {text}")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    return attempts


@pytest.fixture
def qfl_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Counts the calls of qfocal.functional.quality_focal_loss made by qfocal's QFL modules (their ``loss_fn``
    seam), which every integration builds."""
    calls: list = []
    original = QF.quality_focal_loss

    def spy(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return original(*args, **kwargs)

    for cls in (qfocal.modules.QualityFocalLoss, qfocal.modules.QFocalLoss):
        monkeypatch.setattr(cls, "loss_fn", staticmethod(spy))
    return calls


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def doc_python_blocks(path: str | Path, section: str | None = None) -> list[str]:
    """The ```python examples of a Markdown page (a path relative to the repository root, or absolute), or of its
    ``## section`` only."""
    text = (ROOT / path).read_text()
    if section is not None:
        text = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def readme_python_blocks(section: str | None = None) -> list[str]:
    """The ```python examples of README.md, or of its ``## section`` only."""
    return doc_python_blocks(README, section)


@pytest.fixture(scope="session")
def mmdet_losses():
    """mmdetection's loss modules as shipped (see mmdet_oracle); skips where mmdet or mmengine is missing."""
    pytest.importorskip("mmengine")
    pytest.importorskip("mmdet")
    from tests.mmdet_oracle import load

    return load()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A 10-image synthetic dataset (8 train / 2 val, 64 px) for one-epoch trainer runs."""
    from qfocal_lab.data import generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, images=10, seed=0, imgsz=64, min_size=6, val_fraction=0.2, mean_objects=3)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 6-image synthetic dataset (64 px) for the reader tests; never modified (see ``ds``)."""
    from qfocal_lab.data import generate_dataset

    root = tmp_path_factory.mktemp("base")
    generate_dataset(root, images=6, seed=0, imgsz=64, min_size=4)
    return root


@pytest.fixture
def ds(base, tmp_path):
    """A private copy of ``base`` that a test may damage."""
    root = tmp_path / "ds"
    shutil.copytree(base, root)
    return root


def tiny_config(data, out, **kw):
    """A :class:`~qfocal_lab.detection.TrainConfig` of one quick epoch on :func:`tiny_data` (overrides in ``kw``)."""
    from qfocal_lab.detection import TrainConfig

    base = {
        "epochs": 1,
        "imgsz": 64,
        "batch": 4,
        "amp": "off",
        "progress": False,
        "warmup_iters": 1,
        "threads": 1,
    }
    return TrainConfig(data=str(data), out=str(out), **{**base, **kw})


def one_line_error(capsys, argv, code):
    """Run ``qfocal argv``: exit ``code``, no traceback, exactly one ``error:`` line, which is returned."""
    from qfocal.cli import main

    try:
        got = main(argv)
    except SystemExit as exc:
        got = exc.code
    err = capsys.readouterr().err
    assert got == code, f"{argv}: exit {got}, expected {code}\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]
