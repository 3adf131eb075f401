"""Binary / multi-label losses: same-shape float targets in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.losses._checks import check_same_shape
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import torch_reduce
from losscli.losses.registry import register_loss

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits"]


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
        pw = torch.as_tensor(pos_weight, dtype=pred.dtype, device=pred.device)
        if (pw < 0).any():
            raise ValueError(f"bce_logits: pos_weight must be >= 0, got {pos_weight!r}")
    return torch_reduce(F.binary_cross_entropy_with_logits, pred, target.to(pred.dtype),
                        reduction, weight, avg_factor, pos_weight=pw)
