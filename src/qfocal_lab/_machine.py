"""What a published number needs to say about the machine and software it was measured on: the CPU model, the
torch thread count, the torch and framework versions and the resolved autocast dtype (CONVENTIONS.md)."""

from __future__ import annotations

import contextlib
import functools
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

__all__ = ["autocast_name", "cpu_model", "package_version", "run_facts"]


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``), else ``platform.processor()``, else the
    machine type (``x86_64``), with ``+avx512_bf16`` / ``+amx_bf16`` when the CPU has them (they decide what
    ``--amp auto`` picks, and so the numbers of a run)."""
    name = ""
    flags: list[str] = []
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if not name and line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif not flags and line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
            if name and flags:
                break
    name = name or platform.processor() or platform.machine()
    return name + "".join(f" +{f}" for f in ("avx512_bf16", "amx_bf16") if f in flags)


def autocast_name(dtype: torch.dtype | None) -> str:
    """``"fp32"`` for no autocast (``None`` or float32), ``"bf16"``, ``"fp16"``."""
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dtype, str(dtype)
    )


def package_version(package: str) -> str:
    """The installed version of ``package`` (its distribution name), or ``"unknown"``."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def run_facts(
    *, autocast: str, framework: str | None = None, device: str | None = None, threads: int | None = None
) -> dict:
    """The facts every recorded run carries.

    Args:
        autocast: the resolved autocast dtype the run computed in: ``"fp32"`` (none), ``"fp16"`` or ``"bf16"``.
        framework: the distribution whose version to record (``"yolov5"``, ``"ultralytics"``), if any.
        device: the device the run used (``"cpu"``, ``"0"``...); a GPU's name is added for CUDA devices.
        threads: the torch threads of each run (default: this process's count now).

    Returns:
        ``{"autocast", "cpu", "torch_threads", "torch", "framework", "framework_version", "device", "gpu"}``, the
        last four only when given or known.
    """
    facts = {
        "autocast": autocast,
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads() if threads is None else int(threads),
        "torch": torch.__version__,
    }
    if framework is not None:
        facts["framework"] = framework
        facts["framework_version"] = package_version(framework)
    if device is not None:
        facts["device"] = device = str(device)
        if device.startswith("cuda"):
            device = device.partition(":")[2] or "0"
        if device != "cpu" and torch.cuda.is_available():
            index = int(device.split(",")[0]) if device.split(",")[0].isdigit() else 0
            facts["gpu"] = torch.cuda.get_device_name(index)
    return facts
