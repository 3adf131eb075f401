"""The one reduction every loss uses (``none`` / ``mean`` / ``sum``, plus mmdetection's
per-element ``weight`` and ``avg_factor``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["REDUCTIONS", "check_reduction", "reduce_loss", "torch_reduce"]

REDUCTIONS = ("none", "mean", "sum")
_EPS = torch.finfo(torch.float32).eps  # mmdetection's guard against avg_factor == 0


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_loss(
    loss: Tensor,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Apply an element-wise ``weight``, then reduce.

    Args:
        loss: element-wise loss, any shape.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        weight: optional tensor broadcastable to ``loss`` (mmdetection's ``weight``).
        avg_factor: with ``reduction="mean"``, divide the sum by this instead of the
            element count (e.g. the number of positive anchors). Not allowed with ``sum``.

    Returns:
        ``loss`` for ``none``, else a scalar. An empty ``loss`` reduces to 0 with a graph.
    """
    check_reduction(reduction)
    if weight is not None:
        loss = loss * weight
    if avg_factor is not None:
        if reduction == "sum":
            raise ValueError('avg_factor can not be used with reduction="sum"')
        if reduction == "mean":
            return loss.sum() / (avg_factor + _EPS)
        return loss
    if reduction == "none":
        return loss
    if loss.numel() == 0:
        return 0 * loss.sum()  # keeps the graph: an empty batch still backpropagates
    return loss.sum() if reduction == "sum" else loss.mean()


def torch_reduce(
    fn,
    pred: Tensor,
    target: Tensor,
    reduction: str,
    weight: Tensor | None,
    avg_factor: float | Tensor | None,
    **kwargs,
) -> Tensor:
    """Call a ``torch.nn.functional`` loss, reducing through ``reduce_loss`` only when
    needed: torch's own fused reduction is used when there is no weight, no avg_factor and
    the input is not empty (torch's ``mean`` of an empty tensor is NaN)."""
    check_reduction(reduction)
    if weight is None and avg_factor is None and pred.numel() > 0:
        return fn(pred, target, reduction=reduction, **kwargs)
    return reduce_loss(fn(pred, target, reduction="none", **kwargs), reduction, weight, avg_factor)
