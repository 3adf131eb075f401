"""Seeded train / validation / test splits, plain or stratified by class.

Both functions draw from the ``torch.Generator`` they are given, so a data seed fixes the
split. Sizes are ``round(fraction * n)`` with a floor of ``least`` per non-empty split
(validation is empty when ``val_fraction`` is 0); a stratified split applies that per class,
so every class appears in every split, and then shuffles each split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from losscli.errors import UsageError

__all__ = ["Split", "SplitTensors", "check_channels", "check_fractions", "check_int",
           "split_indices", "split_sizes", "standardise", "stratified_split_indices", "take"]

Split = tuple[Tensor, Tensor, Tensor]  # int64 indices: train, validation, test


@dataclass
class SplitTensors:
    """Inputs ``*_x`` and targets ``*_y`` of the three splits; each reader's data class
    adds its own fields after these six."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor


def check_int(name: str, value: int, low: int, high: float = math.inf) -> None:
    """``value`` is an ``int`` (not a ``bool``) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        rule = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
        raise UsageError(f"{name} must be an integer {rule}, got {value!r}")


def check_channels(channels: int, three: str = "colour") -> None:
    """``channels`` is 1 (grey) or 3 (``three`` words the colour kind in the error)."""
    if isinstance(channels, bool) or channels not in (1, 3):
        raise UsageError(f"channels must be 1 (grey) or 3 ({three}), got {channels!r}")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """``0 <= val_fraction``, ``0 < test_fraction`` and their sum ``< 1``."""
    for name, value, zero_ok in (("val_fraction", val_fraction, True),
                                 ("test_fraction", test_fraction, False)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not (0 <= value < 1 if zero_ok else 0 < value < 1):
            rule = "[0, 1)" if zero_ok else "(0, 1)"
            raise UsageError(f"{name} must be a number in {rule}, got {value!r}")
    if not val_fraction + test_fraction < 1:
        raise UsageError(f"val_fraction + test_fraction must be < 1 (something must be left "
                         f"to train on), got {val_fraction:g} + {test_fraction:g}")


def _sizes(n: int, val_fraction: float, test_fraction: float, least: int, what: str,
           unit: str) -> tuple[int, int, int]:
    n_test = max(least, round(test_fraction * n))
    n_val = max(least, round(val_fraction * n)) if val_fraction > 0 else 0
    n_train = n - n_val - n_test
    if n_train < least:
        parts = "train, validation and test" if val_fraction > 0 else "train and test"
        need = least * (3 if val_fraction > 0 else 2)
        raise UsageError(f"{what} has {n} {unit}; a split into {parts} needs at least {need} "
                         f"({least} per split)")
    return n_train, n_val, n_test


def split_indices(n: int, *, val_fraction: float, test_fraction: float, gen: torch.Generator,
                  least: int = 2, what: str = "the data", unit: str = "rows") -> Split:
    """A seeded random split of ``range(n)``; ``what`` and ``unit`` word the errors."""
    check_fractions(val_fraction, test_fraction)
    n_train, n_val, _ = _sizes(n, val_fraction, test_fraction, least, what, unit)
    perm = torch.randperm(n, generator=gen)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def stratified_split_indices(labels: Tensor, *, val_fraction: float, test_fraction: float,
                             gen: torch.Generator, class_names: list[str] | tuple[str, ...],
                             what: str = "the data", unit: str = "rows") -> Split:
    """A seeded split of ``range(len(labels))`` that keeps every class in every split.

    Args:
        labels: int64 ``[N]``, values ``0..K-1``.
        class_names: ``K`` names, used in errors (a class with too few samples).
    """
    check_fractions(val_fraction, test_fraction)
    parts: list[list[Tensor]] = [[], [], []]
    for k, name in enumerate(class_names):
        members = (labels == k).nonzero().squeeze(1)
        n_train, n_val, _ = _sizes(len(members), val_fraction, test_fraction, 1,
                                   f"{what}: class {name!r}", unit)
        members = members[torch.randperm(len(members), generator=gen)]
        n_test = len(members) - n_train - n_val
        for part, chunk in zip(parts, members.split([n_train, n_val, n_test]), strict=True):
            part.append(chunk)
    out = []
    for part in parts:
        idx = torch.cat(part) if part else torch.zeros(0, dtype=torch.long)
        out.append(idx[torch.randperm(len(idx), generator=gen)])
    return out[0], out[1], out[2]


def take(split: Split, *tensors: Tensor) -> list[Tensor]:
    """``[a[train], b[train], a[val], b[val], a[test], b[test]]``, each contiguous."""
    return [t[idx].contiguous() for idx in split for t in tensors]


def split_sizes(split: Split, unit: str) -> str:
    """The sizes for a source line: ``"8 train / 2 val / 2 test images"``."""
    return f"{len(split[0])} train / {len(split[1])} val / {len(split[2])} test {unit}"


def standardise(x: Tensor, train: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` ``[N, D]`` standardised with the column mean and standard deviation of its
    rows ``train``, then that mean and deviation (a constant column, or a single training
    row, gets a deviation of 1e-12, not 0 or NaN)."""
    rows = x[train]
    mean, std = rows.mean(0), rows.std(0).nan_to_num(0.0).clamp_min(1e-12)
    return (x - mean) / std, mean, std
