"""Losses for long-tailed classes and calibration: logit adjustment, balanced softmax,
LDAM, class-balanced weighting by the effective number, and focal loss with a
sample-dependent gamma (FLSD-53).

Inputs as the other classification losses: logits ``[N, C]`` or ``[N, C, *]`` and class
indices ``[N]`` or ``[N, *]``; targets equal to ``ignore_index`` contribute nothing.

The class-prior losses declare ``needs=("class_counts",)``: the job passes the training
split's examples per class as the keyword ``class_counts`` (C positive numbers). Without
it they raise a ``ValueError``; by hand it is a spec parameter
(``ldam:class_counts=[5000,2997,...]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from losscli.losses._checks import check_index_target, check_range
from losscli.losses.binary import sigmoid_focal_loss
from losscli.losses.classification import (
    _log_prob_target,
    _reduce_valid,
    cross_entropy,
    focal_loss,
)
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.registry import register_loss

__all__ = [
    "CLASS_COUNTS",
    "balanced_softmax_loss",
    "class_balanced_ce",
    "class_balanced_focal",
    "class_balanced_sigmoid_focal",
    "effective_number_weights",
    "flsd_loss",
    "ldam_loss",
    "logit_adjusted_ce",
]

CLASS_COUNTS = "class_counts"  # the declared need, and the keyword that carries it

_CB_REFERENCE = ("Cui et al., Class-Balanced Loss Based on Effective Number of Samples, "
                 "CVPR 2019 (github.com/richardaecn/class-balanced-loss, src/cifar_main.py)")


def _counts(counts: Sequence[float] | None, pred: Tensor, name: str) -> list[float]:
    """``class_counts`` checked: one positive number per class of ``pred`` (dim 1)."""
    n_classes = pred.shape[1] if pred.dim() >= 2 else 0
    if counts is None:
        raise ValueError(
            f"{name} needs class_counts: the number of training examples of each of the "
            f"{n_classes} classes (a job supplies them from its training split; by hand: "
            f"'{name}:class_counts=[...]')"
        )
    try:
        values = [float(c) for c in counts]
    except (TypeError, ValueError):  # not a sequence of numbers
        values = []
    if len(values) != n_classes or not all(c > 0 and math.isfinite(c) for c in values):
        raise ValueError(
            f"{name}: class_counts must be {n_classes} positive numbers (one per class of "
            f"pred {tuple(pred.shape)}), got {counts!r}"
        )
    return values


def _per_class(values: Sequence[float], pred: Tensor) -> Tensor:
    """A per-class constant (``C`` values, already checked) in ``pred``'s dtype, shaped
    ``[1, C, 1, ...]`` to broadcast over ``pred`` ``[N, C, *]``."""
    t = torch.tensor(values, dtype=pred.dtype, device=pred.device)
    return t.view(1, -1, *[1] * (pred.dim() - 2))


def _one_hot(target: Tensor, pred: Tensor) -> Tensor:
    """Bool ``[N, C, *]``: True at each target's class (nowhere at an ignored target, which
    is not a class); no range check, so no host sync (``F.one_hot`` would sync)."""
    classes = torch.arange(pred.shape[1], device=pred.device)
    return target.unsqueeze(1) == classes.view(1, -1, *[1] * (pred.dim() - 2))


def effective_number_weights(counts: Sequence[float], beta: float) -> list[float]:
    """Cui et al.'s class weights ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to C
    (as ``src/cifar_main.py``); ``beta = 0`` gives all ones."""
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [w * len(raw) / sum(raw) for w in raw]


@register_loss(
    "logit_adjust",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Logit-adjusted CE: CE(logits + tau * log prior) with training-split priors.",
    reference="Menon et al., Long-tail learning via logit adjustment, ICLR 2021 "
    "(github.com/google-research/google-research, logit_adjustment/utils.py)",
    aliases=("logit_adjusted_ce", "la_ce"),
    needs=(CLASS_COUNTS,),
)
def logit_adjusted_ce(
    pred: Tensor,
    target: Tensor,
    *,
    tau: float = 1.0,
    class_counts: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``CE(pred + log(prior^tau + 1e-12), target)``, ``prior = counts / sum(counts)``:
    the released ``build_loss_fn`` in loss mode (the model is then evaluated on the raw
    logits, which is what makes the adjustment a balanced-error correction).

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        tau: temperature of the prior (>= 0); 1 in the paper, 0 is plain CE.
        class_counts: training examples per class (C positive numbers, or priors).
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "logit_adjust")
    check_range("logit_adjust", "tau", tau, 0.0)
    counts = _counts(class_counts, pred, "logit_adjust")
    shift = [math.log((c / sum(counts)) ** tau + 1e-12) for c in counts]
    return cross_entropy(pred + _per_class(shift, pred), target,
                         ignore_index=ignore_index, reduction=reduction, weight=weight,
                         avg_factor=avg_factor)


@register_loss(
    "balanced_softmax",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Balanced softmax: CE(logits + log class_counts).",
    reference="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, "
    "NeurIPS 2020 (github.com/jiawei-ren/BalancedMetaSoftmax-Classification, "
    "loss/BalancedSoftmaxLoss.py)",
    aliases=("balanced_ce", "bsce"),
    needs=(CLASS_COUNTS,),
)
def balanced_softmax_loss(
    pred: Tensor,
    target: Tensor,
    *,
    class_counts: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``CE(pred + log(counts), target)``, as the released ``balanced_softmax_loss``.

    Softmax is shift-invariant, so this equals ``logit_adjust`` with ``tau = 1`` (up to
    the latter's 1e-12 guard).

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        class_counts: training examples per class (C positive numbers).
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "balanced_softmax")
    counts = _counts(class_counts, pred, "balanced_softmax")
    shift = _per_class([math.log(c) for c in counts], pred)
    return cross_entropy(pred + shift, target, ignore_index=ignore_index, reduction=reduction,
                         weight=weight, avg_factor=avg_factor)


@register_loss(
    "ldam",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="LDAM: CE(s * (logits - m_y at the target)), margins m_c ~ n_c^(-1/4).",
    reference="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin "
    "Loss, NeurIPS 2019 (github.com/kaidic/LDAM-DRW, losses.py LDAMLoss)",
    aliases=("ldam_loss",),
    needs=(CLASS_COUNTS,),
)
def ldam_loss(
    pred: Tensor,
    target: Tensor,
    *,
    max_m: float = 0.5,
    s: float = 30.0,
    class_counts: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """LDAM as the released ``LDAMLoss`` (without its optional class weights):
    ``m_c = max_m * n_c^(-1/4) / max_k n_k^(-1/4)``; the target logit loses ``m_y``, then
    ``CE(s * logits)``.

    The authors pair ``s = 30`` with a cosine classifier (``NormedLinear``: logits in
    [-1, 1]); on unnormalised logits a smaller ``s`` (e.g. 1) is the comparable setting.
    Their deferred re-weighting schedule (DRW) is a training schedule, not a loss.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        max_m: the largest margin (the rarest class's), > 0 (0.5 released).
        s: logit scale, > 0 (30 released).
        class_counts: training examples per class (C positive numbers).
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "ldam")
    if not (max_m > 0 and s > 0):
        raise ValueError(f"ldam: max_m and s must be > 0, got max_m={max_m}, s={s}")
    inv = [c**-0.25 for c in _counts(class_counts, pred, "ldam")]
    margins = _per_class([max_m * m / max(inv) for m in inv], pred)
    return cross_entropy(s * (pred - margins * _one_hot(target, pred)), target,
                         ignore_index=ignore_index, reduction=reduction, weight=weight,
                         avg_factor=avg_factor)


