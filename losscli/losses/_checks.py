"""Argument checks shared by the loss functions (each raises ``ValueError``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["as_class_tensor", "check_index_target", "check_same_shape", "check_range"]


def check_same_shape(pred: Tensor, target: Tensor, loss: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{loss}: pred and target must have the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def check_index_target(pred: Tensor, target: Tensor, loss: str) -> None:
    """``pred`` is ``[N, C, *]`` and ``target`` the matching ``[N, *]`` class indices."""
    if pred.dim() < 2:
        raise ValueError(f"{loss}: pred must be [N, C] or [N, C, *], got {tuple(pred.shape)}")
    expected = (pred.shape[0], *pred.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{loss}: target must be class indices of shape {expected} for pred of shape "
            f"{tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point():
        raise ValueError(f"{loss}: target must hold integer class indices, got {target.dtype}")


def check_range(loss: str, name: str, value: float, low: float, high: float | None = None) -> None:
    ok = value >= low and (high is None or value <= high)
    if not ok:
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{loss}: {name} must be {bound}, got {value}")


def as_class_tensor(
    value: float | Sequence[float] | Tensor | None, like: Tensor, num_classes: int, what: str
) -> Tensor | None:
    """A per-class parameter given as a sequence, as a tensor on ``like``'s device."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.dim() != 1 or t.numel() != num_classes:
        raise ValueError(f"{what} must have one value per class ({num_classes}), got {value!r}")
    return t
