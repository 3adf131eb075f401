"""Binary / multi-label losses: same-shape float targets in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.losses._checks import check_range, check_same_shape
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import check_reduction, reduce_loss, torch_reduce
from losscli.losses.registry import register_loss

__all__ = [
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
]


def _as_list(value: float | Sequence[float]) -> list[float]:
    return [value] if isinstance(value, (int, float)) else list(value)


@register_loss(
    "bce",
    family=Family.BINARY,
    pred=Pred.PROBS,
    target=Target.BINARY,
    description="Binary cross-entropy on probabilities (log clamped at -100, as torch).",
    reference="torch.nn.BCELoss",
)
def binary_cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """BCE on probabilities ``pred`` in [0, 1] against same-shape targets in [0, 1].

    ``weight`` is torch's per-element rescaling weight (broadcastable), and
    ``avg_factor`` replaces the element count of ``mean``.
    """
    check_same_shape(pred, target, "bce")
    return torch_reduce(F.binary_cross_entropy, pred, target.to(pred.dtype), reduction, weight,
                        avg_factor)


@register_loss(
    "bce_logits",
    family=Family.BINARY,
    pred=Pred.LOGITS,
    target=Target.BINARY,
    description="Binary cross-entropy on logits, optional pos_weight (numerically stable).",
    reference="torch.nn.BCEWithLogitsLoss",
    aliases=("bce_with_logits",),
)
def binary_cross_entropy_with_logits(
    pred: Tensor,
    target: Tensor,
    *,
    pos_weight: float | Sequence[float] | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """BCE on logits, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Args:
        pred: logits, any shape.
        target: same-shape floats in [0, 1].
        pos_weight: weight of positive examples; a number, or one per class along the last
            dimension (torch's broadcasting).
        weight, avg_factor: per-element weight and mean denominator.
    """
    check_same_shape(pred, target, "bce_logits")
    pw = None
    if pos_weight is not None:
        # checked on the host value: a device tensor in an `if` would sync every step
        if not isinstance(pos_weight, Tensor) and min(_as_list(pos_weight)) < 0:
            raise ValueError(f"bce_logits: pos_weight must be >= 0, got {pos_weight!r}")
        pw = torch.as_tensor(pos_weight, dtype=pred.dtype, device=pred.device)
    return torch_reduce(F.binary_cross_entropy_with_logits, pred, target.to(pred.dtype),
                        reduction, weight, avg_factor, pos_weight=pw)


@register_loss(
    "sigmoid_focal",
    family=Family.BINARY,
    pred=Pred.LOGITS,
    target=Target.BINARY,
    description="Sigmoid focal loss: BCE on logits scaled by (1 - p_t)^gamma, alpha-balanced.",
    reference="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017; "
    "torchvision.ops.sigmoid_focal_loss",
    aliases=("binary_focal",),
)
def sigmoid_focal_loss(
    pred: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``alpha_t (1 - p_t)^gamma BCE(pred, target)`` element-wise, as torchvision.

    ``p = sigmoid(pred)``, ``p_t = p t + (1 - p)(1 - t)``, ``alpha_t = alpha t +
    (1 - alpha)(1 - t)``. Unlike torchvision the default reduction is ``mean``.

    Args:
        pred: logits, any shape.
        target: same-shape floats in [0, 1] (1 positive, 0 negative).
        alpha: weight of positives in [0, 1]; a negative value disables the weighting.
        gamma: focusing parameter >= 0 (0 gives alpha-weighted BCE).
        weight, avg_factor: per-element weight and mean denominator (mmdetection style,
            e.g. ``avg_factor`` = number of positive anchors).

    Returns:
        The loss, shaped like ``pred`` for ``reduction="none"``.
    """
    check_same_shape(pred, target, "sigmoid_focal")
    check_range("sigmoid_focal", "gamma", gamma, 0.0)
    if alpha > 1:
        raise ValueError(f"sigmoid_focal: alpha must be in [0, 1] or < 0 to disable, got {alpha}")
    check_reduction(reduction)
    target = target.to(pred.dtype)
    p = torch.sigmoid(pred)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    if gamma != 0:
        one_minus_pt = p + target - 2 * p * target  # = 1 - p_t
        loss = loss * (one_minus_pt * one_minus_pt if gamma == 2 else one_minus_pt.pow(gamma))
    if alpha >= 0:
        loss = (1 - alpha + (2 * alpha - 1) * target) * loss  # alpha_t
    return reduce_loss(loss, reduction, weight, avg_factor)


@register_loss(
    "asymmetric",
    family=Family.BINARY,
    pred=Pred.LOGITS,
    target=Target.BINARY,
    description="Asymmetric loss (ASL) for multi-label: separate focusing, shifted negatives.",
    reference="Ridnik et al., Asymmetric Loss For Multi-Label Classification, ICCV 2021 "
    "(github.com/Alibaba-MIIL/ASL, AsymmetricLoss)",
    aliases=("asl",),
)
def asymmetric_loss(
    pred: Tensor,
    target: Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """ASL element-wise, as the authors' ``AsymmetricLoss`` (whose output is the ``sum``).

    With ``p = sigmoid(pred)`` and the shifted ``p_m = max(p - clip, 0)``::

        loss = -t (1 - p)^gamma_pos log(p) - (1 - t) p_m^gamma_neg log(1 - p_m)

    with both probabilities inside the logs clamped at ``eps`` (the authors' code; for soft
    targets the exponent is ``gamma_pos t + gamma_neg (1 - t)``). The focusing weight keeps
    its gradient (the authors' ``disable_torch_grad_focal_loss=False``).

    Args:
        pred: logits, any shape.
        target: same-shape floats in [0, 1].
        gamma_pos, gamma_neg: focusing parameters >= 0 for positives and negatives.
        clip: probability margin >= 0 shifting negatives (0 disables).
        eps: clamp inside the logs, > 0.

    Returns:
        The loss, shaped like ``pred`` for ``reduction="none"``.
    """
    check_same_shape(pred, target, "asymmetric")
    for name, value in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg), ("clip", clip)):
        check_range("asymmetric", name, value, 0.0)
    if not eps > 0:
        raise ValueError(f"asymmetric: eps must be > 0, got {eps}")
    check_reduction(reduction)
    target = target.to(pred.dtype)
    p = torch.sigmoid(pred)
    p_neg = 1 - p if clip <= 0 else (1 - p + clip).clamp(max=1)  # 1 - p_m
    loss = target * p.clamp(min=eps).log() + (1 - target) * p_neg.clamp(min=eps).log()
    if gamma_pos > 0 or gamma_neg > 0:
        one_minus_pt = 1 - (p * target + p_neg * (1 - target))
        loss = loss * one_minus_pt.pow(gamma_pos * target + gamma_neg * (1 - target))
    return reduce_loss(-loss, reduction, weight, avg_factor)
