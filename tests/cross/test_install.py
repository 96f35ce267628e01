"""The two installs, each in an empty virtual environment: ``pip install qfocal`` (torch only) gives the losses and
the library's commands, and the lab's commands name the extra to install; ``qfocal[lab]`` gives the harness.

The wheel is built from this checkout and installed without dependencies into a new venv. The dependencies come
from this environment, but only those the wheel's metadata asks for: a folder of links to the installed
distributions in the closure of ``torch`` (and of the ``lab`` extra's requirements), put on the venv's path by a
``.pth`` file. So nothing else of this environment (numpy, the frameworks) is importable there, and no network is
needed. The slow variant installs for real with pip, dependencies included.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """The distributions (installed here) that ``requirements`` need, transitively, without optional extras."""
    seen: set[str] = set()
    stack = [m.group(0) for r in requirements if (m := _NAME.match(r))]
    while stack:
        name = _canonical(stack.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        stack += [m.group(0) for r in dist.requires or [] if "extra ==" not in r and (m := _NAME.match(r))]
    return seen


def _link_farm(dists: set[str], farm: Path) -> None:
    """Links in ``farm`` to the top-level files and folders of each installed distribution."""
    farm.mkdir(parents=True, exist_ok=True)
    for name in dists:
        dist = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(str(dist.locate_file(top)))
            target = farm / top
            if source.exists() and not target.exists():
                target.symlink_to(source)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("qfocal-*.whl")
    return found


def _requirements(wheel: Path, extra: str | None) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    if extra is None:
        return [r for r in reqs if "extra ==" not in r]
    return [r.split(";")[0] for r in reqs if re.search(rf"extra\s*==\s*['\"]{extra}['\"]", r)]


def _empty_venv(path: Path, wheel: Path, dists: set[str]) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    farm = path / "deps"
    _link_farm(dists, farm)
    (site / "deps.pth").write_text(str(farm) + "\n")
    # the wheel, unpacked as pip would (no dependencies): its packages, its metadata, the console script
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return python


def _run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(YOLO_OFFLINE="1", QFOCAL_BACKEND="eager", MPLBACKEND="Agg")
    return subprocess.run(
        [str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


_CORE = """
import importlib.util, torch, qfocal
from qfocal.cli import main
x = torch.randn(6, 3, requires_grad=True)
qfocal.quality_focal_loss(x, torch.rand(6, 3)).backward()
print("loss ok", x.grad is not None)
print("absent", [m for m in ("numpy", "PIL", "torchvision", "matplotlib", "yolov5") if importlib.util.find_spec(m)])
print("file", qfocal.__file__)
print("table", main(["table"]))
print("train", main(["train"]))
"""

_LAB = """
from qfocal.cli import main
import qfocal_lab.data, qfocal_lab.models
print("synth", main(["data", "synth", "--out", "toy", "--images", "8", "--imgsz", "64"]))
model = qfocal_lab.models.fcos_tiny(2, loss="qfl", imgsz=64)
print("model", type(model).__name__)
"""


def test_core_install_in_an_empty_venv_gives_the_losses(wheel, tmp_path):
    requirements = _requirements(wheel, None)
    assert [_canonical(_NAME.match(r).group(0)) for r in requirements] == ["torch"], requirements
    python = _empty_venv(tmp_path / "venv", wheel, _closure(requirements))
    result = _run(python, _CORE, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "loss ok True" in out and "absent []" in out, out
    assert str(tmp_path / "venv") in out.split("file ", 1)[1].splitlines()[0]  # the installed copy, not src/
    assert "table 0" in out and "train 1" in out, out
    assert (
        "qfocal train: error: needs numpy" in result.stderr and 'pip install "qfocal[lab]"' in result.stderr
    )


def test_lab_install_in_an_empty_venv_gives_the_harness(wheel, tmp_path):
    lab = _requirements(wheel, "lab")
    names = {_canonical(_NAME.match(r).group(0)) for r in lab}
    assert {"numpy", "torchvision", "pycocotools", "matplotlib", "pillow"} <= names, lab
    python = _empty_venv(tmp_path / "venv", wheel, _closure([*_requirements(wheel, None), *lab]))
    result = _run(python, _LAB, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synth 0" in result.stdout and "model QualityFCOS" in result.stdout, result.stdout
    assert (tmp_path / "toy").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["", "[lab]"])
def test_pip_install_in_an_empty_venv(wheel, tmp_path, extra):
    """pip itself resolves and installs the dependencies (from the package index; torch is large)."""
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}{extra}"],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    result = _run(python, _LAB if extra else _CORE, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("synth 0" if extra else "loss ok True") in result.stdout, result.stdout
