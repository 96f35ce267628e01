"""torchvision glue: FCOS detectors whose classification loss is focal, QFL or VFL, for any training loop.

* :class:`QualityFCOSHead`: FCOS's head with the GFL joint representation: no centerness branch; the
  classification target of each positive is the IoU of its decoded (detached) predicted box with its ground
  truth, trained with :func:`qfocal.quality_focal_loss` (beta = 2) or :func:`qfocal.varifocal_loss`, normalised
  by the number of positives averaged over processes (mmdetection's ``reduce_mean``).
* :class:`QualityFCOS`: torchvision's ``FCOS`` that scores boxes by the classification score alone.
* :class:`FocalFCOSHead`: torchvision's own ``FCOSHead`` loss, unchanged in one process; under DDP its
  normaliser is averaged over processes so that DDP equals one process on the combined batch.

A small from-scratch FCOS built on these heads is the lab's (:func:`qfocal_lab.models.fcos_tiny`). Users
with their own backbone build ``QualityFCOS(backbone, num_classes, head=QualityFCOSHead(...))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOS, FCOSHead, FCOSRegressionHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss

from .._checks import _check_exponent, _check_real
from .._names import loss_name, losses_for
from ..functional import distribution_focal_loss, quality_focal_loss, sigmoid_focal_loss, varifocal_loss

__all__ = ["GFL_REG_MAX", "LOSSES", "FocalFCOSHead", "QualityFCOS", "QualityFCOSHead", "check_loss"]

LOSSES = losses_for("fcos")  # canonical names of the loss table; aliases are accepted
# GFL's box distribution: distances in anchor-size (stride) units over the bins 0..GFL_REG_MAX.
GFL_REG_MAX = 16


def check_loss(loss: object) -> str:
    """The canonical name of a loss the FCOS heads take (an alias, any case); ValueError lists the valid ones."""
    return loss_name(loss, LOSSES)


def _mean_over_processes(value: float, device: torch.device) -> float:
    """``value`` averaged over the default process group (itself outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of ``a`` with row i of ``b``, boxes ``(n, 4)`` xyxy; returns ``(n,)``."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def _match_targets(targets: list[dict[str, Tensor]], matched_idxs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-anchor class (``-1`` for background) ``(N, A)`` and box ``(N, A, 4)`` as torchvision's head builds them."""
    classes, boxes = [], []
    for tgt, idx in zip(targets, matched_idxs, strict=True):
        if len(tgt["labels"]) == 0:
            cls = tgt["labels"].new_zeros((len(idx),))
            box = tgt["boxes"].new_zeros((len(idx), 4))
        else:
            cls = tgt["labels"][idx.clip(min=0)]
            box = tgt["boxes"][idx.clip(min=0)]
        cls = cls.clone()
        cls[idx < 0] = -1
        classes.append(cls)
        boxes.append(box)
    return torch.stack(classes), torch.stack(boxes)


class FocalFCOSHead(FCOSHead):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's ``FCOSHead`` (focal loss, GIoU, centerness), normalised by the positives averaged over
    processes. In one process the losses equal torchvision's exactly (the rescale factor is 1)."""

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        local = sum(int((m >= 0).sum()) for m in matched_idxs)
        mean = _mean_over_processes(local, head_outputs["cls_logits"].device)
        scale = max(1.0, float(local)) / max(1.0, mean)
        return {k: v * scale for k, v in losses.items()} if scale != 1.0 else losses


class _BoxRegressionHead(FCOSRegressionHead):  # type: ignore[misc]  # torchvision ships no type information
    """FCOS's regression tower without the centerness branch (GFL folds quality into the class score)."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_convs: int = 4,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_convs, norm_layer)
        del self.bbox_ctrness

    def forward(self, x: list[Tensor]) -> Tensor:
        out = []
        for features in x:
            t = self.conv(features)
            reg = nn.functional.relu(self.bbox_reg(t))
            n, _, h, w = reg.shape
            out.append(reg.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return torch.cat(out, dim=1)


class _DistributionRegressionHead(_BoxRegressionHead):
    """GFL's general distribution: per side, logits over the bins ``0..reg_max``; the box side is the expectation."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int, reg_max: int) -> None:
        super().__init__(in_channels, num_anchors, num_convs)
        self.reg_max = int(reg_max)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4 * (self.reg_max + 1), 3, 1, 1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)  # type: ignore[arg-type]  # a Conv2d built with its bias
        self.register_buffer("bins", torch.arange(self.reg_max + 1, dtype=torch.float32), persistent=False)

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:  # type: ignore[override]  # GFL's (sides, logits)
        bins = self.reg_max + 1
        out = []
        for features in x:
            t = self.bbox_reg(self.conv(features))
            n, _, h, w = t.shape
            out.append(t.view(n, -1, 4 * bins, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4 * bins))
        logits = torch.cat(out, dim=1)  # (N, A, 4 * bins)
        dist = logits.float().unflatten(-1, (4, bins)).softmax(-1) @ self.bins  # (N, A, 4)
        return dist, logits


