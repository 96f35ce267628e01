"""What a figure depends on beside the code: the CPU (or GPU) model, the resolved autocast dtype, the thread count
and the library versions, recorded with every run and compare so that two numbers can be told apart by machine."""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

__all__ = ["cpu_model", "run_facts"]


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), with ``+avx512_bf16`` or
    ``+amx_bf16`` when the CPU has them (they decide what ``--amp auto`` picks)."""
    name, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not name and key.strip() == "model name":
                name = value.strip()
            elif not flags and key.strip() == "flags":
                flags = value
            if name and flags:
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return name + "".join(f" +{f}" for f in extras)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run_facts(
    *, threads: int, dtype: torch.dtype | None, device: str | torch.device = "cpu", **packages: str
) -> dict:
    """The facts a figure depends on: ``device`` (the GPU's name on CUDA), ``cpu``, ``threads``, ``autocast`` (the
    resolved dtype: ``"fp32"`` without autocast, ``"bf16"``, ``"fp16"``), and the versions of torch, qfocal and each
    of ``packages`` (``name="distribution"``, e.g. ``ultralytics="ultralytics"``)."""
    device = torch.device(device)
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32", torch.float32: "fp32"}
    facts = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "threads": int(threads),
        "autocast": names.get(dtype, str(dtype)),
        "torch": torch.__version__,
        "qfocal": _version("qfocal"),
    }
    facts.update({name: _version(dist) for name, dist in packages.items()})
    return facts
