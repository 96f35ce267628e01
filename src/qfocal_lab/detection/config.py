"""The settings of one training run (:class:`TrainConfig`) and their validation; no heavy imports, so the command
line can describe its options without loading torchvision or the data readers."""

from __future__ import annotations

import dataclasses
import math
from typing import TypedDict

from qfocal import loss_name, losses_for
from qfocal.cli import MAX_SEED, max_threads

__all__ = ["AMP_CHOICES", "MODEL_SIZES", "RESUME_KEYS", "ConfigError", "TrainConfig"]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
HARNESS_LOSSES = losses_for("fcos")  # the FCOS heads of qfocal.integrations.torchvision, from the loss table


class _ModelSize(TypedDict):
    """The size keywords of :func:`qfocal_lab.models.fcos_tiny`."""

    widths: tuple[int, ...]
    fpn_channels: int
    head_convs: int


MODEL_SIZES: dict[str, _ModelSize] = {
    "tiny": {"widths": (16, 32, 64, 96, 128), "fpn_channels": 64, "head_convs": 2},
    "small": {"widths": (24, 48, 96, 160, 256), "fpn_channels": 96, "head_convs": 3},
}
# Keys of the config that must match for --resume to continue the same run.
RESUME_KEYS = (
    "data",
    "loss",
    "imgsz",
    "batch",
    "seed",
    "lr",
    "weight_decay",
    "epochs",
    "world_size",
    "model_size",
    "synth_images",
    "synth_seed",
    "synth_difficulty",
    "synth_val",
    "amp",
    "skip_bad",
    "clip_grad",
    "warmup_iters",
    "eval_every",
    "ema_decay",
    "box_bias",
    "init",
)


class ConfigError(ValueError):
    """A setting of a run that cannot work (a bad value, or one that contradicts the data or a checkpoint)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (all primitives, so it goes into the checkpoint as is)."""

    data: str = "synthetic"
    loss: str = "focal"
    epochs: int = 12
    imgsz: int = 128
    batch: int = 16
    seed: int = 0
    out: str = "runs/train"
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_iters: int = 50
    clip_grad: float = 10.0
    amp: str = "auto"
    device: str = "auto"
    skip_bad: bool = False
    allow_outside_root: bool = False
    eval_every: int = 1
    synth_images: int = 400
    synth_seed: int = 0
    synth_difficulty: str = "hard"
    synth_val: int = 0  # validation images of the synthetic set (0: a quarter of synth_images)
    ema_decay: float = 0.0  # evaluate an EMA of the weights with this decay (0: the weights themselves)
    box_bias: float = 0.0  # initial bias of the ReLU'd box-side outputs (0: torchvision's; see fcos_tiny)
    init: str = ""  # a qfocal checkpoint whose backbone (body) weights start the model ("": from scratch)
    model_size: str = "tiny"
    progress: bool = True
    plots: bool = True
    world_size: int = 1
    threads: int = 0
    ddp_timeout: float = 600.0

    def validate(self) -> TrainConfig:
        """Check every setting; return the config with the loss name made canonical (``qfocal`` -> ``qfl``)."""
        try:
            self.loss = loss_name(self.loss, HARNESS_LOSSES)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        if self.amp not in AMP_CHOICES:
            raise ConfigError(f"amp: expected one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.model_size not in MODEL_SIZES:
            raise ConfigError(
                f"model_size: expected one of {', '.join(MODEL_SIZES)}, got {self.model_size!r}"
            )
        if self.synth_difficulty not in ("hard", "easy"):
            raise ConfigError(f"synth_difficulty: expected 'hard' or 'easy', got {self.synth_difficulty!r}")
        if not 0 <= self.threads <= max_threads():
            raise ConfigError(
                f"threads: expected 0 (auto) to {max_threads()} (4x the cores), got {self.threads!r}"
            )
        for name in ("seed", "synth_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
                raise ConfigError(f"{name}: expected an integer in [0, {MAX_SEED}], got {value!r}")
        if not 32 <= self.imgsz <= 4096:
            raise ConfigError(f"imgsz: expected 32 to 4096 pixels, got {self.imgsz!r}")
        for name in ("lr", "weight_decay", "clip_grad", "box_bias", "ddp_timeout"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}: expected a finite number, got {getattr(self, name)!r}")
        if not 0 < self.lr <= 10:
            raise ConfigError(f"lr: expected a learning rate in (0, 10], got {self.lr!r}")
        for name in ("epochs", "imgsz", "batch", "eval_every", "synth_images"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.synth_val < 0 or (self.synth_val and self.synth_val >= self.synth_images):
            raise ConfigError(
                f"synth_val: expected 0 (a quarter) or fewer than synth_images ({self.synth_images}) validation "
                f"images, got {self.synth_val!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay: expected a value in [0, 1) (0 = no EMA), got {self.ema_decay!r}")
        if not math.isfinite(self.box_bias):
            raise ConfigError(f"box_bias: expected a finite number, got {self.box_bias!r}")
        if not isinstance(self.init, str):
            raise ConfigError(f"init: expected a checkpoint path or '', got {self.init!r}")
        if self.imgsz % 32:
            raise ConfigError(
                f"imgsz: expected a multiple of 32 (the stride of the coarsest level), got {self.imgsz}"
            )
        if not self.ddp_timeout > 0:
            raise ConfigError(f"ddp_timeout: expected seconds > 0, got {self.ddp_timeout!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr: expected > 0, got {self.lr!r}")
        return self
