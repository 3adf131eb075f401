"""Regression data for loss comparisons: generated from a seed, or read from a user's CSV.

Generated data (``make_regression``): features ``x ~ N(0, I_d)`` and a clean target

    f(x) = standardise((1 - a) * L(x) + a * N(x))

where ``L`` is a random linear map and ``N`` a sum of random sine ridges and pairwise
products (both standardised), ``a`` the ``nonlinearity`` in [0, 1]. Training targets are
``f(x) + noise_scale * eps`` with ``eps`` unit-variance noise (gaussian, student_t with 3
degrees of freedom, or laplace); then a fraction ``outliers`` of them is shifted *up* by
5 to 10 target standard deviations (gross, one-sided outliers, as in findings.md item 1).
Test targets are always clean: ``f(x)`` exactly, no noise and no outliers, so the test
error measures how well a model recovered the function and nothing else.

CSV data (``load_csv_regression``): the numeric columns other than the target are the
features; a fixed 80/20 split by a seeded permutation; features and target standardised
with the training split's mean and standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from losscli.errors import UsageError
from losscli.files import clip

__all__ = ["NOISES", "RegressionData", "load_csv_regression", "make_regression"]

NOISES = ("gaussian", "student_t", "laplace")
_STUDENT_DF = 3
_OUTLIER_SHIFT = (5.0, 10.0)  # in target standard deviations


@dataclass
class RegressionData:
    """Float32 features ``[N, D]`` and targets ``[N]``; ``outlier`` marks shifted train rows."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    outlier: Tensor  # bool [n_train]
    source: str
    train_y_clean: Tensor | None = None  # the training targets before the outlier shift


def _unit_noise(kind: str, n: int, gen: torch.Generator) -> Tensor:
    """``n`` samples of zero-mean, unit-variance noise of the named kind."""
    if kind == "gaussian":
        return torch.randn(n, generator=gen)
    if kind == "student_t":  # z / sqrt(chi2_df / df), scaled to unit variance
        z = torch.randn(n, generator=gen)
        chi2 = torch.randn(n, _STUDENT_DF, generator=gen).pow(2).sum(1)
        return z / torch.sqrt(chi2 / _STUDENT_DF) / math.sqrt(_STUDENT_DF / (_STUDENT_DF - 2))
    if kind == "laplace":  # the difference of two Exp(1) is Laplace(0, 1), variance 2
        e = torch.empty(2, n).exponential_(generator=gen)
        return (e[0] - e[1]) / math.sqrt(2.0)
    raise UsageError(f"--noise must be one of {', '.join(NOISES)}, got {kind!r}")


def _standardise(v: Tensor) -> Tensor:
    return (v - v.mean()) / v.std().clamp_min(1e-12)


def _clean_target(x: Tensor, nonlinearity: float, gen: torch.Generator) -> Tensor:
    d = x.shape[1]
    w = torch.randn(d, generator=gen) / math.sqrt(d)
    ridges = torch.randn(d, d, generator=gen) * (2.0 / math.sqrt(d))  # d sine ridges
    linear = _standardise(x @ w)
    pairs = x * x.roll(-1, dims=1) if d > 1 else x * x - 1  # x_i x_{i+1}, cyclic
    nonlinear = _standardise(torch.sin(x @ ridges).sum(1) + pairs.sum(1))
    return _standardise((1 - nonlinearity) * linear + nonlinearity * nonlinear)


def make_regression(
    *,
    n_train: int = 2000,
    n_test: int = 1000,
    features: int = 8,
    nonlinearity: float = 0.5,
    noise: str = "gaussian",
    noise_scale: float = 0.3,
    outliers: float = 0.2,
    seed: int = 0,
) -> RegressionData:
    """Generate a regression problem; the same arguments always give the same tensors.

    Raises:
        UsageError: an argument outside its range (they come from the command line).
    """
    _check_knobs(n_train, n_test, features, nonlinearity, noise, noise_scale, outliers)
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    x = torch.randn(n, features, generator=gen)
    f = _clean_target(x, nonlinearity, gen)  # standardised over train and test together
    eps = _unit_noise(noise, n_train, gen)
    clean = f[:n_train] + noise_scale * eps
    train_y, outlier = _shift_outliers(clean, outliers, gen)
    source = (f"generated: {n_train} train / {n_test} test, {features} features, "
              f"nonlinearity {nonlinearity:g}, {noise} noise x{noise_scale:g}, "
              f"{_describe_outliers(outlier)}, seed {seed}")
    return RegressionData(x[:n_train], train_y, x[n_train:], f[n_train:], outlier, source,
                          clean)


