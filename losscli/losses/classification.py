"""Multi-class losses on logits ``[N, C]`` or dense ``[N, C, *]`` with index targets."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.losses._checks import as_class_tensor, check_index_target, check_range
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import check_reduction, reduce_loss
from losscli.losses.registry import register_loss

__all__ = [
    "cross_entropy",
    "focal_loss",
    "generalized_cross_entropy",
    "label_smoothing_loss",
    "mae_probs_loss",
    "multi_margin_loss",
    "nll_loss",
    "poly1_loss",
]


def _weighted_nll(
    fn,
    pred: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    weight: Tensor | None,
    avg_factor: float | Tensor | None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``fn`` (``F.cross_entropy`` or ``F.nll_loss``) with torch's semantics, except that
    the plain ``mean`` is finite (0) when every target is ignored (see ``_nll_mean``)."""
    check_reduction(reduction)
    kwargs = {"label_smoothing": label_smoothing} if label_smoothing else {}
    if weight is not None or avg_factor is not None:
        loss = fn(pred, target, weight=class_weight, ignore_index=ignore_index,
                  reduction="none", **kwargs)
        return reduce_loss(loss, reduction, weight, avg_factor)
    if reduction != "mean":
        return fn(pred, target, weight=class_weight, ignore_index=ignore_index,
                  reduction=reduction, **kwargs)
    logp = F.log_softmax(pred, dim=1) if fn is F.cross_entropy else pred
    return _nll_mean(logp, target, class_weight, ignore_index, label_smoothing)


