"""Multi-class losses on logits ``[N, C]`` or dense ``[N, C, *]`` with index targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.losses._checks import as_class_tensor, check_index_target, check_range
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import check_reduction, reduce_loss
from losscli.losses.registry import register_loss

__all__ = ["cross_entropy", "focal_loss", "label_smoothing_loss", "nll_loss"]


def _weighted_nll(
    fn,
    pred: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    weight: Tensor | None,
    avg_factor: float | Tensor | None,
    **kwargs,
) -> Tensor:
    """torch's (class-weighted) mean, made finite when every target is ignored.

    torch divides by the summed class weight of the non-ignored targets, which is 0/0 when
    all are ignored; we divide the sum by that total clamped away from zero instead (no
    host sync).
    """
    check_reduction(reduction)
    if weight is not None or avg_factor is not None:
        loss = fn(pred, target, weight=class_weight, ignore_index=ignore_index,
                  reduction="none", **kwargs)
        return reduce_loss(loss, reduction, weight, avg_factor)
    if reduction != "mean":
        return fn(pred, target, weight=class_weight, ignore_index=ignore_index,
                  reduction=reduction, **kwargs)
    total = fn(pred, target, weight=class_weight, ignore_index=ignore_index,
               reduction="sum", **kwargs)
    valid = target != ignore_index
    if class_weight is None:
        denom = valid.sum()
    else:
        denom = (class_weight[target.clamp(0, pred.shape[1] - 1)] * valid).sum()
    return total / denom.clamp_min(torch.finfo(torch.float32).tiny)


@register_loss(
    "ce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Cross-entropy (torch.nn.functional.cross_entropy).",
    reference="torch.nn.CrossEntropyLoss",
    aliases=("cross_entropy",),
)
def cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    class_weight: Sequence[float] | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Cross-entropy on logits, with torch's semantics.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        class_weight: per-class rescaling ``[C]`` (torch's ``weight``).
        ignore_index: targets equal to this contribute nothing.
        label_smoothing: in [0, 1]; mixes the one-hot target with the uniform one.
        reduction: ``none`` | ``mean`` | ``sum``.
        weight, avg_factor: per-element weight and mean denominator (mmdetection style).

    Returns:
        The loss; ``mean`` divides by the summed class weight of non-ignored targets.
    """
    check_index_target(pred, target, "ce")
    check_range("ce", "label_smoothing", label_smoothing, 0.0, 1.0)
    cw = as_class_tensor(class_weight, pred, pred.shape[1], "ce: class_weight")
    if cw is not None:
        cw = cw.to(pred.dtype)
    return _weighted_nll(F.cross_entropy, pred, target, cw, ignore_index, reduction, weight,
                         avg_factor, label_smoothing=label_smoothing)


@register_loss(
    "nll",
    family=Family.CLASSIFICATION,
    pred=Pred.LOG_PROBS,
    target=Target.INDEX,
    description="Negative log-likelihood of log-probabilities (torch.nn.NLLLoss).",
    reference="torch.nn.NLLLoss",
)
def nll_loss(
    pred: Tensor,
    target: Tensor,
    *,
    class_weight: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """NLL on log-probabilities ``[N, C, *]`` (e.g. ``log_softmax`` output); see ``ce``."""
    check_index_target(pred, target, "nll")
    cw = as_class_tensor(class_weight, pred, pred.shape[1], "nll: class_weight")
    if cw is not None:
        cw = cw.to(pred.dtype)
    return _weighted_nll(F.nll_loss, pred, target, cw, ignore_index, reduction, weight,
                         avg_factor)


@register_loss(
    "label_smoothing",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Cross-entropy against targets smoothed towards uniform by epsilon.",
    reference="Szegedy et al., Rethinking the Inception Architecture, CVPR 2016",
    aliases=("ls",),
)
def label_smoothing_loss(
    pred: Tensor,
    target: Tensor,
    *,
    epsilon: float = 0.1,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Label-smoothed cross-entropy; equals ``ce`` with ``label_smoothing=epsilon``."""
    return cross_entropy(pred, target, ignore_index=ignore_index, label_smoothing=epsilon,
                         reduction=reduction, weight=weight, avg_factor=avg_factor)


@register_loss(
    "focal",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Softmax focal loss: cross-entropy scaled by (1 - p_t)^gamma.",
    reference="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
)
def focal_loss(
    pred: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` on softmax probabilities.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        gamma: focusing parameter >= 0; ``gamma=0`` without alpha is cross-entropy.
        alpha: one weight for all classes, or one per class (``alpha_t = alpha[target]``).
        ignore_index: targets equal to this contribute nothing; ``mean`` averages over
            the others.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "focal")
    check_range("focal", "gamma", gamma, 0.0)
    check_reduction(reduction)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    logp_t = F.log_softmax(pred.float(), dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    loss = -logp_t
    if gamma != 0:
        # clamp: (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1
        loss = (-torch.expm1(logp_t)).clamp_min(1e-12).pow(gamma) * loss
    if isinstance(alpha, (int, float)):
        loss = alpha * loss
    elif alpha is not None:
        loss = as_class_tensor(alpha, pred, pred.shape[1], "focal: alpha")[safe_target] * loss
    loss = (loss * valid).to(pred.dtype)
    if reduction == "mean" and weight is None and avg_factor is None:
        return loss.sum() / valid.sum().clamp_min(1)
    return reduce_loss(loss, reduction, weight, avg_factor)
