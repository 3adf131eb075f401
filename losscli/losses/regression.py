"""Regression losses on same-shape real-valued predictions and targets."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from losscli.losses._checks import check_range, check_same_shape
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import torch_reduce
from losscli.losses.registry import register_loss

__all__ = ["l1_loss", "mse_loss", "smooth_l1_loss"]


@register_loss(
    "mse",
    family=Family.REGRESSION,
    pred=Pred.VALUES,
    target=Target.VALUES,
    description="Mean squared error (L2).",
    reference="torch.nn.MSELoss",
    aliases=("l2",),
)
def mse_loss(
    pred: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Squared error ``(pred - target)^2`` on same-shape tensors."""
    check_same_shape(pred, target, "mse")
    return torch_reduce(F.mse_loss, pred, target, reduction, weight, avg_factor)


@register_loss(
    "l1",
    family=Family.REGRESSION,
    pred=Pred.VALUES,
    target=Target.VALUES,
    description="Mean absolute error (L1).",
    reference="torch.nn.L1Loss",
    aliases=("mae",),
)
def l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Absolute error ``|pred - target|`` on same-shape tensors."""
    check_same_shape(pred, target, "l1")
    return torch_reduce(F.l1_loss, pred, target, reduction, weight, avg_factor)


@register_loss(
    "smooth_l1",
    family=Family.REGRESSION,
    pred=Pred.VALUES,
    target=Target.VALUES,
    description="Smooth L1: quadratic below beta, linear above (beta=0 is L1).",
    reference="Girshick, Fast R-CNN, ICCV 2015; torch.nn.SmoothL1Loss",
)
def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 1.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``0.5 x^2 / beta`` for ``|x| < beta``, else ``|x| - 0.5 beta`` (``x = pred - target``)."""
    check_same_shape(pred, target, "smooth_l1")
    check_range("smooth_l1", "beta", beta, 0.0)
    return torch_reduce(F.smooth_l1_loss, pred, target, reduction, weight, avg_factor, beta=beta)
