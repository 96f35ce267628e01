"""Two-process DDP on the CPU (gloo) equals one process on the combined batch: loss and gradients, per loss.

The loss normalisers (number of positives) are averaged across processes, so that DDP's gradient averaging
gives exactly the single-process gradient of the combined batch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qfocal_lab.detection.train import training_step
from qfocal_lab.models import fcos_tiny

LOSSES = ("focal", "qfl", "vfl", "gfl")
WORLD = 2


def _batch():
    """Four 64-px images; the first half holds more objects than the second (unequal positives per process)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(4)]
    boxes = [
        [[4.0, 6.0, 30.0, 40.0], [30.0, 30.0, 60.0, 50.0], [2.0, 44.0, 20.0, 62.0]],
        [[10.0, 10.0, 50.0, 58.0], [40.0, 2.0, 62.0, 20.0]],
        [[20.0, 20.0, 44.0, 40.0]],
        [[5.0, 5.0, 14.0, 15.0]],
    ]
    labels = [[0, 2, 1], [1, 0], [2], [0]]
    targets = [
        {"boxes": torch.tensor(b), "labels": torch.tensor(lab)} for b, lab in zip(boxes, labels, strict=True)
    ]
    return images, targets


def _model(loss: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return fcos_tiny(3, loss=loss, imgsz=64)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, targets = _batch()
        half = len(images) // WORLD
        mine = slice(rank * half, (rank + 1) * half)
        for loss in LOSSES:
            model = _model(loss)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            total, parts = training_step(ddp, images[mine], targets[mine], None)
            total.backward()
            torch.save(
                {
                    "total": total.detach(),
                    "parts": {k: v.detach() for k, v in parts.items()},
                    "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                },
                os.path.join(out_dir, f"{loss}-{rank}.pt"),
            )
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_matches_one_process_on_combined_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    images, targets = _batch()
    for loss in LOSSES:
        model = _model(loss)
        total, parts = training_step(model, images, targets, None)
        total.backward()
        ranks = [torch.load(tmp_path / f"{loss}-{r}.pt", weights_only=True) for r in range(WORLD)]
        # The halves differ, so each process's own loss differs from the combined one ...
        assert not torch.allclose(ranks[0]["total"], ranks[1]["total"]), loss
        # ... but their mean (what DDP's gradient average optimises) equals it.
        mean = sum(r["total"] for r in ranks) / WORLD
        torch.testing.assert_close(
            mean, total.detach(), rtol=1e-5, atol=1e-6, msg=lambda m, s=loss: f"{s} loss: {m}"
        )
        for k in parts:
            part_mean = sum(r["parts"][k] for r in ranks) / WORLD
            torch.testing.assert_close(part_mean, parts[k].detach(), rtol=1e-5, atol=1e-6)
        for name, p in model.named_parameters():
            for r in ranks:
                g = r["grads"][name]
                worst = (g - p.grad).abs().max().item()
                torch.testing.assert_close(
                    g,
                    p.grad,
                    rtol=1e-4,
                    atol=1e-6,
                    msg=lambda m, n=name, w=worst, s=loss: f"{s} grad {n}: max {w:.3e}\n{m}",
                )


@pytest.mark.slow
def test_torchrun_training_matches_single_process(tmp_path):
    """The full trainer under ``torchrun --nproc-per-node 2`` (batch 2 each) equals one process with batch 4."""
    from qfocal_lab.data import generate_dataset
    from qfocal_lab.detection import TrainConfig, load_checkpoint, train

    data = tmp_path / "data"
    generate_dataset(data, images=10, seed=0, imgsz=64, min_size=6, val_fraction=0.2, mean_objects=3)
    common = ["--data", str(data), "--loss", "qfl", "--epochs", "1", "--imgsz", "64", "--amp", "off"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "qfocal", "train"]
    cmd += [*common, "--batch", "2", "--out", str(tmp_path / "ddp"), "--no-progress", "--no-plots"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = TrainConfig(
        data=str(data),
        loss="qfl",
        epochs=1,
        imgsz=64,
        batch=4,
        amp="off",
        out=str(tmp_path / "one"),
        plots=False,
    )
    train(cfg, log=lambda m: None)
    a = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"weight {k}: {m}")
