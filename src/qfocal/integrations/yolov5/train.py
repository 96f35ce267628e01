"""Training through YOLOv5's own ``train.py``: the reversible patch of its trainer (:func:`patch_train`), the
effective hyp (:func:`effective_hyp`) and one-call :func:`train`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from .._gain import AUTO, check_gain, gain_label
from .._offline import _Patches, offline, offline_import, preserved_torch_state

__all__ = ["check_loss_keys", "effective_hyp", "load_train_module", "patch_train", "stock_hyp", "train"]

from .loss import _OPTION_KEYS, ComputeLoss, _number, _term_setup, build_criterion, criterion_options


# ----------------------------------------------------------------------------------------------------------
# Training through YOLOv5's own train.py
# ----------------------------------------------------------------------------------------------------------
def load_train_module(train_module: ModuleType | None) -> ModuleType:
    if train_module is not None:
        if not hasattr(train_module, "ComputeLoss"):
            raise TypeError(
                f"train_module: expected YOLOv5's train module (it imports ComputeLoss), got {train_module!r}"
            )
        return train_module
    with offline_import():  # yolov5 imports Ultralytics, which probes the network on import otherwise
        import yolov5.train as module

    return module  # type: ignore[no-any-return]  # yolov5 ships no type information


def _package_of(train_module: ModuleType) -> str:
    """``"yolov5"`` for the pip package's ``yolov5.train``, ``""`` for a repository checkout's ``train``."""
    return train_module.__name__.rpartition(".")[0]


class _NumpyWithTrapz(ModuleType):
    """numpy, plus the ``trapz`` that numpy 2.4 removed and YOLOv5 7.0's ``compute_ap`` still calls."""

    def __init__(self, numpy: ModuleType) -> None:
        super().__init__(numpy.__name__)
        self._numpy = numpy
        self.trapz = numpy.trapezoid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._numpy, name)


def _numpy_compat(patches: _Patches, package: str) -> None:
    """Give YOLOv5's metrics module (only) a numpy with ``trapz`` when the installed numpy lacks it."""
    import numpy

    metrics = sys.modules.get(f"{package}.utils.metrics" if package else "utils.metrics")
    if metrics is not None and getattr(metrics, "np", None) is numpy and not hasattr(numpy, "trapz"):
        patches.setattr(metrics, "np", _NumpyWithTrapz(numpy))


def _pillow_compat(patches: _Patches, package: str) -> None:
    """Give the fonts of YOLOv5's plots (only) back ``getsize``, which Pillow 10 removed and YOLOv5 7.0 calls."""
    plots = sys.modules.get(f"{package}.utils.plots" if package else "utils.plots")
    check_pil_font = getattr(plots, "check_pil_font", None)
    if check_pil_font is None:
        return

    def with_getsize(*args: Any, **kwargs: Any) -> Any:  # YOLOv5's check_pil_font, unannotated
        font = check_pil_font(*args, **kwargs)
        if font is not None and not hasattr(font, "getsize") and hasattr(font, "getbbox"):
            font.getsize = lambda text: font.getbbox(text)[2:4]  # what Ultralytics' own Annotator does
        return font

    patches.replace_everywhere(check_pil_font, with_getsize)


def _dataset_path_compat(patches: _Patches, package: str) -> None:
    """Read a data yaml without an absolute ``path`` relative to its own folder, as Ultralytics and qfocal do;
    YOLOv5 7.0 resolves it against its own package folder instead, so no relocatable dataset is found."""
    general = sys.modules.get(f"{package}.utils.general" if package else "utils.general")
    check_dataset = getattr(general, "check_dataset", None)
    if check_dataset is None:
        return

    def relative_to_yaml(
        data: object, *args: Any, **kwargs: Any
    ) -> Any:  # YOLOv5's check_dataset, unannotated
        path = Path(str(data))
        if isinstance(data, (str, Path)) and path.suffix in (".yaml", ".yml") and path.is_file():
            content = _load_yaml(path)
            root = content.get("path")
            if root is None or not Path(str(root)).is_absolute():
                data = {**content, "path": str((path.parent / str(root or ".")).resolve())}
        return check_dataset(data, *args, **kwargs)

    patches.replace_everywhere(check_dataset, relative_to_yaml)


