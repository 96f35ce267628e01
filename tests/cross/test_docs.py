"""Every ```python block of README.md and docs/**/*.md runs; the site builds strictly and renders in Chromium.

A block that a named test already executes with assertions is listed in COVERED (a substring found in exactly
one block -> the test); every other block runs here as written, in a temporary working directory, offline.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, doc_python_blocks

PAGES = [
    Path("README.md"),
    *sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts),
]

COVERED = {
    "loss = qfocal.quality_focal_loss(model(torch.randn(256, 16))": (
        "tests/cross/test_readme.py::test_readme_quick_start_runs_and_trains"
    ),
    "fcos_tiny(6, loss=": "tests/cross/test_readme.py::test_docs_torchvision_example_trains_and_detects",
    "opt = qy.train(": "tests/qfocal/integrations/test_yolov5.py::test_docs_examples_run_offline",
    "ComputeLoss(model)(model(imgs), targets)": "tests/qfocal/integrations/test_yolov5.py::test_docs_examples_run_offline",
    "with patch_train() as train:": "tests/qfocal/integrations/test_yolov5.py::test_docs_examples_run_offline",
    "trainer = qu.train(": "tests/qfocal/integrations/test_ultralytics.py::test_docs_examples_run_offline",
    "trainer=QFocalDetectionTrainer": "tests/qfocal/integrations/test_ultralytics.py::test_docs_examples_run_offline",
    "loss = MODELS.build(dict(type='qfocal.QualityFocalLoss'": (
        "tests/cross/test_loss_faults.py::test_mmdet_losses_build_with_mmcv_lite_through_the_readme_registries"
    ),
    "_base_ = 'mmdet::gfl/gfl_r50_fpn_1x_coco.py'": (
        "tests/qfocal/integrations/test_mmdet.py::test_docs_config_turns_gfl_r50_into_qfocal_losses_with_mmdets_numbers"
    ),
}


def _blocks() -> list[tuple[str, int, str]]:
    return [(str(page), i, block) for page in PAGES for i, block in enumerate(doc_python_blocks(page))]


def _uncovered() -> list[tuple[str, int, str]]:
    return [b for b in _blocks() if not any(key in b[2] for key in COVERED)]


def test_every_covered_block_is_one_block_and_its_test_exists():
    blocks = _blocks()
    for key, test in COVERED.items():
        hits = [f"{page} block {i}" for page, i, block in blocks if key in block]
        assert len(hits) == 1, f"COVERED key {key!r} matches {len(hits)} blocks: {hits}"
        path, name = test.split("::")
        assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), flags=re.M), (
            f"no test {test}"
        )


def test_the_pages_have_examples_to_run():
    assert len(_blocks()) >= 10 and _uncovered()


@pytest.mark.parametrize(
    ("page", "index", "block"), [pytest.param(*b, id=f"{b[0]}-{b[1]}") for b in _uncovered()]
)
def test_doc_block_runs(page, index, block, tmp_path, monkeypatch, network_guard):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(block, f"{page} python block {index}", "exec"), {"__name__": "__docs__"})
    assert network_guard == [], f"{page} python block {index} reached for the network: {network_guard}"


# ----------------------------------------------------------------------------------------------------------
# The site: a strict build, then the headless-browser check (docs/check_site.py)
# ----------------------------------------------------------------------------------------------------------
def _load_check_site():
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "check_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built as `make docs` builds it (warnings are errors), into a temporary folder."""
    for name in ("sphinx", "furo", "myst_parser"):
        pytest.importorskip(name)
    out = tmp_path_factory.mktemp("site") / "html"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"the strict docs build failed:\n{proc.stderr[-4000:]}"
    return out


def test_site_links_resolve_and_results_are_included(site):
    check = _load_check_site()
    assert check.broken_links(site) == []
    frameworks = (site / "results" / "frameworks.html").read_text()
    assert "Fine-tuning from a trained checkpoint" in frameworks  # included from benchmarks/FRAMEWORKS.md
    cli = (site / "cli.html").read_text()
    assert "qfocal compare" in cli and "--losses" in cli  # rendered from the real parser


def test_site_renders_in_chromium_with_its_images(site):
    check = _load_check_site()
    exe = check.chromium()
    if exe is None:
        pytest.skip("chromium not installed (CI installs it: make docs-check)")
    assert check.image_faults(exe, site) == []
    shot = check.screenshot(exe, site)
    assert shot.is_file() and shot.stat().st_size > 10_000
