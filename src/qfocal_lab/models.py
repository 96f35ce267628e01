"""The harness's own detector: a from-scratch FCOS small enough to train on a laptop CPU (GroupNorm everywhere,
no weight downloads), built on the library's FCOS heads (:mod:`qfocal.integrations.torchvision`)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOS
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from qfocal.integrations.torchvision import (
    GFL_REG_MAX,
    FocalFCOSHead,
    QualityFCOS,
    QualityFCOSHead,
    check_loss,
)

__all__ = ["TinyBackbone", "fcos_tiny"]


class _LastLevelP6P7FP32(LastLevelP6P7):
    """torchvision's P6/P7 block run in fp32 under autocast: on torch 2.14's CPU, the bf16 weight gradient of a
    conv whose input is 1x1 (P7 at small image sizes) is non-deterministic and sometimes NaN."""

    def forward(self, p, c, names):
        with torch.autocast(p[0].device.type, enabled=False):
            return super().forward([t.float() for t in p], [t.float() for t in c], names)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _Block(nn.Module):
    """conv3x3 stride 2 -> GN -> ReLU, then a residual pair of conv3x3 + GN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), _gn(cout), nn.ReLU(inplace=True))
        self.res = nn.Sequential(
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            _gn(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            _gn(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return nn.functional.relu(x + self.res(x))


class TinyBackbone(nn.Sequential):
    """A 5-stage residual CNN (strides 2..32) with GroupNorm, so DDP equals one process on the whole batch."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128)) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = 3
        for i, w in enumerate(widths):
            layers[f"layer{i}"] = _Block(cin, w)
            cin = w
        super().__init__(layers)
        self.widths = tuple(widths)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def fcos_tiny(
    num_classes: int,
    *,
    loss: str = "focal",
    imgsz: int = 128,
    widths: tuple[int, ...] = (16, 32, 64, 96, 128),
    fpn_channels: int = 64,
    head_convs: int = 2,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    beta: float = 2.0,
    alpha: float = 0.75,
    gamma: float = 2.0,
    box_bias: float = 0.0,
) -> FCOS:
    """A small FCOS for training from scratch: :class:`TinyBackbone` + FPN (P3-P7) + a light FCOS head.

    Args:
        num_classes: number of object classes ``C`` (labels in ``[0, C)``).
        loss: ``"focal"`` (torchvision's FCOS head and scoring), ``"qfl"`` or ``"vfl"`` (:class:`QualityFCOSHead`
            in a :class:`QualityFCOS`), ``"gfl"`` (QFL with GFL's box distribution and DFL, ``reg_max`` 16), or
            ``"focal_noctr"`` (focal loss on hard targets, no centerness branch; an ablation).
        imgsz: the square input size; torchvision's transform resizes to it (a no-op for images of that size).
        widths: channels of the five backbone stages.
        fpn_channels: channels of the pyramid and head; a multiple of 32 (the head's GroupNorm has 32 groups).
        head_convs: conv layers per head tower (torchvision's default is 4).
        score_thresh, nms_thresh, detections_per_img: post-processing, as in ``FCOS`` (0.05 keeps the low-score
            detections COCO AP needs).
        beta: QFL exponent; alpha, gamma: VFL parameters.
        box_bias: initial bias of the box-side outputs of the heads that pass them through a ReLU (all but
            ``"gfl"``, whose sides are the expectation of a distribution). torchvision's 0 starts them on the
            ReLU's kink; with AdamW a side's channel then sometimes goes negative everywhere in the first epoch and
            never recovers (its box loss stays high, AP collapses). 1 starts every side at one anchor size, where
            mmdetection's FCOS (``exp(0)``) starts.

    Returns:
        An ``FCOS`` (``loss="focal"``) or :class:`QualityFCOS`: ``model(images, targets)`` gives the loss dict in
        train mode, detections in eval mode. No weights are downloaded.

    Example:
        >>> model = fcos_tiny(3, loss="qfl", imgsz=64)
        >>> images = [torch.rand(3, 64, 64)]
        >>> targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])}]
        >>> sum(model(images, targets).values()).backward()
    """
    loss = check_loss(loss)
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if fpn_channels % 32:
        raise ValueError(
            f"fpn_channels: expected a multiple of 32 (GroupNorm(32) in the head), got {fpn_channels}"
        )
    if len(widths) != 5:
        raise ValueError(f"widths: expected 5 stage widths, got {len(widths)}")
    body = TinyBackbone(tuple(widths))
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=list(widths[2:]),
        out_channels=fpn_channels,
        extra_blocks=_LastLevelP6P7FP32(fpn_channels, fpn_channels),
    )
    common = {
        "min_size": imgsz,
        "max_size": imgsz,
        "score_thresh": score_thresh,
        "nms_thresh": nms_thresh,
        "detections_per_img": detections_per_img,
    }
    if not math.isfinite(box_bias):
        raise ValueError(f"box_bias: expected a finite number, got {box_bias!r}")
    if loss == "focal":
        head = FocalFCOSHead(fpn_channels, 1, num_classes, head_convs)
        nn.init.constant_(head.regression_head.bbox_reg.bias, box_bias)
        return FCOS(backbone, num_classes, head=head, **common)
    head = QualityFCOSHead(
        fpn_channels,
        1,
        num_classes,
        head_convs,
        loss={"gfl": "qfl", "focal_noctr": "focal"}.get(loss, loss),
        beta=beta,
        alpha=alpha,
        gamma=gamma,
        reg_max=GFL_REG_MAX if loss == "gfl" else 0,
    )
    if loss != "gfl":
        bias = head.regression_head.bbox_reg.bias
        assert bias is not None  # a Conv2d built with its bias
        nn.init.constant_(bias, box_bias)
    return QualityFCOS(backbone, num_classes, head=head, **common)