@contextlib.contextmanager
def patch_train(
    train_module: ModuleType | None = None,
    *,
    offline_mode: bool = True,
    compute_loss: Callable[..., ComputeLoss] | None = None,
) -> Iterator[ModuleType]:
    """Within the block, YOLOv5's ``train.py`` builds qfocal's :class:`ComputeLoss` (or ``compute_loss``: a
    subclass, or a function of ``(model, autobalance=False)`` returning one); restored on exit.

    Only the name ``ComputeLoss`` in the train module is rebound (train.py looks it up there). Also for the
    block: with ``offline_mode``, YOLOv5's downloaders (:func:`qfocal.integrations.offline`); a data yaml without
    an absolute ``path`` is read relative to its own folder (as Ultralytics does); and three fixes
    for YOLOv5 7.0 on current libraries: ``np.trapz`` (gone in numpy 2.4) for its ``utils.metrics`` only,
    ``FreeTypeFont.getsize`` (gone in Pillow 10) for its plots' fonts only, and
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` so that torch >= 2.6 loads the checkpoints YOLOv5 writes and reads
    back (load only ``--weights`` you trust, as always with YOLOv5).

    Args:
        train_module: YOLOv5's train module; default ``yolov5.train`` (the pip package). For a checkout of the
            ultralytics/yolov5 repository, pass its ``train`` module (``import train`` from the repository root).
        offline_mode: also keep YOLOv5 off the network for the block.

    Yields:
        the train module.

    Example:
        >>> import yolov5.train  # doctest: +SKIP
        >>> with patch_train() as t:  # doctest: +SKIP
        ...     t.run(data="data.yaml", cfg="yolov5n.yaml", weights="", hyp="hyp.qfl.yaml", imgsz=320)
    """
    module = load_train_module(train_module)
    patches = _Patches()
    with (
        offline(yolov5_package=_package_of(module)) if offline_mode else contextlib.nullcontext(),
        preserved_torch_state(),
    ):
        try:
            patches.setattr(module, "ComputeLoss", compute_loss or ComputeLoss)
            _numpy_compat(patches, _package_of(module))
            _pillow_compat(patches, _package_of(module))
            _dataset_path_compat(patches, _package_of(module))
            if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() not in ("1", "true", "yes", "y"):
                # YOLOv5 7.0 calls torch.load(ckpt) on checkpoints it pickled itself (strip_optimizer,
                # attempt_load): torch >= 2.6 refuses them unless weights_only=False is the default again
                patches.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
            yield module
        finally:
            patches.undo()


def stock_hyp(hyp: str | Path | None = None) -> dict[str, Any]:
    """YOLOv5's hyp file ``hyp`` (a path, or a name in YOLOv5's ``data/hyps``; default ``hyp.scratch-low.yaml``)
    as a dict."""
    return _load_yaml(_resolve_hyp(load_train_module(None), hyp))


def _load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    with open(path, errors="ignore") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"hyp: expected a YAML mapping in {path}, got {type(data).__name__}")
    return data


def _write_hyp(hyp: Mapping[str, Any], directory: str) -> str:
    import yaml

    path = Path(directory) / "hyp.qfocal.yaml"
    path.write_text(yaml.safe_dump(dict(hyp), sort_keys=False))
    return str(path)


