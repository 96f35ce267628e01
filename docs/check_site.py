"""Check the built site in a headless browser: ``python docs/check_site.py [docs/_build/html]`` (``make docs-check``).

1. Every relative ``href``/``src`` of every built page resolves to an existing file, and a ``#fragment`` to an
   ``id`` in that file (external links are not followed: the check runs offline).
2. Chromium (Debian's ``chromium`` package) opens the start page and the YOLOv5 page; ``_static/img-check.js``
   writes into the DOM, once the page has loaded, how many images it has and which did not decode
   (``complete`` and ``naturalWidth > 0``); ``--dump-dom`` reads that back. Each page must have its title and at
   least one image, and no broken one.
3. A screenshot of the start page is kept as ``<site>/../screenshots/index.png`` (1280 x 1600).

Exit status 0 when all holds; otherwise 1, with one line per fault.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

PAGES = {"index.html": "qfocal", "frameworks/yolov5.html": "YOLOv5"}


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" and value:
                self.ids.add(value)
            elif key in ("href", "src") and value and tag in ("a", "img", "link", "script"):
                self.refs.append(value)


def _parse(path: Path) -> _Refs:
    parser = _Refs()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_links(site: Path) -> list[str]:
    """Every relative reference of every page that does not resolve, as ``page: ref (why)``."""
    faults, ids = [], {}
    for page in sorted(site.rglob("*.html")):
        for ref in _parse(page).refs:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith("//"):
                continue  # external: cannot be checked offline
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                faults.append(f"{page.relative_to(site)}: {ref} (no such file)")
                continue
            if parts.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = _parse(target).ids
                if unquote(parts.fragment) not in ids[target]:
                    faults.append(f"{page.relative_to(site)}: {ref} (no id {parts.fragment!r} there)")
    return faults


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_args(exe: str) -> list[str]:
    args = [exe, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


def rendered(exe: str, page: Path) -> str:
    """The page's DOM after load, as Chromium rendered it."""
    out = subprocess.run(
        [*_browser_args(exe), "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


def image_faults(exe: str, site: Path) -> list[str]:
    faults = []
    for name, title in PAGES.items():
        dom = rendered(exe, site / name)
        found = re.search(r'id="qfocal-img-check"[^>]*data-images="(\d+)"[^>]*data-broken="([^"]*)"', dom)
        if found is None:
            faults.append(f"{name}: the image check did not run (page not rendered?)")
            continue
        images, broken = int(found.group(1)), found.group(2).split()
        if title not in dom:
            faults.append(f"{name}: title {title!r} not in the rendered page")
        if images == 0:
            faults.append(f"{name}: no image rendered")
        faults += [f"{name}: image {src} did not load" for src in broken]
    return faults


def screenshot(exe: str, site: Path) -> Path:
    shot = site.parent / "screenshots" / "index.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *_browser_args(exe),
            f"--screenshot={shot}",
            "--window-size=1280,1600",
            (site / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return shot


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    site = Path(argv[0] if argv else Path(__file__).parent / "_build" / "html").resolve()
    if not (site / "index.html").is_file():
        print(f"check_site: error: {site / 'index.html'} not found; run make docs first", file=sys.stderr)
        return 1
    faults = broken_links(site)
    exe = chromium()
    if exe is None:
        print("check_site: error: chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 1
    faults += image_faults(exe, site)
    shot = screenshot(exe, site)
    if not shot.is_file() or shot.stat().st_size == 0:
        faults.append(f"no screenshot written to {shot}")
    for fault in faults:
        print(f"check_site: {fault}", file=sys.stderr)
    pages = len(list(site.rglob("*.html")))
    print(f"check_site: {pages} pages, {len(faults)} fault(s); screenshot {shot}")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
