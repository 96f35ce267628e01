"""What a criterion costs in a real training step: YOLOv5n and YOLOv8n, forward + loss + backward, with the
framework's BCE, qfocal's QFL balanced to BCE (``auto``, the default) and QFL unbalanced (gain 1).

    python benchmarks/step_bench.py --out-dir benchmarks                      # both sizes, writes STEP.{md,json}
    python benchmarks/step_bench.py --quick                                   # seconds, into runs/bench

The varied term is the one the integrations' criterion replaces: YOLOv5's objectness (``obj_loss``, the IoU
targets of the "Add QFocalLoss()" pull request) and Ultralytics' classification (``cls_loss``). Sizes: the
embedded dataset's (128 px, 6 classes, 16 images) and COCO's (640 px, 80 classes; 4 images a step on a CPU).
Inputs are random images with random boxes (5 per image), the same for every variant; models start from scratch
(no weights exist offline). Each round times every variant once, in turn, after untimed warm-up steps of each
(``--warmup``, past qfocal's auto-backend warm-up); the table gives the median of the rounds and the ratio to BCE's
median. At the embedded size the classification logits (16 x 336 x 6) are below the fused kernel's threshold, so
the reference math and the gain's fallback run there, as they do in such a training run. One process, so the ratios are side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch

from qfocal.integrations import offline_import

# label -> (qfocal loss name, gain)
VARIANTS = {"bce": ("bce", "auto"), "qfl (auto)": ("qfl", "auto"), "qfl@1": ("qfl", 1.0)}
SIZES = {"embedded": {"imgsz": 128, "nc": 6, "batch": 16}, "coco": {"imgsz": 640, "nc": 80, "batch": 4}}


def _targets(batch: int, nc: int, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """YOLO targets ``(n, 6)``: image index, class, x, y, w, h (normalised)."""
    n = batch * per_image
    image = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, nc, (n,), generator=generator).float()
    wh = 0.05 + 0.3 * torch.rand(n, 2, generator=generator)
    xy = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=generator)
    return torch.cat([image[:, None], cls[:, None], xy, wh], 1)


def yolov5_steps(size: dict, generator: torch.Generator) -> dict[str, Callable[[], None]]:
    import yaml

    from qfocal.integrations.yolov5 import ComputeLoss

    with offline_import():
        import yolov5.train
        from yolov5.models.yolo import Model

    root = Path(yolov5.train.__file__).parent
    hyp = yaml.safe_load((root / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    torch.manual_seed(0)
    model = Model(str(root / "models" / "yolov5n.yaml"), nc=size["nc"]).train()
    images = torch.rand(size["batch"], 3, size["imgsz"], size["imgsz"], generator=generator)
    targets = _targets(size["batch"], size["nc"], 5, generator)
    steps = {}
    for label, (loss, gain) in VARIANTS.items():
        model.hyp = {**hyp, "obj_loss": loss, "obj_gain": gain}
        criterion = ComputeLoss(model, log=False)

        def step(criterion=criterion) -> None:
            model.zero_grad(set_to_none=True)
            loss, _ = criterion(model(images), targets)
            loss.backward()

        steps[label] = step
    return steps


def ultralytics_steps(size: dict, generator: torch.Generator) -> dict[str, Callable[[], None]]:
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from qfocal.integrations.ultralytics import DetectionLoss

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=size["nc"], verbose=False).train()
    model.args = get_cfg()
    images = torch.rand(size["batch"], 3, size["imgsz"], size["imgsz"], generator=generator)
    targets = _targets(size["batch"], size["nc"], 5, generator)
    batch = {"img": images, "batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6]}
    steps = {}
    for label, (loss, gain) in VARIANTS.items():
        criterion = DetectionLoss(model, loss, cls_gain=gain)

        def step(criterion=criterion) -> None:
            model.zero_grad(set_to_none=True)
            loss, _ = criterion(model(batch["img"]), batch)
            loss.sum().backward()

        steps[label] = step
    return steps


def measure(steps: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, list[float]]:
    for step in steps.values():  # warm-up: first-call allocations, and qfocal's auto backend past its warm-up
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return times


def _facts(threads: int) -> dict:
    import ultralytics

    from qfocal_lab._machine import cpu_model

    with offline_import():
        import yolov5
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "threads": threads,
        "dtype": "float32 (no autocast)",
        "torch": torch.__version__,
        "yolov5": getattr(yolov5, "__version__", "?"),
        "ultralytics": ultralytics.__version__,
        "python": sys.version.split()[0],
    }


def markdown(results: list[dict], facts: dict, command: str) -> str:
    lines = [
        "# One training step: BCE against QFL, balanced and unbalanced",
        "",
        f"- date: {facts['date']}",
        f"- machine: {facts['cpu']}, torch threads {facts['threads']}, {facts['dtype']}",
        f"- versions: torch {facts['torch']}, yolov5 {facts['yolov5']}, ultralytics {facts['ultralytics']}, "
        f"python {facts['python']}",
        f"- command: `{command}`",
        "- step: `zero_grad`, forward, the integration's criterion, backward (no optimizer step); random images and "
        "5 random boxes per image; models from scratch",
        f"- time: median over the rounds (each round runs every variant once, in turn, after {facts['warmup']} "
        "untimed steps of each: qfocal's auto backend is then on its fused kernel wherever the input is large "
        "enough, 2**18 elements); ratio: median / BCE's median in the same run",
        "",
        "| framework | size | variant | median s | ratio to bce | rounds |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['framework']} | {r['size']} | {r['variant']} | {r['median_s']:.4f} | {r['ratio']:.2f} | "
            f"{r['rounds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir", type=Path, default=Path("runs/bench"), help="default: runs/bench (scratch)"
    )
    parser.add_argument("--name", default="STEP", help="file stem (default STEP)")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per size (default 9)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="untimed steps per variant first (default 20: past qfocal's auto-backend warm-up of 16 large calls, "
        "after which a training run's loss is on the fused Inductor kernel)",
    )
    parser.add_argument(
        "--sizes", default="embedded,coco", help="comma list of embedded, coco (default both)"
    )
    parser.add_argument("--frameworks", default="yolov5,ultralytics", help="default both")
    parser.add_argument("--quick", action="store_true", help="embedded size, 2 rounds: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.warmup = "embedded", 2, 1
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    build = {"yolov5": yolov5_steps, "ultralytics": ultralytics_steps}
    results = []
    for size_name in args.sizes.split(","):
        for framework in args.frameworks.split(","):
            steps = build[framework](SIZES[size_name], generator)
            times = measure(steps, args.rounds, args.warmup)
            base = statistics.median(times["bce"])
            for variant, values in times.items():
                median = statistics.median(values)
                results.append(
                    {
                        "framework": framework,
                        "size": f"{size_name} ({SIZES[size_name]['imgsz']} px, {SIZES[size_name]['nc']} classes, "
                        f"batch {SIZES[size_name]['batch']})",
                        "variant": variant,
                        "median_s": median,
                        "ratio": median / base,
                        "rounds": len(values),
                        "times_s": values,
                    }
                )
                print(
                    f"{framework:12s} {size_name:9s} {variant:11s} {median:8.4f} s  x{median / base:.2f}",
                    flush=True,
                )
    facts = {**_facts(args.threads), "warmup": args.warmup}
    command = "python benchmarks/step_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.md").write_text(markdown(results, facts, command.strip()))
    (args.out_dir / f"{args.name}.json").write_text(
        json.dumps({"facts": facts, "results": results}, indent=1)
    )
    print(f"wrote {args.out_dir / args.name}.md, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
