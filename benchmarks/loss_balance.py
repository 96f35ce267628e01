"""How much QFL, VFL and focal loss re-weight YOLO's loss terms, and what the balance rule does about it.

    python benchmarks/loss_balance.py              # writes benchmarks/loss_balance.{csv,md} and docs/balance.png
    python benchmarks/loss_balance.py --quick --out-dir /tmp/balance    # initialisation only, one seed: seconds

At initialisation (fresh YOLOv5n and YOLOv8n built from their yaml, nc=2), for several seeds and batches of the
synthetic dataset (``write_toy_dataset(n_train=16, n_val=4, imgsz=128)``, 8 images per batch, no augmentation),
each loss term's value and the norm of its gradient with respect to the head outputs it acts on are measured for
bce, qfl, vfl and focal, unbalanced (gain 1) and with the rule (gain "auto"): :mod:`qfocal.integrations.balance`.
Then, unless ``--epochs 0``, one short training per framework with QFL (balanced) logs the same every epoch on one
training batch, with the unbalanced qfl / vfl / focal alongside. That shows how far the unbalanced ratio drifts
from its value at initialisation, which is why no fixed gain calibrated at initialisation can hold. CPU only;
about four minutes on two cores.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch
import yaml

from qfocal_lab.data.synth import write_toy_dataset
from qfocal_lab.studies import balance as B

LOSSES = ("bce", "qfl", "vfl", "focal")
ROOT = Path(__file__).resolve().parents[1]
# the terms each criterion acts on
ACTED = {"yolov5": ("obj", "cls"), "ultralytics": ("cls",)}


def yolov5_model(seed: int):
    from qfocal.integrations import offline_import

    with offline_import():
        import yolov5.train
        from yolov5.models.yolo import Model

    root = Path(yolov5.train.__file__).parent
    torch.manual_seed(seed)
    model = Model(str(root / "models" / "yolov5n.yaml"), nc=2)
    model.hyp = yaml.safe_load((root / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    return model


def ultralytics_model(seed: int):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.args = get_cfg()
    return model


def measure_init(data: Path, seeds: list[int], starts: list[int]) -> list[dict]:
    """Rows: framework, seed, start, loss ("qfl" balanced, "qfl (gain 1)" unbalanced), term, value, grad_norm,
    grad_ratio."""
    rows = []
    unbalanced = {f"{name} (gain 1)": name for name in LOSSES[1:]}
    for seed in seeds:
        v5, v8 = yolov5_model(seed), ultralytics_model(seed)
        for start in starts:
            images, targets = B.yolo_batch(data, images=8, start=start)
            v5_keys = {name: {"obj_loss": name, "cls_loss": name} for name in LOSSES}
            v5_keys |= {
                label: {**v5_keys[n], "obj_gain": 1.0, "cls_gain": 1.0} for label, n in unbalanced.items()
            }
            v8_keys = {name: {"cls_loss": name} for name in LOSSES}
            v8_keys |= {label: {"cls_loss": n, "cls_gain": 1.0} for label, n in unbalanced.items()}
            for framework, measured in (
                ("yolov5", B.measure_yolov5(v5, images, targets, v5_keys)),
                ("ultralytics", B.measure_ultralytics(v8, B.ultralytics_batch(images, targets), v8_keys)),
            ):
                for label, terms in measured.items():
                    for term in [k for k in terms if not k.endswith("_grad")]:
                        ref = measured["bce"][f"{term}_grad"]
                        rows.append(
                            {
                                "framework": framework,
                                "seed": seed,
                                "start": start,
                                "epoch": 0,
                                "loss": label,
                                "term": term,
                                "value": terms[term],
                                "grad_norm": terms[f"{term}_grad"],
                                "grad_ratio": terms[f"{term}_grad"] / ref if ref else math.nan,
                            }
                        )
    return rows


def train_logs(data: Path, epochs: int) -> list[dict]:
    """One short QFL training per framework, measured every epoch (BalanceLog), unbalanced losses alongside."""
    from qfocal.integrations import ultralytics as qu
    from qfocal.integrations import yolov5 as qy

    logs = []
    with tempfile.TemporaryDirectory(prefix="qfocal-balance-") as tmp:
        log = B.BalanceLog(Path(tmp) / "ultralytics.csv", compare=LOSSES[1:])
        qu.train(
            "yolov8n.yaml",
            data=data,
            cls_loss="qfl",
            epochs=epochs,
            imgsz=128,
            batch=8,
            nbs=8,  # one optimizer step per batch (Ultralytics accumulates to 64 images otherwise)
            workers=0,
            device="cpu",
            val=False,
            plots=False,
            verbose=False,
            seed=0,
            project=str(Path(tmp) / "runs"),
            name="ultralytics",
            callbacks=log.ultralytics_callbacks(),
        )
        logs += B.read_log(log.path)
        log = B.BalanceLog(Path(tmp) / "yolov5.csv", compare=LOSSES[1:])
        qy.train(
            data=data,
            cfg="yolov5n.yaml",
            hyp={"obj_loss": "qfl", "cls_loss": "qfl"},
            epochs=epochs,
            imgsz=128,
            batch_size=8,
            workers=0,
            device="cpu",
            noplots=True,
            seed=0,
            project=str(Path(tmp) / "runs"),
            name="yolov5",
            callbacks=log.yolov5_callbacks(),
        )
        logs += B.read_log(log.path)
    return logs


def optimizer_steps(iterations: int, nbs: int, batch: int, warmup: int = 100) -> int:
    """Optimizer steps of YOLOv5's / Ultralytics' loop: gradients accumulate to ``nbs`` images, ramping from 1
    batch during the (at least 100-iteration) warm-up."""
    import numpy as np

    steps, last = 0, -1
    for ni in range(iterations):
        accumulate = max(1, round(float(np.interp(ni, [0, warmup], [1, nbs / batch]))))
        if ni - last >= accumulate:
            steps, last = steps + 1, ni
    return steps


def _span(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def markdown(rows: list[dict], logs: list[dict], command: str, seconds: float) -> str:
    import ultralytics

    from qfocal.integrations import offline_import

    with offline_import():
        import yolov5

    seeds = sorted({r["seed"] for r in rows})
    starts = sorted({r["start"] for r in rows})
    lines = [
        "# Loss balance: gradient norm of each criterion against BCE in YOLOv5 and Ultralytics",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {seconds:.0f} s",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}; torch {torch.__version__}; python {platform.python_version()}",
        f"- yolov5 {getattr(yolov5, '__version__', '?')}; ultralytics {ultralytics.__version__}",
        f"- command: `{command}`",
        "- data: `write_toy_dataset(n_train=16, n_val=4, imgsz=128)` (nc=2), batches of 8 training images from "
        f"index {starts}, no augmentation; models yolov5n / yolov8n from yaml, seeds {seeds}",
        "- ratio: norm of the term's gradient with respect to the head outputs it acts on (YOLOv5: objectness or "
        "class channels of every level; Ultralytics: class logits) / the same for BCE, same model and batch",
        "- unbalanced: gain 1 (the criterion alone); auto: the rule (each call scaled to BCE's gradient norm)",
        "",
        "## At initialisation: ratio to BCE, mean [min-max] over seeds x batches",
        "",
        "| framework | term | loss | unbalanced | auto | fixed gain calibrated here (1 / mean) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for framework, terms in ACTED.items():
        for term in terms:
            for name in LOSSES[1:]:

                def ratios(label, framework=framework, term=term):
                    return [
                        r["grad_ratio"]
                        for r in rows
                        if (r["framework"], r["term"], r["loss"]) == (framework, term, label)
                    ]

                raw, auto = ratios(f"{name} (gain 1)"), ratios(name)
                lines.append(
                    f"| {framework} | {term} | {name} | {_span(raw)} | {_span(auto)} | "
                    f"{1 / statistics.fmean(raw):.3g} |"
                )
    if logs:
        epochs = max(r["epoch"] for r in logs)
        iterations = epochs * 2  # 16 training images, batches of 8
        lines += [
            "",
            "## Along a short training with QFL (balanced): the unbalanced ratio on one training batch",
            "",
            "Each framework trains with qfl on both terms (YOLOv5) or classification (Ultralytics), rule on; every "
            "epoch the current model is measured on one fixed training batch (the first, augmented as training "
            "sees it) with BCE and with each criterion unbalanced. Fixed-gain column: the gain calibrated at "
            "initialisation above, times the ratio at the end, i.e. how many times BCE's gradient norm a fixed "
            "gain would give by then.",
            "",
            f"Optimizer steps in {epochs} epochs: Ultralytics {optimizer_steps(iterations, 8, 8)} (nbs=8: one per "
            f"batch), YOLOv5 {optimizer_steps(iterations, 64, 8)} (its nbs of 64 accumulates 1 to 8 batches in its "
            "100-iteration warm-up); both runs stay within their warm-up learning rates.",
            "",
            "| framework | term | loss | epoch 0 | middle | last | last x fixed init gain |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for framework, terms in ACTED.items():
            for term in terms:
                for name in LOSSES[1:]:
                    pts = sorted(
                        (r["epoch"], r["grad_ratio"])
                        for r in logs
                        if (r["framework"], r["term"], r["loss"]) == (framework, term, f"{name} (gain 1)")
                    )
                    if not pts:
                        continue
                    init = [
                        r["grad_ratio"]
                        for r in rows
                        if (r["framework"], r["term"], r["loss"]) == (framework, term, f"{name} (gain 1)")
                    ]
                    mid, last = pts[len(pts) // 2], pts[-1]
                    lines.append(
                        f"| {framework} | {term} | {name} | {pts[0][1]:.3g} | {mid[1]:.3g} (epoch {mid[0]}) | "
                        f"{last[1]:.3g} (epoch {last[0]}) | {last[1] / statistics.fmean(init):.3g} |"
                    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks")
    parser.add_argument(
        "--plot", type=Path, default=None, help="default docs/balance.png (out-dir with --quick)"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per framework (0: none)")
    parser.add_argument("--quick", action="store_true", help="one seed, one batch, no training")
    args = parser.parse_args(argv)
    seeds, starts, epochs = ([0], [0], 0) if args.quick else (list(range(args.seeds)), [0, 4, 8], args.epochs)
    plot = args.plot or (args.out_dir / "balance.png" if args.quick else ROOT / "docs" / "balance.png")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="qfocal-balance-data-") as tmp:
        data = write_toy_dataset(Path(tmp) / "toy", n_train=16, n_val=4, imgsz=128)
        rows = measure_init(data, seeds, starts)
        logs = train_logs(data, epochs) if epochs > 0 else []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["framework", "seed", "start", "epoch", "loss", "term", "value", "grad_norm", "grad_ratio"]
    with open(args.out_dir / "loss_balance.csv", "w") as f:
        f.write(",".join(fields) + "\n")
        for r in [*rows, *({**r, "seed": "", "start": "train"} for r in logs)]:
            f.write(",".join(str(r[k]) for k in fields) + "\n")
    command = "python benchmarks/loss_balance.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, logs, command.strip(), time.time() - t0)
    (args.out_dir / "loss_balance.md").write_text(text)
    first = [r for r in rows if r["seed"] == seeds[0] and r["start"] == starts[0]]
    B.plot_balance(
        first,
        plot,
        along=[r for r in logs if r["loss"] != "bce"],
        title="YOLOv5n / YOLOv8n, synthetic data: each term at initialisation (seed 0, one batch; hatched: "
        "unbalanced, gain 1; filled: the rule)\nand the unbalanced gradient-norm ratio along a short QFL training",
    )
    print(text)
    print(f"wrote {args.out_dir / 'loss_balance.csv'}, {args.out_dir / 'loss_balance.md'}, {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
