"""The README's examples run as written."""

from __future__ import annotations

from tests.conftest import README
from tests.conftest import readme_python_blocks as _python_blocks


def test_readme_quick_start_runs_and_trains():
    blocks = _python_blocks()
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)
    loss = namespace["loss"]
    assert loss.ndim == 0 and bool(loss.isfinite())
    assert namespace["model"].weight.grad is not None


def test_readme_mentions_both_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_torchvision_example_trains_and_detects():
    block = next(b for b in _python_blocks() if "fcos_tiny" in b)
    namespace: dict = {}
    exec(compile(block, "README torchvision example", "exec"), namespace)
    losses, detections = namespace["losses"], namespace["detections"]
    assert {"classification", "bbox_regression"} <= set(losses)
    assert all(bool(v.isfinite()) for v in losses.values())
    assert len(detections) == 2 and {"boxes", "scores", "labels"} <= set(detections[0])
    assert any(p.grad is not None for p in namespace["model"].parameters())
