"""What a framework compare reports: its metrics (:data:`FRAMEWORK_METRICS`: mAP50, mAP50-95, precision, recall,
the score-IoU correlation and the participation ratios), the finished runs collected in plan order, the run facts,
and the header and title it hands to the shared writer :func:`qfocal_lab.detection.compare.write_compare`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .._machine import cpu_model
from .compare import CompareMetrics, write_compare
from .framework_plan import (
    _LABEL,
    FrameworkPlan,
)
from .framework_runs import (
    version,
)

_TITLE = {"yolov5": "YOLOv5", "ultralytics": "Ultralytics"}
FRAMEWORK_METRICS = CompareMetrics(
    keys=("mAP50", "mAP50-95", "precision", "recall", "score_iou_spearman", "pr_start", "pr_end"),
    table=("mAP50", "mAP50-95", "precision", "recall", "score_iou_spearman", "pr_start", "pr_end"),
    bars=("mAP50", "mAP50-95"),
    axis="val mAP (%)",
    delta_units="mAPs in percentage points, the others in their own units",
    json_units=(
        "runs, mean, std: mAP50 and mAP50-95, precision and recall as fractions in [0, 1], from the framework's "
        "validation of the final epoch; score_iou_spearman in [-1, 1] (the same validation's predictions); "
        "pr_start, pr_end: participation ratio of the varied term's gradient w.r.t. its logits (effective number "
        "of elements, >= 1) on a fixed training batch at the starting and final weights; delta_vs_baseline: "
        "variant minus baseline per seed, mAPs in percentage points, 95 % Student-t interval"
    ),
    headings={
        "precision": "P",
        "recall": "R",
        "score_iou_spearman": "score-IoU ρ",
        "pr_start": "PR start",
        "pr_end": "PR end",
    },
)


def _number(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _collect(out: Path, order, finished, names) -> tuple[dict, dict, list]:
    """The finished runs in plan order (seed, then variant), whatever order they finished in."""
    summary: dict[str, dict[str, list[float]]] = {n: {k: [] for k in FRAMEWORK_METRICS.keys} for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    runs: list[dict] = []
    for seed, variant in order:
        if (seed, variant.name) not in finished:
            continue
        rec, dt = finished[(seed, variant.name)]
        values = {k: _number(rec.get(k)) for k in FRAMEWORK_METRICS.keys}
        for k in FRAMEWORK_METRICS.keys:
            summary[variant.name][k].append(values[k])
        seconds[variant.name].append(dt)
        runs.append(
            {
                "loss": variant.name,
                "seed": seed,
                "seconds": dt,
                **values,
                "score_iou_n": rec.get("score_iou_n"),
                "switch_epoch": rec.get("switch_epoch"),
                "run_facts": rec.get("run_facts"),
                "dir": str(out / f"{variant.name}-s{seed}"),
            }
        )
    return summary, seconds, runs


def _extra(s: dict) -> str:
    """The training settings a compare added, as the header names them: ``, optimizer=AdamW lr0=0.001``."""
    if not s["train_args"]:
        return ", the framework's default training settings"
    return ", " + " ".join(f"{k}={v}" for k, v in s["train_args"].items())


def _start(s: dict) -> tuple[str, dict]:
    """Where the runs started, in words (``from scratch``, ``fine-tuned from ...``) and as compare.json says."""
    if not s["init"]:
        return "from scratch", {"from": "scratch"}
    sha = s["init_sha256"]
    if s["pretrain_epochs"]:
        words = (
            f"fine-tuned from a BCE model pretrained {s['pretrain_epochs']} epochs on a second set of "
            f"{s['pretrain_images']} images (sha256 {sha[:12]})"
        )
    else:
        words = f"fine-tuned from {s['init']} (sha256 {sha[:12]})"
    return words, {"from": s["init"], "sha256": sha, "pretrain_epochs": s["pretrain_epochs"]}


def _facts(runs: list[dict], s: dict, threads: int) -> dict:
    """compare.json's run facts: the machine's, and the autocast dtypes the runs resolved."""
    autocast = sorted({str((r.get("run_facts") or {}).get("autocast", "unknown")) for r in runs})
    return {
        "autocast": autocast,
        "cpu": cpu_model(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "framework": s["framework"],
        "framework_version": version(s["framework"]),
        "device": s["device"],
    }


def _write(out: Path, plan: FrameworkPlan, s: dict, threads: int, collected, wall: float) -> dict:
    summary, seconds, runs = collected
    framework, variants, seeds, term = plan.framework, plan.variants, plan.seeds, s["term"]
    other = {
        ("yolov5", "obj"): "cls_loss: bce for every variant",
        ("yolov5", "cls"): "obj_loss: bce for every variant",
        ("ultralytics", "cls"): "Ultralytics has no objectness term",
    }[(framework, term)]
    word = {"obj": "objectness", "cls": "classification"}[term]
    start, start_json = _start(s)
    if not s["init"] and Path(s["model"]).suffix not in (".yaml", ".yml"):
        start = f"from {s['model']}"
    finished = f"{len(runs)} of {len(variants) * len(seeds)} runs"
    facts = _facts(runs, s, threads)
    at_once = f"{s['jobs']} runs at a time x " if s["jobs"] > 1 else ""
    machine = (
        f"{facts['cpu']}, device {s['device']}, {at_once}{threads} threads per run, autocast "
        f"{'/'.join(facts['autocast'])}, torch {torch.__version__}"
    )
    header = (
        f"{_TITLE[framework]} {facts['framework_version']}: mAP50 and mAP50-95 in percent, precision P and recall R "
        f"from its own validation of the final epoch; score-IoU ρ: Spearman correlation of the score and the IoU of "
        f"those validation predictions; PR start / end: participation ratio of the {term} term's gradient on a fixed "
        f"training batch at the starting and final weights. Mean ± sample std over seeds {list(seeds)} "
        f"({finished}). Each variant sets the {word} criterion ({term}_loss, {term}_gain; {other}): a name alone is "
        f"balanced to BCE's gradient norm (gain auto), @1 is the unbalanced loss, -warmupK trains K epochs with BCE "
        f"first. Data {s['data']}; model {s['model']}, {start}; {s['epochs']} epochs, imgsz {s['imgsz']}, batch "
        f"{s['batch']}{_extra(s)}; {machine}; wall {wall:.0f} s."
    )
    data = "synthetic" if Path(s["data"]).parent == out / "data" else Path(s["data"]).parent.name
    tuned = "fine-tuned" if s["init"] else "from scratch"
    title = (
        f"{_TITLE[framework]} {Path(s['model']).name}, {term} loss, {tuned}; data {data}, {s['epochs']} epochs, "
        f"imgsz {s['imgsz']}, seeds {list(seeds)} ({finished}); differences vs {variants[0].name}"
    )
    config = {k: v for k, v in s.items() if k != "workers"}
    config["version"] = facts["framework_version"]
    config["run_facts"] = facts
    return write_compare(
        out,
        FRAMEWORK_METRICS,
        names=[v.name for v in variants],
        seeds=seeds,
        runs=runs,
        summary=summary,
        seconds=seconds,
        config=config,
        threads=threads,
        wall=wall,
        header=header,
        title=title,
        label=_LABEL[(framework, term)],
        extra={
            "framework": framework,
            "term": f"{term}_loss",
            "variants": {
                v.name: {"loss": v.loss, "gain": v.gain_label, "warmup": v.warmup} for v in variants
            },
            "start": start_json,
            "jobs": s["jobs"],
        },
    )