def _resolve_hyp(module: ModuleType, hyp: str | Path | None) -> Path:
    if hyp is None:
        return Path(module.__file__).parent / "data" / "hyps" / "hyp.scratch-low.yaml"  # type: ignore[arg-type]  # a file
    path = Path(hyp)
    if path.is_file():
        return path
    found = Path(module.__file__).parent / "data" / "hyps" / path.name  # type: ignore[arg-type]  # a file
    if found.is_file():
        return found
    raise FileNotFoundError(f"hyp: expected a hyperparameter YAML file, got {hyp!s} (not found)")


def _full_hyp(
    module: ModuleType, hyp_file: str | Path | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """A hyp file laid over YOLOv5's stock ``hyp.scratch-low.yaml`` (so one holding only qfocal's keys works), then
    ``overrides``; qfocal's keys are checked before anything else runs, and filled in (:func:`effective_hyp`)."""
    stock = _load_yaml(_resolve_hyp(module, None))
    return effective_hyp({**stock, **_load_yaml(_resolve_hyp(module, hyp_file)), **overrides})


def check_loss_keys(hyp: Mapping[str, Any]) -> None:
    """Check qfocal's hyp keys, names and values, before YOLOv5 scans the dataset: each criterion is built once on
    a stand-in BCE, so a bad value is reported under its hyp key."""
    for key in _OPTION_KEYS:
        _number(hyp, key, None)
    for term in ("obj", "cls"):
        key = f"{term}_loss"
        kind, _ = _term_setup(hyp, term)
        try:
            build_criterion(kind, nn.BCEWithLogitsLoss(), hyp)
        except (TypeError, ValueError) as exc:
            keys = ", ".join(f"{k}={hyp[k]!r}" for k in _OPTION_KEYS if k in hyp)
            raise type(exc)(f"hyp[{key!r}]={hyp.get(key)!r} with {keys or 'the defaults'}: {exc}") from None


def effective_hyp(hyp: Mapping[str, Any]) -> dict[str, Any]:
    """``hyp`` with qfocal's keys checked and filled in with the values :class:`ComputeLoss` will use: both
    criteria by canonical name (a term not named gets YOLOv5's rule's choice), their gains (``"auto"`` or the
    number; YOLOv5's own ``fl_gamma`` focal loss gets ``1.0``), and the options of every criterion in use under
    their own keys. Building :class:`ComputeLoss` from the result gives the same criteria as from ``hyp``; written
    into the run's hyp, it records what the run trained with.

    Raises:
        ValueError, TypeError: a bad name or value, reported under its hyp key.

    Example:
        >>> h = effective_hyp({"obj_loss": "qfocal", "fl_gamma": 0.0})
        >>> {k: h[k] for k in ("obj_loss", "obj_gain", "qfl_beta", "qfl_alpha", "cls_loss", "cls_gain")}
        {'obj_loss': 'qfl', 'obj_gain': 'auto', 'qfl_beta': 2.0, 'qfl_alpha': None, 'cls_loss': 'bce', 'cls_gain': 'auto'}
    """
    check_loss_keys(hyp)
    out = dict(hyp)
    for term in ("obj", "cls"):
        kind, gain = _term_setup(hyp, term)
        given = check_gain(hyp.get(f"{term}_gain", AUTO), what=f"hyp[{term + '_gain'!r}]")
        out[f"{term}_loss"] = kind
        # a named loss keeps what was given ("auto" stays "auto"); YOLOv5's own focal loss of a term not named
        # is named in the record, so it records its gain (1 unless one was given)
        out[f"{term}_gain"] = gain_label(
            given if kind == "bce" or hyp.get(f"{term}_loss") is not None else gain
        )
    for term in ("obj", "cls"):
        out.update(criterion_options(out[f"{term}_loss"], hyp))
    return out


def _yolov5_callbacks(module: ModuleType, callbacks: Mapping[str, Any]) -> Any:
    """A fresh YOLOv5 ``Callbacks`` with ``callbacks`` (event -> function or list of functions) registered."""
    package = _package_of(module)
    with offline_import():
        Callbacks = importlib.import_module(
            f"{package}.utils.callbacks" if package else "utils.callbacks"
        ).Callbacks
    registry = Callbacks()
    for event, functions in callbacks.items():
        for function in functions if isinstance(functions, (list, tuple)) else (functions,):
            registry.register_action(event, name=getattr(function, "__name__", "qfocal"), callback=function)
    return registry


def train(
    *,
    data: str | Path,
    cfg: str | Path = "yolov5n.yaml",
    hyp: str | Path | Mapping[str, Any] | None = None,
    base_hyp: str | Path | None = None,
    weights: str = "",
    train_module: ModuleType | None = None,
    offline_mode: bool = True,
    callbacks: Mapping[str, Any] | None = None,
    compute_loss: Callable[..., ComputeLoss] | None = None,
    **opts: Any,
) -> argparse.Namespace:
    """Train with YOLOv5's own ``train.run`` and qfocal's :class:`ComputeLoss`, offline by default.

    Args:
        data: dataset YAML (YOLOv5 format).
        cfg: model YAML, e.g. ``"yolov5n.yaml"`` (found among YOLOv5's models).
        hyp: a hyp YAML file, or a mapping laid over ``base_hyp``, e.g. ``{"obj_loss": "qfocal"}``.
        base_hyp: the hyp file a mapping ``hyp`` is laid over; default YOLOv5's ``hyp.scratch-low.yaml``.
        weights: initial weights; ``""`` (the default) trains from scratch.
        train_module: YOLOv5's train module (default ``yolov5.train``; a repository checkout's ``train``).
        offline_mode: no downloads or installs during training (:func:`qfocal.integrations.offline`).
        callbacks: YOLOv5 events to functions (or lists of them), e.g.
            :meth:`qfocal.integrations.balance.BalanceLog.yolov5_callbacks`.
        compute_loss: what ``train.py`` builds its loss with (:func:`patch_train`); default :class:`ComputeLoss`.
        **opts: any other ``train.py`` option by its ``opt`` name: ``epochs``, ``imgsz``, ``batch_size``,
            ``device``, ``workers``, ``project``, ``name``, ``exist_ok``, ``noplots``, ``label_smoothing`` ...

    Returns:
        the options YOLOv5 trained with (``opt.save_dir`` is the run folder; ``opt.hyp`` and the run's
        ``hyp.yaml`` hold the effective qfocal keys, :func:`effective_hyp`).

    Example:
        >>> from qfocal.integrations import yolov5
        >>> yolov5.train(data="toy/data.yaml", hyp={"obj_loss": "qfocal"}, epochs=1, imgsz=64)  # doctest: +SKIP
    """
    module = load_train_module(train_module)
    with tempfile.TemporaryDirectory(prefix="qfocal-yolov5-") as tmp:
        if isinstance(hyp, Mapping):
            hyp_path = _write_hyp(_full_hyp(module, base_hyp, hyp), tmp)
        else:
            hyp_path = _write_hyp(_full_hyp(module, hyp, {}), tmp)
        patches = _Patches()
        try:
            patches.setattr(sys, "argv", sys.argv[:1])  # train.run parses sys.argv for its defaults
            with patch_train(module, offline_mode=offline_mode, compute_loss=compute_loss):
                if not callbacks:
                    ran: argparse.Namespace = module.run(
                        data=str(data), cfg=str(cfg), hyp=hyp_path, weights=weights, **opts
                    )
                    return ran
                # train.run with our callbacks: run() passes none to main()
                opt: argparse.Namespace = module.parse_opt(True)
                for key, value in {
                    "data": str(data),
                    "cfg": str(cfg),
                    "hyp": hyp_path,
                    "weights": weights,
                }.items():
                    setattr(opt, key, value)
                for key, value in opts.items():
                    setattr(opt, key, value)
                module.main(opt, callbacks=_yolov5_callbacks(module, callbacks))
                return opt
        finally:
            patches.undo()
