"""Keep YOLOv5 and Ultralytics off the network while qfocal drives their trainers.

Both frameworks reach for the network on their own: fonts (``check_font``), weights for the AMP check
(``yolo26n.pt`` / ``yolov5n.pt``), ``pip install`` of missing requirements, Hugging Face hub look-ups, dataset
download scripts, PyPI version checks and analytics. :func:`offline` turns all of that off for the duration of a
``with`` block and puts everything back on exit:

* environment: ``YOLO_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``YOLO_AUTOINSTALL=False``, ``YOLOv5_AUTOINSTALL=False``;
* Ultralytics: ``ONLINE = False`` and ``AUTOINSTALL = False`` where its modules read them; ``check_font`` finds
  local fonts only; ``attempt_download_asset`` / ``safe_download`` raise :class:`OfflineError` for anything
  not on disk; ``is_url(check=True)`` answers False without a request;
* YOLOv5: ``check_font`` and ``check_git_status`` do nothing; ``check_online`` is False; ``attempt_download``
  and ``attempt_download_from_hub`` never download; ``check_dataset`` never runs a download script;
  ``check_pil_font`` falls back to PIL's built-in font.

A function is swapped wherever a loaded module holds it (``from x import f`` copies the name), by identity, and
only for the block. Ultralytics computes ``ONLINE`` once, on import: if the block is where Ultralytics is first
imported, it stays offline for the rest of the process (probing the network to undo that would defeat the point).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from PIL import ImageFont

__all__ = ["OfflineError", "offline", "offline_import", "preserved_torch_state"]

_LOG = logging.getLogger("qfocal.integrations")
_MISSING = object()

_ENV = {
    "YOLO_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "False",
    "YOLOv5_AUTOINSTALL": "False",
}


class OfflineError(ConnectionError, FileNotFoundError):
    """Something asked for a download while :func:`offline` was active.

    A ``ConnectionError`` (what the frameworks catch when they are offline) and a ``FileNotFoundError`` (what the
    user sees: the file is not on disk).
    """


class _Patches:
    """A stack of reversible changes to attributes and environment variables."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], object]] = []

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name, _MISSING)
        setattr(obj, name, value)
        self._undo.append(lambda: delattr(obj, name) if old is _MISSING else setattr(obj, name, old))

    def setenv(self, key: str, value: str) -> None:
        old = os.environ.get(key)
        os.environ[key] = value
        self._undo.append(
            lambda: os.environ.pop(key, None) if old is None else os.environ.__setitem__(key, old)
        )

    def replace_everywhere(self, original: Any, replacement: Any) -> int:
        """Rebind every module-level name that refers to ``original``; returns how many were rebound."""
        return self.replace_all({id(original): (original, replacement)})

    def replace_all(self, replacements: dict[int, tuple[Any, Any]]) -> int:
        """One pass over the loaded modules for ``{id(original): (original, replacement)}``."""
        n = 0
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                hit = replacements.get(id(value))
                if hit is not None and hit[0] is value:
                    self.setattr(module, name, hit[1])
                    n += 1
        return n

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


