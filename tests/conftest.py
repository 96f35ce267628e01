"""Shared pytest set-up: the slow marker, offline switches, and the tolerance table keyed by dtype."""

from __future__ import annotations

import os

import pytest
import torch

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
