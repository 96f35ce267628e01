"""Side-by-side speed and memory benchmark of the focal-family losses (same code as ``qfocal bench``).

    python benchmarks/bench_losses.py --out-dir benchmarks   # full run, writes the published RESULTS.{md,csv,png}
    python benchmarks/bench_losses.py --quick                # smoke test, seconds, into runs/bench (scratch)
    python benchmarks/bench_losses.py --providers qfocal-fused,yolov5-qfocal,bce --shapes 134400x80

Providers are chosen by exact name (``--providers``); see ``--help`` and :mod:`qfocal_lab.bench.losses`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

from qfocal_lab.bench import main

if __name__ == "__main__":
    sys.exit(main())
