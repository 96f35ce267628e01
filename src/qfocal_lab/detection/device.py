"""Where a run computes: the device (:func:`resolve_device`), the thread count (:func:`pick_threads`), the
autocast dtype (:func:`amp_dtype`), and the rank and world size of a DDP run launched by torchrun.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from .config import ConfigError

_DEFAULT_THREADS = torch.get_num_threads()


def pick_threads(requested: int = 0) -> int:
    """CPU threads for a run: ``requested`` if positive, else torch's default, except 1 when the 1-minute load
    average already exceeds the core count by more than half a core. OpenMP threads that wait for each other on
    an oversubscribed machine ran a training step 10-25x slower than one thread (0.17 s vs 2-4 s here)."""
    if requested > 0:
        return int(requested)
    n = _DEFAULT_THREADS
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return n
    return 1 if n > 1 and load > (os.cpu_count() or n) + 0.5 else n


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None``: full precision). ``auto`` uses bf16 on GPUs that
    support it (else fp16) and on CPUs with AMX / AVX512-BF16, where it is faster; fp32 elsewhere."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp: fp16 autocast is for CUDA; use bf16 or off on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else None


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
