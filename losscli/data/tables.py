"""Real regression tables that ship offline inside scikit-learn's and statsmodels' wheels.

    name       rows  features                           target     from
    diabetes   442   age, sex, bmi, bp, s1 .. s6 (10)   progression  sklearn load_diabetes
    stackloss  21    AIRFLOW, WATERTEMP, ACIDCONC       STACKLOSS    statsmodels (Brownlee 1965)
    engel      235   income                             foodexp      statsmodels (Engel 1857)

``diabetes`` is read unscaled (``scaled=False``): the raw clinical values. ``stackloss`` is
the classic robust-regression table (rows 1, 3, 4 and 21 are the known outliers);
``engel`` is Koenker's food-expenditure table for quantile regression, its variance growing
with income (statsmodels' ``load_pandas`` names ``income`` the endogenous variable; here
``foodexp`` is the target, as in Koenker and Bassett 1982).

A seeded permutation splits the rows into train / validation / test (at least 2 rows in
each); features and target are standardised with the training rows' mean and standard
deviation. ``outliers`` > 0 then shifts that fraction of the standardised *training*
targets up by 5..10 (the same one-sided gross outliers as the generated ``reg`` data, by
the same function, ``synthetic_regression._shift_outliers``); validation and test targets
stay as measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from losscli.data.splits import SplitTensors, split_indices, split_sizes, standardise, take
from losscli.data.synthetic_regression import (
    _check_number,
    _describe_outliers,
    _shift_outliers,
)
from losscli.errors import UnknownNameError, UsageError

__all__ = ["TABLES", "TableData", "load_table"]

TABLES = ("diabetes", "stackloss", "engel")


@dataclass
class TableData(SplitTensors):
    """Standardised float32 features ``[N, D]`` and targets ``[N]`` per split.

    ``outlier`` marks the shifted training rows (bool ``[n_train]``); ``target_mean`` and
    ``target_std`` undo the target's standardisation (``y * std + mean``).
    """

    outlier: Tensor
    feature_names: tuple[str, ...]
    target_name: str
    target_mean: float
    target_std: float
    source: str


def _frame(name: str) -> tuple[pd.DataFrame, str, str]:
    """The table (features then target), the target's name, and where it came from."""
    if name == "diabetes":
        datasets = _import("sklearn.datasets", "scikit-learn")
        frame = datasets.load_diabetes(as_frame=True, scaled=False).frame
        frame = frame.rename(columns={"target": "progression"})
        return frame, "progression", "scikit-learn load_diabetes (Efron et al. 2004)"
    module = _import(f"statsmodels.datasets.{name}", "statsmodels")
    frame = module.load_pandas().data
    if name == "stackloss":
        target, cite = "STACKLOSS", "Brownlee 1965"
    else:
        target, cite = "foodexp", "Koenker and Bassett 1982"
    columns = [c for c in frame.columns if c != target] + [target]
    return frame[columns], target, f"statsmodels {name} ({cite})"


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"this table comes from {package}, which is not installed: "
                         'pip install "losscli[data]"') from None


def load_table(
    name: str,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    outliers: float = 0.0,
    seed: int = 0,
) -> TableData:
    """One of ``TABLES``, split and standardised (see the module docstring).

    Args:
        name: ``diabetes``, ``stackloss`` or ``engel``.
        val_fraction, test_fraction: shares of the rows (each split gets at least 2).
        outliers: fraction of training targets shifted up by 5..10 sd, in [0, 0.9].
        seed: seed of the split and of the outliers.

    Raises:
        UsageError: an unknown table, a fraction out of range, or the package missing.
    """
    if name not in TABLES:
        raise UnknownNameError("table", name, TABLES)
    _check_number("outliers", outliers, 0.0, 0.9)
    frame, target, origin = _frame(name)
    values = torch.tensor(frame.to_numpy(dtype="float64"), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    split = split_indices(len(values), val_fraction=val_fraction, test_fraction=test_fraction,
                          gen=gen, what=f"table {name!r}")
    scaled, mean, std = standardise(values, split[0])
    parts = take(split, scaled[:, :-1], scaled[:, -1])
    parts[1], outlier = _shift_outliers(parts[1], outliers, gen)  # training targets only
    features = tuple(str(c) for c in frame.columns[:-1])
    source = (f"{origin}: {split_sizes(split, 'rows')}, {len(features)} features, target "
              f"{target!r}, split seed {seed}"
              + (f", {_describe_outliers(outlier)}" if outliers else ""))
    return TableData(*parts, outlier=outlier, feature_names=features, target_name=target,
                     target_mean=float(mean[-1]), target_std=float(std[-1]), source=source)
