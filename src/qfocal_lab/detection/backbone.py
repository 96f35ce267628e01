"""Pretrained backbones of the harness: copying a backbone into a model, backbone files, and the one the demo ships.

A backbone file holds only the backbone body (the CNN under the FPN) of a trained qfocal detector, with a digest
of its tensors: ``{"format": "qfocal-backbone", "version": 1, "model_size", "digest", "tensors", "made_by"}``.
:func:`export_backbone` writes one from a checkpoint of :func:`qfocal_lab.detection.train.train`;
:func:`read_backbone` checks it on every load (the digest of the tensors it holds must be the one it records, and
the one the caller expects when given), so a damaged or foreign file is a one-line :class:`CheckpointError`.

The digest covers the tensors' names, dtypes, shapes and bytes, not the file: ``torch.save`` writes a random
serialization id into every file, so two saves of the same weights differ as files and agree as digests.

The demo's backbone (:data:`DEMO_BACKBONE`) ships inside the package. It is made by ``qfocal pretrain --out DIR``
(:data:`DEMO_PRETRAIN`: a focal-loss FCOS, seed 10000, 9 epochs on a synthetic set of its own, fp32, one thread),
which reproduces it bit for bit on the same CPU model.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from .checkpoint import CheckpointError, backbone_digest

__all__ = [
    "BACKBONE_FORMAT",
    "DEMO_BACKBONE",
    "DEMO_BACKBONE_DIGEST",
    "DEMO_PRETRAIN",
    "CheckpointError",
    "backbone_digest",
    "demo_backbone",
    "export_backbone",
    "load_backbone",
    "read_backbone",
]

BACKBONE_FORMAT = "qfocal-backbone"
BACKBONE_PREFIX = "backbone.body."
# The shipped backbone of the demo (package data) and the digest its tensors must have.
DEMO_BACKBONE = "demo_backbone.pt"
DEMO_BACKBONE_DIGEST = "2e6a9c612000e219b5884317ca463b27f033f0dcaa2b850c3d3a795907505fb8"
# How `qfocal pretrain` makes it: the training settings of the pretraining run (qfocal_lab.detection.compare's
# pretrain_backbone sets loss focal, seed 10000 and the synthetic set's seed + 1), pinned so that the same
# command gives the same tensors whatever the machine's load: fp32 and one thread.
DEMO_PRETRAIN = {
    "synth_images": 2600,
    "synth_val": 800,
    "synth_difficulty": "easy",
    "imgsz": 128,
    "batch": 16,
    "box_bias": 1.0,
    "amp": "off",
    "threads": 1,
    "model_size": "tiny",
    "epochs": 9,
}


def _body(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}


def export_backbone(checkpoint: str | os.PathLike, dest: str | os.PathLike, *, made_by: str = "") -> str:
    """Write the backbone body of the qfocal checkpoint ``checkpoint`` to the backbone file ``dest`` (atomically);
    return its digest. ``made_by`` records the command that made the checkpoint."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    tensors = {k: v.clone() for k, v in _body(ckpt["model"]).items()}
    if not tensors:
        raise CheckpointError(f"{checkpoint}: no backbone tensors ({BACKBONE_PREFIX}*) in its model")
    digest = backbone_digest(tensors)
    record = {
        "format": BACKBONE_FORMAT,
        "version": 1,
        "model_size": ckpt["config"].get("model_size", "tiny"),
        "digest": digest,
        "tensors": tensors,
        "made_by": made_by,
    }
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    torch.save(record, tmp)
    tmp.replace(dest)
    return digest


def read_backbone(path: str | os.PathLike, *, expected_digest: str | None = None) -> dict[str, torch.Tensor]:
    """The backbone tensors of ``path``: a backbone file (:func:`export_backbone`), checked against the digest it
    records and ``expected_digest`` when given, or a checkpoint of ``qfocal train`` (its model's body).

    Raises:
        CheckpointError: one line: no such file, damaged, neither kind of file, or a digest that differs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint file there (expected a backbone file or a qfocal checkpoint)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, or a pickle that weights_only refuses to run
        raise CheckpointError(
            f"{path}: damaged, or not a backbone or checkpoint written by qfocal ({type(exc).__name__})"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == BACKBONE_FORMAT:
        tensors = obj.get("tensors")
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise CheckpointError(f"{path}: a backbone file without its tensors (damaged?)")
        digest = backbone_digest(tensors)
        if digest != obj.get("digest"):
            raise CheckpointError(
                f"{path}: damaged: its tensors' digest is {digest[:12]}..., the file records "
                f"{str(obj.get('digest'))[:12]}..."
            )
    else:
        from .checkpoint import load_checkpoint

        tensors = _body(load_checkpoint(path)["model"])
        digest = backbone_digest(tensors)
    if expected_digest is not None and digest != expected_digest:
        raise CheckpointError(
            f"{path}: expected the backbone with digest {expected_digest[:12]}..., got {digest[:12]}... "
            "(another or a modified file)"
        )
    return tensors


def load_backbone(
    model: torch.nn.Module, path: str | os.PathLike, *, expected_digest: str | None = None
) -> int:
    """Copy the backbone body (the CNN under the FPN) of ``path`` (a backbone file or a qfocal checkpoint,
    :func:`read_backbone`) into ``model``; the FPN and the head keep their initialisation. This is the harness's
    pretrained backbone: a detector trained elsewhere (``qfocal compare --pretrain-epochs``, ``qfocal pretrain``)
    plays the part ImageNet weights play for a real detector, so runs that differ only in their loss and seed
    start from the same features. Returns the number of tensors copied.

    Raises:
        CheckpointError: ``path`` is not a qfocal backbone or checkpoint, its digest differs, or its backbone does
            not fit ``model`` (another ``model_size``).
    """
    theirs = read_backbone(path, expected_digest=expected_digest)
    own = _body(model.state_dict())
    if set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own):
        raise CheckpointError(
            f"{path}: its backbone does not fit this model (another --model-size?): expected {len(own)} "
            f"backbone tensors of this model's shapes, got {len(theirs)}"
        )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(theirs[k])
    return len(own)


def demo_backbone() -> str:
    """The path of the shipped demo backbone, checked against :data:`DEMO_BACKBONE_DIGEST`.

    Raises:
        CheckpointError: the file is missing (a broken install), damaged, or not the one this version shipped.
    """
    path = Path(str(resources.files("qfocal_lab.detection") / "assets" / DEMO_BACKBONE))
    read_backbone(path, expected_digest=DEMO_BACKBONE_DIGEST)
    return str(path)
