"""``qfocal yolov5-train``: YOLOv5's own parser for its arguments, qfocal's options merged into the hyp."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType

from ..._cli import CommandError
from .._offline import _Patches

__all__ = ["run_command"]

from .loss import LOSS_KEYS
from .train import _full_hyp, _write_hyp, load_train_module, patch_train


# ----------------------------------------------------------------------------------------------------------
# Command line: `qfocal yolov5-train ...` and `python -m qfocal.integrations.yolov5 ...`
# ----------------------------------------------------------------------------------------------------------
def run_command(
    args: argparse.Namespace, yolov5_args: Sequence[str], train_module: ModuleType | None = None
) -> int:
    """Parse ``yolov5_args`` with YOLOv5's own parser, merge qfocal's options into its hyp, and train."""
    module = load_train_module(train_module)
    overrides = {key: getattr(args, key) for key in LOSS_KEYS if hasattr(args, key)}
    patches = _Patches()
    try:
        # train from scratch unless told otherwise: YOLOv5's default --weights yolov5s.pt is a download
        patches.setattr(sys, "argv", [f"{module.__name__}.py", "--weights", "", *yolov5_args])
        opt = module.parse_opt()
    finally:
        patches.undo()
    if not getattr(opt, "cfg", "x") and not getattr(opt, "weights", ""):
        opt.cfg = (
            "yolov5n.yaml"  # YOLOv5 asserts "either --cfg or --weights"; from scratch, the smallest model
        )
    with tempfile.TemporaryDirectory(prefix="qfocal-yolov5-") as tmp:
        try:
            hyp = _full_hyp(module, opt.hyp, overrides)
        except (TypeError, ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc), usage=True) from None
        opt.hyp = _write_hyp(hyp, tmp)
        with patch_train(module, offline_mode=not getattr(args, "online", False)):
            module.main(opt)
    return 0