# ----------------------------------------------------------------------------------------------------------
# Ultralytics
# ----------------------------------------------------------------------------------------------------------
def _patch_ultralytics(p: _Patches, swaps: dict[int, tuple[Any, Any]]) -> None:
    try:
        import ultralytics.utils as U
        import ultralytics.utils.checks as C
        import ultralytics.utils.downloads as D
    except ImportError:
        return
    for module in (U, C, sys.modules.get("ultralytics.utils.events")):
        if module is not None and hasattr(module, "ONLINE"):
            p.setattr(module, "ONLINE", False)
    for module in (U, C):
        if hasattr(module, "AUTOINSTALL"):
            p.setattr(module, "AUTOINSTALL", False)

    config_dir = Path(getattr(U, "USER_CONFIG_DIR", Path.home()))
    weights_dir = Path(getattr(U, "WEIGHTS_DIR", Path.cwd()))

    def check_font(font: str = "Arial.ttf") -> Path | str | None:
        """Ultralytics' check_font without the download: a local path or None (callers fall back to PIL's)."""
        name = Path(font).name
        if (config_dir / name).exists():
            return config_dir / name
        try:
            from matplotlib import font_manager

            return next((f.fname for f in font_manager.fontManager.ttflist if font in f.fname), None)
        except Exception:
            return None

    def attempt_download_asset(file: object, *args: object, **kwargs: object) -> str:
        path = Path(str(file).strip().replace("'", ""))
        for candidate in (path, weights_dir / path.name):
            if candidate.exists():
                return str(candidate)
        raise OfflineError(
            f"{file}: not found locally, and downloads are off (qfocal offline mode); build the model from a .yaml "
            "or pass the path of a local .pt"
        )

    def safe_download(url: object = None, file: object = None, *args: object, **kwargs: object) -> NoReturn:
        raise OfflineError(f"{url or file}: downloads are off (qfocal offline mode)")

    def is_url(url: object, check: bool = False) -> bool:
        return False if check else original_is_url(url, check=False)

    # Ultralytics leaves these two unannotated
    original_is_url: Callable[..., bool] = D.is_url
    original_check_amp: Callable[..., bool] = C.check_amp

    def check_amp(model: Any) -> bool:
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            return original_check_amp(model)
        if device.type in {"cpu", "mps"}:
            return False
        try:
            return original_check_amp(model)
        except OfflineError:  # the reference weights are not on disk: what Ultralytics does offline
            _LOG.warning("AMP checks skipped: offline and no local yolo26n.pt; keeping amp=True")
            return True

    for original, replacement in (
        (C.check_font, check_font),
        (D.attempt_download_asset, attempt_download_asset),
        (D.safe_download, safe_download),
        (D.is_url, is_url),
        (C.check_amp, check_amp),
    ):
        swaps[id(original)] = (original, replacement)


# ----------------------------------------------------------------------------------------------------------
# YOLOv5 (the ``yolov5`` pip package, package="yolov5", or the ultralytics/yolov5 repository, package="")
# ----------------------------------------------------------------------------------------------------------
def _patch_yolov5(p: _Patches, package: str, swaps: dict[int, tuple[Any, Any]]) -> None:
    prefix = f"{package}." if package else ""
    general = sys.modules.get(f"{prefix}utils.general")
    downloads = sys.modules.get(f"{prefix}utils.downloads")
    plots = sys.modules.get(f"{prefix}utils.plots")
    if general is None:
        return
    if hasattr(general, "AUTOINSTALL"):
        p.setattr(general, "AUTOINSTALL", False)

    def check_font(font: str = "Arial.ttf", progress: bool = False) -> None:
        return None  # check_dataset only pre-fetches the font; check_pil_font (below) copes without it

    def check_online() -> bool:
        return False

    def check_git_status(*args: object, **kwargs: object) -> None:
        return None  # it runs `git fetch`

    def attempt_download(file: object, *args: object, **kwargs: object) -> str:
        path = Path(str(file).strip().replace("'", ""))
        if path.exists():
            return str(path)
        raise OfflineError(
            f"{file}: not found locally, and downloads are off (qfocal offline mode); use --weights '' with "
            "--cfg <model>.yaml to train from scratch, or pass the path of a local .pt"
        )

    def attempt_download_from_hub(*args: object, **kwargs: object) -> None:
        return None

    def safe_download(*args: object, **kwargs: object) -> NoReturn:
        raise OfflineError("downloads are off (qfocal offline mode)")

    patched: dict[str, Callable[..., object]] = {
        "check_font": check_font,
        "check_online": check_online,
        "check_git_status": check_git_status,
    }
    for name, replacement in patched.items():
        if hasattr(general, name):
            swaps[id(getattr(general, name))] = (getattr(general, name), replacement)

    original_check_dataset = getattr(general, "check_dataset", None)
    if original_check_dataset is not None:

        def check_dataset(data: object, autodownload: bool = True) -> Any:  # YOLOv5's, unannotated
            return original_check_dataset(data, autodownload=False)

        swaps[id(original_check_dataset)] = (original_check_dataset, check_dataset)

    original_check_file = getattr(general, "check_file", None)
    if original_check_file is not None:

        def check_file(file: object, suffix: str = "") -> Any:  # YOLOv5's, unannotated
            if str(file).startswith(("http:/", "https:/")):
                raise OfflineError(f"{file}: downloads are off (qfocal offline mode); pass a local path")
            return original_check_file(file, suffix)

        swaps[id(original_check_file)] = (original_check_file, check_file)

    if downloads is not None:
        for name, replacement in (
            ("attempt_download", attempt_download),
            ("attempt_download_from_hub", attempt_download_from_hub),
            ("safe_download", safe_download),
            ("curl_download", safe_download),
        ):
            if hasattr(downloads, name):
                swaps[id(getattr(downloads, name))] = (getattr(downloads, name), replacement)

    if plots is not None and hasattr(plots, "check_pil_font"):
        config_dir = Path(getattr(general, "CONFIG_DIR", Path.home()))

        def check_pil_font(
            font: str = "Arial.ttf", size: int = 10
        ) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
            from PIL import ImageFont

            for candidate in (Path(font), config_dir / Path(font).name):
                if candidate.exists():
                    with contextlib.suppress(Exception):
                        return ImageFont.truetype(str(candidate), size)
            return ImageFont.load_default()

        swaps[id(plots.check_pil_font)] = (plots.check_pil_font, check_pil_font)


