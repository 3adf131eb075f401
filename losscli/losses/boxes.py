"""Bounding-box regression losses on paired boxes ``[N, 4]`` in ``(x1, y1, x2, y2)``.

Each loss equals its ``torchvision.ops`` counterpart (values and gradients) wherever
torchvision's is finite, and stays finite where torchvision's is not:

- the intersection is computed with ``torch.where`` instead of boolean-mask indexing, so
  there is no host sync (torchvision's ``intsctk[mask] = ...`` needs one);
- CIoU's aspect term uses ``atan2`` instead of ``atan(w / h)``, which gives the same value
  for ``h != 0`` but no NaN for zero-height boxes (torchvision: NaN value for a 0x0 box and
  NaN gradients for any ``h == 0``);
- ``iou`` divides by ``union + eps`` (as torchvision's GIoU/DIoU/CIoU do), so two
  zero-area boxes give a loss of 1 rather than ``box_iou``'s 0/0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losscli.losses._checks import check_range
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import check_reduction, reduce_loss
from losscli.losses.registry import register_loss

__all__ = [
    "complete_box_iou_loss",
    "distance_box_iou_loss",
    "generalized_box_iou_loss",
    "iou_loss",
]


def _check_boxes(pred: Tensor, target: Tensor, loss: str, eps: float, reduction: str) -> None:
    if pred.shape != target.shape or pred.dim() == 0 or pred.shape[-1] != 4:
        raise ValueError(
            f"{loss}: pred and target must be boxes of the same shape [N, 4] (x1, y1, x2, y2), "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    check_range(loss, "eps", eps, 0.0)
    check_reduction(reduction)


def _float(boxes: Tensor) -> Tensor:
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def _iou(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Element-wise IoU ``inter / (union + eps)`` of paired boxes (torchvision's formula)."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    iw = torch.min(x2, x2g) - torch.max(x1, x1g)
    ih = torch.min(y2, y2g) - torch.max(y1, y1g)
    # torchvision's mask (iw > 0) & (ih > 0), without its boolean-mask indexing (a sync)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter / (union + eps), union


def _enclosing_wh(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Width and height of the smallest box enclosing both boxes."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    return torch.max(x2, x2g) - torch.min(x1, x1g), torch.max(y2, y2g) - torch.min(y1, y1g)


def _diou(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """DIoU loss ``1 - IoU + rho^2 / c^2`` and the IoU."""
    iou, _ = _iou(pred, target, eps)
    cw, ch = _enclosing_wh(pred, target)
    diagonal_sq = cw**2 + ch**2 + eps
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    centers_sq = ((x1 + x2 - x1g - x2g) / 2) ** 2 + ((y1 + y2 - y1g - y2g) / 2) ** 2
    return 1 - iou + centers_sq / diagonal_sq, iou


def _aspect_angle(boxes: Tensor) -> Tensor:
    """``atan(w / h)`` for ``h != 0`` (also for inverted boxes), finite when ``h == 0``."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    # atan(w / h) = atan2(w sign(h), |h|) for h != 0 (sign of a zero h: its sign bit)
    return torch.atan2(w * torch.ones_like(h).copysign(h), h.abs())


_BOX_LOSS = {
    "family": Family.BOXES,
    "pred": Pred.BOXES,
    "target": Target.BOXES,
}


@register_loss(
    "iou",
    description="IoU loss 1 - IoU of paired boxes (zero gradient when they do not overlap).",
    reference="Yu et al., UnitBox, ACM MM 2016; 1 - torchvision.ops.box_iou diagonal",
    aliases=("iou_loss",),
    **_BOX_LOSS,
)
def iou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    eps: float = 1e-7,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """IoU loss ``1 - inter / (union + eps)`` of paired boxes.

    Args:
        pred: predicted boxes ``[N, 4]`` as ``(x1, y1, x2, y2)``.
        target: target boxes ``[N, 4]``.
        eps: added to the union; two zero-area boxes give a loss of 1.
        reduction: ``none`` | ``mean`` | ``sum``.
        weight, avg_factor: per-box weight ``[N]`` and mean denominator (mmdetection style).

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar.
    """
    _check_boxes(pred, target, "iou", eps, reduction)
    iou, _ = _iou(_float(pred), _float(target), eps)
    return reduce_loss(1 - iou, reduction, weight, avg_factor)


@register_loss(
    "giou",
    description="Generalized IoU loss: IoU minus the empty part of the enclosing box.",
    reference="Rezatofighi et al., Generalized IoU, CVPR 2019; "
    "torchvision.ops.generalized_box_iou_loss",
    aliases=("giou_loss",),
    **_BOX_LOSS,
)
def generalized_box_iou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    eps: float = 1e-7,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """GIoU loss ``1 - IoU + (|C| - |union|) / |C|`` with ``C`` the enclosing box.

    Args:
        pred: predicted boxes ``[N, 4]`` as ``(x1, y1, x2, y2)``.
        target: target boxes ``[N, 4]``.
        eps: added to the denominators.
        reduction, weight, avg_factor: see ``iou``.

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar.
    """
    _check_boxes(pred, target, "giou", eps, reduction)
    pred, target = _float(pred), _float(target)
    iou, union = _iou(pred, target, eps)
    cw, ch = _enclosing_wh(pred, target)
    area_c = cw * ch
    loss = 1 - iou + (area_c - union) / (area_c + eps)
    return reduce_loss(loss, reduction, weight, avg_factor)


@register_loss(
    "diou",
    description="Distance IoU loss: IoU loss plus normalised distance between box centres.",
    reference="Zheng et al., Distance-IoU Loss, AAAI 2020; torchvision.ops.distance_box_iou_loss",
    aliases=("diou_loss",),
    **_BOX_LOSS,
)
def distance_box_iou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    eps: float = 1e-7,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """DIoU loss ``1 - IoU + rho^2 / c^2`` (centre distance over enclosing diagonal, squared).

    Args:
        pred: predicted boxes ``[N, 4]`` as ``(x1, y1, x2, y2)``.
        target: target boxes ``[N, 4]``.
        eps: added to the denominators.
        reduction, weight, avg_factor: see ``iou``.

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar.
    """
    _check_boxes(pred, target, "diou", eps, reduction)
    loss, _ = _diou(_float(pred), _float(target), eps)
    return reduce_loss(loss, reduction, weight, avg_factor)


@register_loss(
    "ciou",
    description="Complete IoU loss: DIoU plus an aspect-ratio consistency term.",
    reference="Zheng et al., Distance-IoU Loss, AAAI 2020; torchvision.ops.complete_box_iou_loss",
    aliases=("ciou_loss",),
    **_BOX_LOSS,
)
def complete_box_iou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    eps: float = 1e-7,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """CIoU loss ``DIoU + alpha v``, ``v = 4/pi^2 (atan(w_t/h_t) - atan(w_p/h_p))^2``.

    ``alpha = v / (1 - IoU + v + eps)`` is a constant for the gradient (as in the paper
    and torchvision).

    Args:
        pred: predicted boxes ``[N, 4]`` as ``(x1, y1, x2, y2)``.
        target: target boxes ``[N, 4]``.
        eps: added to the denominators.
        reduction, weight, avg_factor: see ``iou``.

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar.
    """
    _check_boxes(pred, target, "ciou", eps, reduction)
    pred, target = _float(pred), _float(target)
    diou, iou = _diou(pred, target, eps)
    v = (4 / math.pi**2) * (_aspect_angle(target) - _aspect_angle(pred)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return reduce_loss(diou + alpha * v, reduction, weight, avg_factor)