def _nll_mean(
    logp: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> Tensor:
    """torch's mean NLL (label-smoothed as ``F.cross_entropy``): the sum divided by the
    summed class weight of the non-ignored targets, clamped away from 0 so that an
    all-ignored batch gives 0, not torch's 0/0 = NaN (and no host sync)."""
    total, denom = _nll_sum_and_total_weight(logp, target, class_weight, ignore_index)
    if label_smoothing > 0:
        n_classes = logp.shape[1]
        if class_weight is not None:
            logp = logp * class_weight.view(-1, *([1] * (logp.dim() - 2)))
        smooth = -(logp.sum(dim=1) * (target != ignore_index)).sum()
        total = (1 - label_smoothing) * total + label_smoothing / n_classes * smooth
    return total / denom.clamp_min(torch.finfo(torch.float32).tiny)


def _nll_sum_and_total_weight(
    logp: Tensor, target: Tensor, class_weight: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Summed NLL and the summed class weight of the non-ignored targets, both from one
    ATen NLL kernel (the one ``F.nll_loss`` calls; it returns that total weight), which
    saves a pass over the targets to count them. Shapes are mapped as ``nll_loss_nd``."""
    sum_reduction = 2  # ATen's Reduction::Sum
    if logp.dim() == 2:
        return torch.ops.aten.nll_loss_forward(logp, target, class_weight, sum_reduction,
                                               ignore_index)
    if logp.dim() != 4:
        n, c, size = logp.shape[0], logp.shape[1], math.prod(logp.shape[2:])
        logp, target = logp.reshape(n, c, 1, size), target.reshape(n, 1, size)
    return torch.ops.aten.nll_loss2d_forward(logp, target, class_weight, sum_reduction,
                                             ignore_index)


def _log_prob_target(pred: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, ...]:
    """``log p_t`` (log-softmax at the target class), the non-ignored mask, and the target
    with ignored entries replaced by class 0 (so ``gather`` stays in range, no host sync)."""
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    logp_t = F.log_softmax(pred, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    return logp_t, valid, safe_target


def _reduce_valid(
    loss: Tensor,
    valid: Tensor,
    reduction: str,
    weight: Tensor | None,
    avg_factor: float | Tensor | None,
) -> Tensor:
    """Zero the ignored entries; a plain ``mean`` averages over the non-ignored ones only
    (0 when all are ignored), otherwise ``reduce_loss`` applies weight / avg_factor."""
    check_reduction(reduction)
    loss = loss * valid
    if reduction == "mean" and weight is None and avg_factor is None:
        return loss.sum() / valid.sum().clamp_min(1)
    return reduce_loss(loss, reduction, weight, avg_factor)


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
                         avg_factor, label_smoothing)


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
    logp_t, valid, safe_target = _log_prob_target(pred, target, ignore_index)
    loss = -logp_t
    if gamma != 0:
        # clamp: (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1
        loss = (-torch.expm1(logp_t)).clamp_min(1e-12).pow(gamma) * loss
    if isinstance(alpha, (int, float)):
        loss = alpha * loss
    elif alpha is not None:
        loss = as_class_tensor(alpha, pred, pred.shape[1], "focal: alpha")[safe_target] * loss
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)


@register_loss(
    "poly1",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Poly-1: cross-entropy plus epsilon * (1 - p_t).",
    reference="Leng et al., PolyLoss: A Polynomial Expansion Perspective of Classification "
    "Loss Functions, ICLR 2022",
    aliases=("poly_loss", "polyloss"),
)
def poly1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    epsilon: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Poly-1 loss ``CE + epsilon * (1 - p_t)``, as the paper's reference code.

    With label smoothing ``s``, both terms use the smoothed target ``y`` (as the paper's
    code): ``CE = -sum_c y_c log p_c`` and ``p_t = sum_c y_c p_c = (1 - s) p_t + s / C``.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        epsilon: coefficient of the first polynomial term, >= -1 (0 is cross-entropy).
        label_smoothing: in [0, 1].
        ignore_index: targets equal to this contribute nothing; ``mean`` averages over
            the others.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "poly1")
    check_range("poly1", "epsilon", epsilon, -1.0)
    check_range("poly1", "label_smoothing", label_smoothing, 0.0, 1.0)
    logp = F.log_softmax(pred, dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    logp_t = logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    one_minus_pt = -torch.expm1(logp_t)
    loss = -logp_t
    if label_smoothing > 0:
        n_classes = pred.shape[1]
        loss = (1 - label_smoothing) * loss - label_smoothing / n_classes * logp.sum(dim=1)
        one_minus_pt = (1 - label_smoothing) * one_minus_pt + label_smoothing * (
            1 - 1 / n_classes
        )
    return _reduce_valid(loss + epsilon * one_minus_pt, valid, reduction, weight, avg_factor)


@register_loss(
    "hinge",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Multi-class margin (hinge) loss, as torch.nn.MultiMarginLoss.",
    reference="Weston & Watkins, Multi-class SVMs, 1999; torch.nn.MultiMarginLoss",
    aliases=("multi_margin", "multi_hinge"),
)
def multi_margin_loss(
    pred: Tensor,
    target: Tensor,
    *,
    p: int = 1,
    margin: float = 1.0,
    class_weight: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``sum_{i != y} w_y * max(0, margin - x_y + x_i)^p / C`` per sample.

    Args:
        pred: scores ``[N, C]`` or ``[N, C, *]`` (dense inputs are scored per position).
        target: class indices ``[N]`` or ``[N, *]``.
        p: 1 or 2, the power of the hinge.
        margin: the margin.
        class_weight: per-class weight ``[C]``, applied by the target class (torch's
            ``weight``).
        ignore_index: targets equal to this contribute nothing; ``mean`` averages over
            the others (torch divides by N, which is the same when none is ignored).

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "hinge")
    if p not in (1, 2):
        raise ValueError(f"hinge: p must be 1 or 2, got {p!r}")
    n_classes = pred.shape[1]
    cw = as_class_tensor(class_weight, pred, n_classes, "hinge: class_weight")
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    flat = pred if pred.dim() == 2 else pred.movedim(1, -1).reshape(-1, n_classes)
    loss = F.multi_margin_loss(flat, safe_target.reshape(-1), p=p, margin=margin,
                               weight=None if cw is None else cw.to(pred.dtype),
                               reduction="none")
    return _reduce_valid(loss.view(target.shape), valid, reduction, weight, avg_factor)


@register_loss(
    "gce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Generalized cross-entropy (1 - p_t^q) / q, robust to label noise.",
    reference="Zhang & Sabuncu, Generalized Cross Entropy Loss for Training Deep Neural "
    "Networks with Noisy Labels, NeurIPS 2018",
    aliases=("generalized_ce",),
)
def generalized_cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    q: float = 0.7,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """The L_q loss ``(1 - p_t^q) / q`` of the softmax probability of the target class.

    Computed as ``-expm1(q log p_t) / q`` (stable for saturated logits). ``q -> 0`` tends
    to cross-entropy, ``q = 1`` is ``1 - p_t`` (half of ``mae_probs``).

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        q: in (0, 1]; the paper uses 0.7.
        ignore_index: targets equal to this contribute nothing; ``mean`` averages over
            the others.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "gce")
    if not 0 < q <= 1:
        raise ValueError(f"gce: q must be in (0, 1], got {q}")
    logp_t, valid, _ = _log_prob_target(pred, target, ignore_index)
    loss = -torch.expm1(q * logp_t) / q
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)


@register_loss(
    "mae_probs",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="L1 distance between softmax probabilities and the one-hot target (2 - 2p_t).",
    reference="Ghosh et al., Robust Loss Functions under Label Noise for Deep Neural "
    "Networks, AAAI 2017",
    aliases=("mae_softmax",),
)
def mae_probs_loss(
    pred: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Mean absolute error between probabilities and one-hot targets, summed over classes.

    Per element, ``sum_c |softmax(x)_c - onehot(y)_c| = (1 - p_t) + sum_{c != y} p_c =
    2 (1 - p_t)``; it is bounded in [0, 2] and symmetric, hence noise-tolerant.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        ignore_index: targets equal to this contribute nothing; ``mean`` averages over
            the others.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "mae_probs")
    logp_t, valid, _ = _log_prob_target(pred, target, ignore_index)
    return _reduce_valid(-2 * torch.expm1(logp_t), valid, reduction, weight, avg_factor)
