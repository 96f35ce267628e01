"""The package's structure: imports point one way (no cycle), the core needs torch only, and ``import qfocal`` stays
light (no triton, torchvision or matplotlib)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: modules of qfocal it imports}``, read from the source (imports inside functions included)."""
    root = src / "qfocal"
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            graph[name].update(c for c in candidates if c in modules and c != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "qfocal.functional" in graph and "qfocal.ops._op" in graph
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_layers_point_one_way():
    graph = import_graph()
    assert graph["qfocal._reference"] == set() and graph["qfocal._names"] == set()
    ops = [m for m in graph if m == "qfocal.ops" or m.startswith("qfocal.ops.")]
    for module in ops:
        above = {m for m in _reaches(graph, module) if not m.startswith("qfocal.ops")}
        assert above <= {"qfocal._reference", "qfocal._names"}, f"{module} imports {sorted(above)}"
    assert not any(m.startswith("qfocal.ops") for m in graph["qfocal.functional"])
    for core in ("qfocal.functional", "qfocal.modules", "qfocal._backend"):
        reached = _reaches(graph, core)
        assert not any(m.split(".")[1] in ("integrations", "detection", "data", "bench") for m in reached), (
            core
        )


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_import_qfocal_is_light():
    result = _run(
        "import sys, qfocal; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'triton', 'torchvision', 'matplotlib', 'PIL', 'yolov5', 'ultralytics', 'mmdet'}))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


# A core install (torch only): the harness and framework modules cannot be imported.
_BLOCK = """
import importlib.abc, sys
BLOCKED = {"numpy", "tqdm", "matplotlib", "PIL", "torchvision", "pycocotools", "yaml", "yolov5", "ultralytics",
           "kornia", "mmdet", "mmengine"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in BLOCKED else _find_spec(name, *a)
"""


def test_core_install_needs_torch_only():
    code = _BLOCK + (
        "import torch, qfocal\n"
        "x = torch.randn(6, 3, requires_grad=True)\n"
        "loss = qfocal.quality_focal_loss(x, torch.rand(6, 3))\n"
        "loss.backward()\n"
        "m = qfocal.build_loss('qfocal')\n"
        "print(float(loss) > 0, x.grad is not None, type(m).__name__)\n"
    )
    result = _run(code, {"QFOCAL_BACKEND": "eager"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "QualityFocalLoss"]


@pytest.mark.parametrize(
    "argv, extra",
    [(["train"], "lab"), (["compare", "--epochs", "1"], "lab"), (["data", "synth"], "lab")],
)
def test_core_install_cli_names_the_missing_extra(argv, extra):
    code = _BLOCK + (
        "from qfocal.cli import main\n"
        "try:\n    code = main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        f"print('help', code)\nprint('cmd', main({argv!r}))\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "help 0" in result.stdout and "cmd 1" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"qfocal {' '.join(argv[:1])}: error: needs "), (
        result.stderr
    )
    assert errors[0].endswith(f'pip install "qfocal[{extra}]"'), result.stderr
