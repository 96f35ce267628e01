"""What a published number needs to say about the machine and software it was measured on: the CPU model, the
torch thread count, the torch and framework versions and the resolved autocast dtype (CONVENTIONS.md)."""

from __future__ import annotations

import contextlib
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

__all__ = ["cpu_model", "package_version", "run_facts"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``), else ``platform.processor()``, else the
    machine type (``x86_64``)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(package: str) -> str:
    """The installed version of ``package`` (its distribution name), or ``"unknown"``."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def run_facts(*, autocast: str, framework: str | None = None, device: str | None = None) -> dict:
    """The facts every recorded run carries.

    Args:
        autocast: the resolved autocast dtype the run computed in: ``"fp32"`` (none), ``"fp16"`` or ``"bf16"``.
        framework: the distribution whose version to record (``"yolov5"``, ``"ultralytics"``), if any.
        device: the device the run used (``"cpu"``, ``"0"``...); a GPU's name is added for CUDA devices.

    Returns:
        ``{"autocast", "cpu", "torch_threads", "torch", "framework", "framework_version", "device", "gpu"}``, the
        last four only when given or known.
    """
    facts = {
        "autocast": autocast,
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if framework is not None:
        facts["framework"] = framework
        facts["framework_version"] = package_version(framework)
    if device is not None:
        facts["device"] = device
        if device != "cpu" and torch.cuda.is_available():
            index = int(device.split(",")[0]) if device.split(",")[0].isdigit() else 0
            facts["gpu"] = torch.cuda.get_device_name(index)
    return facts
