"""mmdetection's own loss files, loaded as shipped, for the tests that compare qfocal with them.

``import mmdet.models`` imports every detector, and with them mmcv's compiled operators (``mmcv._ext``), which
mmcv-lite (the only mmcv that installs without a compiler) lacks. The loss files themselves need only torch,
``mmdet.registry`` and, in ``focal_loss.py``, ``mmcv.ops.sigmoid_focal_loss`` (its CUDA path). :func:`load`
therefore executes ``mmdet/models/losses/{utils,accuracy,gfocal_loss,varifocal_loss,focal_loss}.py`` under their
real module names while the two packages above them are stood in by empty packages that point at the real
folders, and ``mmcv.ops`` by a module whose ``sigmoid_focal_loss`` raises. The stand-ins leave ``sys.modules``
afterwards, so a later ``import mmdet.models`` is not fooled. With a full mmcv the real package is imported.

Loading registers mmdetection's loss classes in ``mmdet.registry.MODELS``, as importing mmdet.models would.
Without compiled ops it also marks that registry as imported: otherwise its first ``get`` or ``build`` imports
its location ``mmdet.models`` and fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

_FILES = ("utils", "accuracy", "gfocal_loss", "varifocal_loss", "focal_loss")
_STUBS = ("mmdet.models", "mmdet.models.losses", "mmcv.ops")
_loaded: types.SimpleNamespace | None = None


def _cuda_only(*args, **kwargs):
    raise RuntimeError("mmcv.ops.sigmoid_focal_loss (CUDA) is not available: mmcv-lite has no compiled ops")


def _package(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    module.__package__ = name
    return module


def _load_with_stubs() -> dict[str, types.ModuleType]:
    import mmdet.registry  # noqa: F401 - the real registry, imported before the stand-ins exist

    spec = importlib.util.find_spec("mmdet")
    losses_dir = Path(spec.origin).parent / "models" / "losses"
    ops = types.ModuleType("mmcv.ops")
    ops.sigmoid_focal_loss = _cuda_only
    before = set(sys.modules)
    sys.modules["mmdet.models"] = _package("mmdet.models", losses_dir.parent)
    sys.modules["mmdet.models.losses"] = _package("mmdet.models.losses", losses_dir)
    sys.modules["mmcv.ops"] = ops
    try:
        modules = {}
        for name in _FILES:
            full = f"mmdet.models.losses.{name}"
            if full in sys.modules:  # accuracy.py is also reached by focal_loss.py's relative import
                modules[name] = sys.modules[full]
                continue
            file_spec = importlib.util.spec_from_file_location(full, losses_dir / f"{name}.py")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[full] = module
            file_spec.loader.exec_module(module)
            modules[name] = module
        return modules
    finally:
        for name in set(sys.modules) - before:
            if name.startswith(_STUBS):
                del sys.modules[name]


def load() -> types.SimpleNamespace:
    """mmdetection's loss modules: ``.utils``, ``.gfocal_loss``, ``.varifocal_loss``, ``.focal_loss``."""
    global _loaded
    if _loaded is None:
        if importlib.util.find_spec("mmcv._ext") is not None:
            modules = {name: importlib.import_module(f"mmdet.models.losses.{name}") for name in _FILES}
        else:
            modules = _load_with_stubs()
            from mmdet.registry import MODELS

            MODELS._imported = True  # its location, mmdet.models, cannot be imported without mmcv._ext
        _loaded = types.SimpleNamespace(**modules)
    return _loaded