class QualityFCOSHead(FCOSHead):  # type: ignore[misc]  # torchvision ships no type information
    """FCOS head trained with the GFL joint classification-IoU target and QFL or VFL.

    Args:
        in_channels: channels of every pyramid level.
        num_anchors: anchors per location (1 for FCOS).
        num_classes: number of classes ``C`` (no background class).
        num_convs: conv layers in each tower.
        loss: ``"qfl"`` (:func:`qfocal.quality_focal_loss`, the default), ``"vfl"``
            (:func:`qfocal.varifocal_loss`), or ``"focal"`` (:func:`qfocal.sigmoid_focal_loss` on hard 0/1
            targets, alpha 0.25, gamma 2: FCOS without its centerness branch, the ablation that separates "joint
            score" from "no quality estimate").
        beta: QFL's exponent (GFL paper: 2).
        alpha, gamma: VFL's negative weight and exponent (VarifocalNet: 0.75, 2).
        reg_max: 0 for FCOS's direct box regression; ``n > 0`` for GFL's distribution over the bins ``0..n``
            (in anchor-size units) trained with :func:`qfocal.distribution_focal_loss` (weight 0.25, as GFL).

    ``compute_loss`` returns ``{"classification", "bbox_regression"}`` (plus ``"bbox_dfl"`` with ``reg_max``),
    each the sum over anchors divided by the number of positives averaged over processes (at least 1; DFL by
    four times that, one term per box side).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        *,
        loss: str = "qfl",
        beta: float = 2.0,
        alpha: float = 0.75,
        gamma: float = 2.0,
        reg_max: int = 0,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, num_convs)
        loss = loss_name(loss, ("qfl", "vfl", "focal"), what="loss")
        if int(reg_max) != reg_max or reg_max < 0:
            raise ValueError(f"reg_max: expected an integer >= 0, got {reg_max!r}")
        self.loss = loss
        self.beta, self.gamma = _check_exponent("beta", beta), _check_exponent("gamma", gamma)
        self.alpha = _check_real("alpha", alpha)
        self.reg_max = int(reg_max)
        if self.reg_max:
            self.regression_head = _DistributionRegressionHead(
                in_channels, num_anchors, num_convs, self.reg_max
            )
        else:
            self.regression_head = _BoxRegressionHead(in_channels, num_anchors, num_convs)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        out = {"cls_logits": self.classification_head(x)}
        if self.reg_max:
            out["bbox_regression"], out["bbox_dist"] = self.regression_head(x)
        else:
            out["bbox_regression"] = self.regression_head(x)
        return out

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        cls_logits = head_outputs["cls_logits"]  # (N, A, C)
        bbox_regression = head_outputs["bbox_regression"]  # (N, A, 4)
        gt_classes, gt_boxes = _match_targets(targets, matched_idxs)
        fg = gt_classes >= 0
        num_pos = max(1.0, _mean_over_processes(int(fg.sum()), cls_logits.device))
        pred_boxes = self.box_coder.decode(bbox_regression.float(), torch.stack(anchors))
        pos_pred, pos_gt = pred_boxes[fg], gt_boxes[fg].float()
        quality = _aligned_iou(pos_pred.detach(), pos_gt).clamp_(0.0, 1.0)
        target = torch.zeros(cls_logits.shape, dtype=torch.float32, device=cls_logits.device)
        target[fg, gt_classes[fg]] = 1.0 if self.loss == "focal" else quality
        if self.loss == "focal":  # hard targets, no quality anywhere: the ablation of the joint score
            loss_cls = sigmoid_focal_loss(cls_logits, target, alpha=0.25, gamma=2.0, avg_factor=num_pos)
        elif self.loss == "qfl":
            loss_cls = quality_focal_loss(cls_logits, target, beta=self.beta, avg_factor=num_pos)
        else:
            loss_cls = varifocal_loss(
                cls_logits, target, alpha=self.alpha, gamma=self.gamma, iou_weighted=True, avg_factor=num_pos
            )
        loss_box = generalized_box_iou_loss(pos_pred, pos_gt, reduction="sum") / num_pos
        losses = {"classification": loss_cls, "bbox_regression": loss_box}
        if self.reg_max:
            bins = self.reg_max + 1
            dist_logits = head_outputs["bbox_dist"][fg].reshape(-1, bins)  # (M * 4, bins)
            sides = self.box_coder.encode(torch.stack(anchors)[fg], pos_gt).reshape(-1)
            sides = sides.clamp(0.0, self.reg_max - 0.01)
            losses["bbox_dfl"] = 0.25 * distribution_focal_loss(dist_logits, sides, avg_factor=4.0 * num_pos)
        return losses


class QualityFCOS(FCOS):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's ``FCOS`` scoring each box by ``sigmoid(cls_logit)`` alone (no centerness), for
    :class:`QualityFCOSHead`. Construct it like ``FCOS``; pass ``head=QualityFCOSHead(...)``."""

    def postprocess_detections(
        self,
        head_outputs: dict[str, list[Tensor]],
        anchors: list[list[Tensor]],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        class_logits = head_outputs["cls_logits"]
        box_regression = head_outputs["bbox_regression"]
        detections: list[dict[str, Tensor]] = []
        for index in range(len(image_shapes)):
            boxes_all, scores_all, labels_all = [], [], []
            for reg, logits, anc in zip(
                [br[index] for br in box_regression],
                [cl[index] for cl in class_logits],
                anchors[index],
                strict=True,
            ):
                num_classes = logits.shape[-1]
                scores = torch.sigmoid(logits).flatten()
                keep = torch.where(scores > self.score_thresh)[0]
                scores = scores[keep]
                k = min(self.topk_candidates, keep.numel())
                scores, idxs = scores.topk(k)
                keep = keep[idxs]
                anchor_idxs = torch.div(keep, num_classes, rounding_mode="floor")
                boxes = self.box_coder.decode(reg[anchor_idxs], anc[anchor_idxs])
                boxes_all.append(box_ops.clip_boxes_to_image(boxes, image_shapes[index]))
                scores_all.append(scores)
                labels_all.append(keep % num_classes)
            boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections
