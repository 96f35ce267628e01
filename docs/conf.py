"""Sphinx configuration of qfocal's documentation site (``make docs`` builds it into docs/_build/html).

Why Sphinx, furo and myst-parser: the docstrings of qfocal and qfocal_lab already use Sphinx roles (``:func:``,
``:class:``, ``:mod:``), which Sphinx resolves into links (autodoc reads them, napoleon reads their Google-style
sections); myst-parser keeps the pages in Markdown, so the same ```python blocks stay runnable by the tests
(tests/cross/test_docs.py executes every one of them).

``make docs`` builds with ``-W --keep-going``: any warning fails the build, including a missing image, a broken
internal link, an unknown document in a toctree or a cross-reference that does not resolve. External links cannot
be checked here (the build runs without network), so ``linkcheck`` is not part of the build; ``make docs-check``
opens the built pages in a headless browser and checks every relative link and image.
``nitpicky`` stays off: with it on, every type in a signature (``torch.Tensor``, ``argparse.Namespace``) would
need an intersphinx inventory, which cannot be downloaded offline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import qfocal  # noqa: E402

project = "qfocal"
author = "qfocal contributors"
copyright = "qfocal contributors"
release = qfocal.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "cli_help",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**/_build"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_js_files = ["img-check.js"]
html_theme = "furo"
html_title = f"qfocal {release}"

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = False
linkcheck_ignore = [r"https?://.*"]  # no network where the site is built