def _restore_env(key: str, old: str | None) -> None:
    if old is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = old


@contextlib.contextmanager
def preserved_torch_state() -> Iterator[None]:
    """Restore on exit the process-wide switches both trainers' ``init_seeds`` flip: deterministic algorithms,
    cuDNN determinism, ``CUBLAS_WORKSPACE_CONFIG`` and ``PYTHONHASHSEED``."""
    import torch

    p = _Patches()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = getattr(torch.utils.deterministic, "fill_uninitialized_memory", None)
    p.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    for key in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED"):
        p._undo.append(functools.partial(_restore_env, key, os.environ.get(key)))
    try:
        yield
    finally:
        p.undo()
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if fill is not None:
            torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]  # set by torch's module subclass


@contextlib.contextmanager
def offline_import() -> Iterator[None]:
    """Set ``YOLO_OFFLINE=1`` and ``HF_HUB_OFFLINE=1`` unless already set, for an import; restored on exit.

    Ultralytics decides ``ONLINE`` on import with a DNS probe; importing it here skips the probe (and leaves
    Ultralytics' online-only extras, such as its PyPI update check, off for the process). Import ``ultralytics``
    before qfocal's integration to keep them.
    """
    p = _Patches()
    try:
        for key in ("YOLO_OFFLINE", "HF_HUB_OFFLINE"):
            if key not in os.environ:
                p.setenv(key, "1")
        yield
    finally:
        p.undo()


@contextlib.contextmanager
def offline(*, yolov5_package: str | None = "yolov5") -> Iterator[None]:
    """Within the block, YOLOv5 and Ultralytics download nothing and install nothing; restored on exit.

    Args:
        yolov5_package: the package YOLOv5's modules live in: ``"yolov5"`` for the pip package, ``""`` for a
            checkout of the ultralytics/yolov5 repository (modules ``utils.general`` ...), None to leave YOLOv5
            alone. Only modules already imported are patched.

    Example:
        >>> from qfocal.integrations import offline
        >>> with offline():
        ...     pass  # train here
    """
    p = _Patches()
    try:
        for key, value in _ENV.items():
            p.setenv(key, value)
        swaps: dict[int, tuple[Any, Any]] = {}
        _patch_ultralytics(p, swaps)
        if yolov5_package is not None:
            _patch_yolov5(p, yolov5_package, swaps)
        p.replace_all(swaps)
        yield
    finally:
        p.undo()
