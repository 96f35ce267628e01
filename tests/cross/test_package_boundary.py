"""The package boundary, read from the import graph of the source: the library (``qfocal``) never imports the lab
(``qfocal_lab``), and the lab uses only the library's public API (no ``qfocal._x`` module, no ``_name``)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every import in ``path``, relative imports resolved; ``name`` is None for
    ``import module``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found += [(node.lineno, module, alias.name) for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, None))
    return found


def _sources(package: str) -> list[Path]:
    files = sorted((SRC / package).rglob("*.py"))
    assert files, f"no source files under {SRC / package}"
    return files


def test_the_library_never_imports_the_lab():
    offending = [
        f"{path.relative_to(SRC)}:{line}: {module}"
        for path in _sources("qfocal")
        for line, module, _ in _imports(path)
        if module == "qfocal_lab" or module.startswith("qfocal_lab.")
    ]
    assert not offending, "the library imports the lab:\n" + "\n".join(offending)


def _private_uses(path: Path) -> list[str]:
    """The imports in ``path`` of a private module or name of the library."""
    offending = []
    for line, module, name in _imports(path):
        if module != "qfocal" and not module.startswith("qfocal."):
            continue
        private = [part for part in module.split(".") if part.startswith("_")]
        if name is not None and name.startswith("_"):
            private.append(name)
        if private:
            offending.append(f"{path.relative_to(SRC)}:{line}: {module} {name or ''}".rstrip())
    return offending


def test_the_lab_uses_only_the_public_api_of_the_library():
    offending = [use for path in _sources("qfocal_lab") for use in _private_uses(path)]
    assert not offending, "the lab uses private parts of the library:\n" + "\n".join(offending)


@pytest.mark.parametrize("package", ["qfocal", "qfocal_lab"])
def test_the_import_graph_is_read(package):
    """The reader above finds imports at all (a parser that found none would pass every check)."""
    modules = {module for path in _sources(package) for _, module, _ in _imports(path)}
    assert "torch" in modules
    if package == "qfocal_lab":
        assert any(m == "qfocal" or m.startswith("qfocal.") for m in modules)
        assert any(m.startswith("qfocal_lab.") for m in modules)  # relative imports resolved


def test_a_private_import_is_caught(tmp_path, monkeypatch):
    """The public-API check flags ``from qfocal._x import y`` and ``from qfocal.x import _y``."""
    lab = tmp_path / "qfocal_lab"
    lab.mkdir()
    (lab / "bad.py").write_text(
        "import torch\nfrom qfocal._checks import check_target\nfrom qfocal.cli import _main\n"
    )
    (lab / "good.py").write_text("from qfocal.cli import CommandError\nfrom . import bad\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert _private_uses(lab / "bad.py") == [
        "qfocal_lab/bad.py:2: qfocal._checks check_target",
        "qfocal_lab/bad.py:3: qfocal.cli _main",
    ]
    assert _private_uses(lab / "good.py") == []
    assert (2, "qfocal_lab.bad", None) not in _imports(lab / "good.py")
    assert (2, "qfocal_lab", "bad") in _imports(lab / "good.py")
