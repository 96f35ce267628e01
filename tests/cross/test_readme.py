"""The README's and the site's examples that other tests do not cover run as written, with assertions."""

from __future__ import annotations

from tests.conftest import README, doc_python_blocks, readme_python_blocks


def test_readme_quick_start_runs_and_trains():
    blocks = readme_python_blocks()
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)
    loss = namespace["loss"]
    assert loss.ndim == 0 and bool(loss.isfinite())
    assert namespace["model"].weight.grad is not None


def test_readme_mentions_both_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_first_screen_answers_and_links():
    """The first 40 lines: the set-up commands, the example, the picture, the answer with its numbers and files."""
    head = "\n".join(README.read_text().splitlines()[:40])
    for needed in ("make demo", "make test", "```python", "docs/losses.png", "+2.3", "+0.6", "keep BCE"):
        assert needed in head, f"README's first screen lacks {needed!r}"
    assert "benchmarks/FRAMEWORKS.md" in head and "benchmarks/DETECT.md" in head
    assert len(README.read_text().splitlines()) <= 150


def test_docs_torchvision_example_trains_and_detects():
    block = next(b for b in doc_python_blocks("docs/frameworks/torchvision.md") if "fcos_tiny" in b)
    namespace: dict = {}
    exec(compile(block, "docs torchvision example", "exec"), namespace)
    losses, detections = namespace["losses"], namespace["detections"]
    assert {"classification", "bbox_regression"} <= set(losses)
    assert all(bool(v.isfinite()) for v in losses.values())
    assert len(detections) == 2 and {"boxes", "scores", "labels"} <= set(detections[0])
    assert any(p.grad is not None for p in namespace["model"].parameters())