def _cb_weights(counts: Sequence[float] | None, beta: float, pred: Tensor, name: str):
    if not 0 <= beta < 1:
        raise ValueError(f"{name}: beta must be in [0, 1), got {beta}")
    return effective_number_weights(_counts(counts, pred, name), beta)


def _cb_softmax_focal(name: str, pred: Tensor, target: Tensor, beta: float, gamma: float,
                      class_counts: Sequence[float] | None, **reduce_args) -> Tensor:
    """``focal`` with ``alpha`` = the class-balanced weights (``cb_focal``; ``cb_ce`` is
    ``gamma = 0``); ``reduce_args``: ``ignore_index``, ``reduction``, ``weight``,
    ``avg_factor``, passed on."""
    check_index_target(pred, target, name)
    w = _cb_weights(class_counts, beta, pred, name)
    return focal_loss(pred, target, gamma=gamma, alpha=w, **reduce_args)


@register_loss(
    "cb_ce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Class-balanced CE: CE weighted by (1 - beta) / (1 - beta^n_y), normalised.",
    reference=_CB_REFERENCE,
    aliases=("class_balanced_ce",),
    needs=(CLASS_COUNTS,),
)
def class_balanced_ce(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 0.9999,
    class_counts: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``w_y * CE`` with Cui et al.'s weights (``effective_number_weights``).

    ``mean`` divides by the number of (non-ignored) elements, as the released softmax
    loss (``tf.losses.softmax_cross_entropy`` with per-example weights); torch's
    ``CrossEntropyLoss(weight=w)`` would divide by the sum of the batch's weights.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        beta: in [0, 1); 0 is plain CE, -> 1 is inverse frequency (0.9999 released).
        class_counts: training examples per class (C positive numbers).
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    return _cb_softmax_focal("cb_ce", pred, target, beta, 0.0, class_counts,
                             ignore_index=ignore_index, reduction=reduction, weight=weight,
                             avg_factor=avg_factor)


@register_loss(
    "cb_focal",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Class-balanced softmax focal loss: focal with alpha_y = CB weight of class y.",
    reference=_CB_REFERENCE,
    aliases=("class_balanced_focal",),
    needs=(CLASS_COUNTS,),
)
def class_balanced_focal(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 0.9999,
    gamma: float = 2.0,
    class_counts: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``-w_y (1 - p_t)^gamma log p_t`` on softmax probabilities: our ``focal`` with
    ``alpha`` = the class-balanced weights. (The released focal variant is the sigmoid
    one, ``cb_sigmoid_focal``; this is the softmax counterpart the paper describes.)

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        beta: in [0, 1) (0.9999 released).
        gamma: focusing parameter >= 0; 2 as ``focal`` (the paper tunes 0.5, 1, 2).
        class_counts: training examples per class (C positive numbers).
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    return _cb_softmax_focal("cb_focal", pred, target, beta, gamma, class_counts,
                             ignore_index=ignore_index, reduction=reduction, weight=weight,
                             avg_factor=avg_factor)


@register_loss(
    "cb_sigmoid_focal",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Class-balanced sigmoid focal loss over the C one-vs-rest channels.",
    reference=_CB_REFERENCE + ", focal_loss",
    aliases=("class_balanced_sigmoid_focal",),
    needs=(CLASS_COUNTS,),
)
def class_balanced_sigmoid_focal(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 0.9999,
    gamma: float = 2.0,
    class_counts: Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``w_y * sum_c (1 - p_tc)^gamma BCE(x_c, onehot(y)_c)`` with sigmoid probabilities,
    as the released ``focal_loss`` (no alpha other than the class weight; its sum over
    the batch divided by the number of positives is our ``mean``). ``gamma = 0`` is the
    released class-balanced sigmoid CE.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        beta: in [0, 1) (0.9999 released).
        gamma: focusing parameter >= 0; 2 as ``sigmoid_focal`` (the paper tunes 0.5, 1, 2).
        class_counts: training examples per class (C positive numbers).
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "cb_sigmoid_focal")
    w = _per_class(_cb_weights(class_counts, beta, pred, "cb_sigmoid_focal"), pred)
    onehot = _one_hot(target, pred).to(pred.dtype)
    per_class = sigmoid_focal_loss(pred, onehot, alpha=-1.0, gamma=gamma, reduction="none")
    valid = target != ignore_index
    w_t = (w * onehot).sum(dim=1)  # the target's weight (0 at ignored targets)
    return _reduce_valid(w_t * per_class.sum(dim=1), valid, reduction, weight, avg_factor)


@register_loss(
    "flsd",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Focal loss with sample-dependent gamma (FLSD-53): 5 if p_t < 0.2, else 3.",
    reference="Mukhoti et al., Calibrating Deep Neural Networks using Focal Loss, NeurIPS 2020 "
    "(github.com/torrvision/focal_calibration, Losses/focal_loss_adaptive_gamma.py)",
    aliases=("flsd53", "focal_adaptive"),
)
def flsd_loss(
    pred: Tensor,
    target: Tensor,
    *,
    gamma: float = 3.0,
    gamma_hard: float = 5.0,
    threshold: float = 0.2,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``-(1 - p_t)^gamma_t log p_t`` with ``gamma_t = gamma_hard`` where ``p_t <
    threshold``, else ``gamma`` (a constant for the gradient, as in the released code).

    The released ``FocalLossAdaptive`` picks gamma per sample on the host (``.item()``)
    from the table {p_t < 0.2: 5, p_t < 0.5: 3, else: gamma}; with ``gamma = 3`` that is
    FLSD-53, which we compute without a host sync. It returns the sum over the batch; our
    ``mean`` divides it by the element count.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        gamma: focusing parameter for ``p_t >= threshold`` (>= 0).
        gamma_hard: focusing parameter for ``p_t < threshold`` (>= 0).
        threshold: in [0, 1].
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_index_target(pred, target, "flsd")
    check_range("flsd", "gamma", gamma, 0.0)
    check_range("flsd", "gamma_hard", gamma_hard, 0.0)
    check_range("flsd", "threshold", threshold, 0.0, 1.0)
    logp_t, valid, _ = _log_prob_target(pred, target, ignore_index)
    gamma_t = gamma + (gamma_hard - gamma) * (logp_t.exp() < threshold).to(logp_t.dtype)
    # clamp: (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1 (as ``focal``)
    loss = -(-torch.expm1(logp_t)).clamp_min(1e-12).pow(gamma_t) * logp_t
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)