def _shift_outliers(y: Tensor, fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Shift ``round(fraction * len(y))`` random entries of ``y`` up by 5..10 (one-sided)."""
    n = y.shape[0]
    outlier = torch.zeros(n, dtype=torch.bool)
    outlier[torch.randperm(n, generator=gen)[:round(fraction * n)]] = True
    lo, hi = _OUTLIER_SHIFT
    shift = lo + (hi - lo) * torch.rand(n, generator=gen)
    return torch.where(outlier, y + shift, y), outlier


def _describe_outliers(outlier: Tensor) -> str:
    lo, hi = _OUTLIER_SHIFT
    k = int(outlier.sum())
    return f"{k} train outliers ({k / len(outlier):.0%}, +{lo:g}..{hi:g} sd)"


def _check_knobs(n_train, n_test, features, nonlinearity, noise, noise_scale, outliers) -> None:
    for name, value, least in (("n_train", n_train, 2), ("n_test", n_test, 2),
                               ("features", features, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UsageError(f"{name} must be an integer >= {least}, got {value!r}")
    _check_number("nonlinearity", nonlinearity, 0.0, 1.0)
    _check_number("outliers", outliers, 0.0, 0.9)
    _check_number("noise_scale", noise_scale, 0.0, math.inf)
    if noise not in NOISES:
        raise UsageError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")


def _check_number(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise UsageError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")


def load_csv_regression(
    path: str | Path, target_column: str, *, outliers: float = 0.0, seed: int = 0,
    test_fraction: float = 0.2,
) -> RegressionData:
    """A user's table: numeric columns but the target are features; a seeded 80/20 split.

    Rows with a missing value in a used column are dropped; non-numeric feature columns are
    skipped (the source line names them). Features and target are standardised with the
    training split's statistics. ``outliers`` > 0 shifts that fraction of the (standardised)
    training targets up by 5..10, as for generated data; test targets stay as given.

    Raises:
        UsageError: missing file or column, a non-numeric target, no numeric feature, or
            too few rows.
    """
    _check_number("outliers", outliers, 0.0, 0.9)
    path = Path(path)
    values, note = _read_table(path, target_column)
    n = values.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_test = max(2, round(test_fraction * n))
    train, test = values[perm[n_test:]], values[perm[:n_test]]
    mean, std = train.mean(0), train.std(0).clamp_min(1e-12)
    train, test = (train - mean) / std, (test - mean) / std
    train_y, outlier = _shift_outliers(train[:, -1], outliers, gen)
    source = (f"{path.name}: {n - n_test} train / {n_test} test rows, target {target_column!r}, "
              + note + (f", {_describe_outliers(outlier)}" if outliers else ""))
    return RegressionData(train[:, :-1].contiguous(), train_y.contiguous(),
                          test[:, :-1].contiguous(), test[:, -1].contiguous(), outlier, source,
                          train[:, -1].contiguous())


MAX_CSV_BYTES = 256 << 20


def _refuse_infinite(used, path: Path) -> None:
    """An infinite cell is no missing value: refused (training on it makes every loss
    diverge, blaming the loss for the data)."""
    import numpy as np

    infinite = ~np.isfinite(used.to_numpy(dtype="float64"))
    if infinite.any():
        row, col = np.argwhere(infinite)[0]
        line = used.index[row]
        raise UsageError(f"--csv {path}: column {clip(str(used.columns[col]))!r} is infinite in "
                         f"row {line + 1} (file line {line + 2}); fix or remove that row")


def _read_table(path: Path, target_column: str) -> tuple[Tensor, str]:
    """The numeric feature columns then the target, complete rows only, and a note on them."""
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"--csv {path}: no such file")
    if path.stat().st_size > MAX_CSV_BYTES:  # 1 GB took minutes and 8 GB of memory
        raise UsageError(f"--csv {path}: {path.stat().st_size:,} bytes; at most "
                         f"{MAX_CSV_BYTES:,} are read (a sample of the table is enough)")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError) as exc:  # pandas' ParserError/EmptyDataError are ValueErrors
        raise UsageError(f"--csv {path}: cannot read it as CSV ({clip(str(exc), 200)})") \
            from None
    if target_column not in table.columns:
        names = [clip(str(c), 40) for c in table.columns]
        raise UsageError(f"--target {clip(target_column)!r} is not a column of {path}; "
                         f"columns: {', '.join(names[:20])}"
                         + (f" and {len(names) - 20} more" if len(names) > 20 else ""))
    numeric = table.select_dtypes("number").columns
    if target_column not in numeric:
        raise UsageError(f"--target {target_column!r} in {path} is not numeric "
                         f"(dtype {table[target_column].dtype})")
    feats = [c for c in numeric if c != target_column]
    if not feats:
        raise UsageError(f"--csv {path}: no numeric feature column besides {target_column!r}")
    used = table[feats + [target_column]].dropna()
    _refuse_infinite(used, path)
    if len(used) < 10:
        raise UsageError(f"--csv {path}: {len(used)} complete rows; at least 10 are needed")
    skipped = [str(c) for c in table.columns if c not in numeric]
    note = f"{len(feats)} numeric features"
    note += f" (skipped: {', '.join(skipped)})" if skipped else ""
    dropped = len(table) - len(used)
    note += f", {dropped} rows with missing values dropped" if dropped else ""
    return torch.tensor(used.to_numpy(dtype="float64"), dtype=torch.float32), note
