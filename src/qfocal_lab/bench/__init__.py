"""Benchmarks of qfocal, kept apart from the kernels they measure: :mod:`qfocal_lab.bench.losses` times the fused
losses against the implementations people use today (``qfocal bench``, ``benchmarks/bench_losses.py``)."""

from .losses import PROVIDERS, build_parser, main, run

__all__ = ["PROVIDERS", "build_parser", "main", "run"]
