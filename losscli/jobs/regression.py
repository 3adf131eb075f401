"""The ``reg`` job: robust regression on generated data, a real table or a user's CSV; a
small MLP.

Real tables (``--dataset diabetes|stackloss|engel``, ``losscli.data.tables``) ship inside
scikit-learn's and statsmodels' wheels (``pip install "losscli[data]"``): a seeded
60 / 20 / 20 split, standardised with the training rows' statistics (so RMSE is in
training-target standard deviations, as on the generated data), optional ``--outliers``
on the training targets only. Their budget is ``tasks/reg_table.toml``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losscli.data.synthetic_regression import (
    NOISES,
    RegressionData,
    load_csv_regression,
    make_regression,
)
from losscli.data.tables import TABLES, load_table
from losscli.errors import UsageError
from losscli.jobs.base import (
    Job,
    JobData,
    Objective,
    Option,
    Split,
    TaskFile,
    hold_out,
    load_task_file,
)
from losscli.losses import Family, Pred, Target

__all__ = ["MLP", "RegressionJob"]

_VAR_FLOOR = 1e-6
_SYNTHETIC_ONLY = ("noise", "noise_scale", "features", "nonlinearity", "n_train", "n_val",
                   "n_test")
_CSV_VAL_FRACTION = 0.2  # of a CSV's training rows, held out for validation


class MLP(nn.Module):
    """``in -> 64 -> 64 -> 2`` with ReLU: per sample a mean and a raw (pre-softplus) variance.

    Plain layers only (no normalisation, no in-place ops), so it works under
    ``torch.func.functional_call`` / ``vmap`` for many seeds at once.
    """

    def __init__(self, in_features: int, hidden: int = 64, out_features: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RegressionJob(Job):
    name = "reg"
    aliases = ("regression",)
    description = ("Regression with gross one-sided outliers in the training targets (20% "
                   "by default), clean test targets; or a real table (--dataset diabetes, "
                   "stackloss, engel), or your own --csv")
    model_name = "MLP (2x64 ReLU; outputs mean and variance)"
    metrics = ("rmse", "mae", "r2")
    primary_metric = "rmse"
    lower_is_better = frozenset({"rmse", "mae"})
    families = frozenset({Family.REGRESSION})
    preds = frozenset({Pred.VALUES, Pred.VALUES_VAR})
    targets = frozenset({Target.VALUES})
    option_specs = (
        Option("dataset", str, "generated", "generated, or a real table: diabetes (442 x 10, "
               "scikit-learn), stackloss (21 x 3), engel (235 x 1; both statsmodels)",
               choices=("generated", *TABLES)),
        Option("outliers", float, None, "fraction of training targets shifted up by 5-10 sd "
               "(default 0.2 on generated data; 0 with a table or --csv)", low=0, high=0.9),
        Option("noise", str, "gaussian", "noise distribution on training targets",
               choices=NOISES),
        Option("noise_scale", float, 0.3, "noise standard deviation, in target sd", low=0),
        Option("features", int, 8, "number of input features", low=1),
        Option("nonlinearity", float, 0.5, "0 linear .. 1 sine ridges and products", low=0,
               high=1),
        Option("n_train", int, 2000, "training samples", low=2),
        Option("n_val", int, 500, "validation samples, generated like the training ones "
               "(outliers and noise included: a tuner never sees clean targets, unless "
               "--clean-val)", low=2),
        Option("clean_val", bool, False, "validation targets without the outlier shift "
               "(noise kept): tuning and selection then favour the fit to clean targets, "
               "as test scores it; default: contaminated like training"),
        Option("n_test", int, 1000, "test samples (clean targets)", low=2),
        Option("data_seed", int, 0, "seed of the generated data or of the CSV split", low=0),
        Option("csv", str, None, "your own table instead of generated data (with --target)"),
        Option("target_column", str, None, "the --csv column to predict", flag="target"),
    )

    @property
    def table(self) -> str | None:
        """The real table asked for, or None (generated data or --csv)."""
        dataset = self.option("dataset")
        return None if dataset == "generated" else dataset

    def check_options(self) -> None:
        o = self.options
        if ("csv" in o) != ("target_column" in o):
            raise UsageError("--csv and --target go together: the table and the column to "
                             "predict")
        if "csv" in o and self.table:
            raise UsageError(f"--csv and --dataset {self.table} are two tables: give one")
        given = [k for k in _SYNTHETIC_ONLY if k in o]
        if self.table and o.get("clean_val"):
            raise UsageError(f"--clean-val: --dataset {self.table}'s validation targets are "
                             "clean already (its outliers shift training targets only)")
        if ("csv" in o or self.table) and given:
            raise UsageError(", ".join("--" + k.replace("_", "-") for k in given)
                             + " only apply to generated data, not with "
                             + ("--csv" if "csv" in o else f"--dataset {self.table}"))

    def load_task(self) -> TaskFile:
        """Real tables have their own budget (a few hundred rows: steps, not epochs)."""
        return load_task_file("reg_table" if self.table else self.name)

    def _data(self) -> tuple[RegressionData, int]:
        """The data (training rows include the validation rows) and the validation size."""
        o, seed = self.options, self.option("data_seed")
        if "csv" in o:
            d = load_csv_regression(o["csv"], o["target_column"],
                                    outliers=o.get("outliers", 0.0), seed=seed)
            return d, max(2, round(_CSV_VAL_FRACTION * len(d.train_y)))
        knobs = {k: o[k] for k in (*_SYNTHETIC_ONLY, "outliers") if k in o and k != "n_val"}
        n_val = self.option("n_val")
        knobs["n_train"] = self.option("n_train") + n_val
        return make_regression(seed=seed, **knobs), n_val

    def load_data(self) -> JobData:
        if self.table:
            return self._table_data()
        d, n_val = self._data()
        tr, va = hold_out(len(d.train_y), n_val, self.option("data_seed"))
        if self.option("clean_val"):  # the same rows, their targets before the shift
            val = Split(d.train_x[va], d.train_y_clean[va],
                        {"outlier": torch.zeros(len(va), dtype=torch.bool)})
        else:
            val = Split(d.train_x[va], d.train_y[va], {"outlier": d.outlier[va]})
        data = JobData(Split(d.train_x[tr], d.train_y[tr], {"outlier": d.outlier[tr]}), val,
                       Split(d.test_x, d.test_y), d.source)
        data.source += f"; {data.sizes()}" + ("; clean validation targets"
                                              if self.option("clean_val") else "")
        return data

    def _table_data(self) -> JobData:
        """A real table; its validation and test targets are clean (as measured)."""
        t = load_table(self.table, outliers=self.option("outliers") or 0.0,
                       seed=self.option("data_seed"))
        clean = torch.zeros(len(t.val_y), dtype=torch.bool)
        return JobData(Split(t.train_x, t.train_y, {"outlier": t.outlier}),
                       Split(t.val_x, t.val_y, {"outlier": clean}), Split(t.test_x, t.test_y),
                       t.source)

    def build_model(self, data: JobData) -> nn.Module:
        return MLP(data.train.x.shape[1])

    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor:
        mean = output[..., 0]
        if kind is Pred.VALUES_VAR:
            return torch.stack((mean, F.softplus(output[..., 1]) + _VAR_FLOOR), dim=-1)
        return mean

    def adapt_target(self, target: Tensor, kind: Target, output: Tensor) -> Tensor:
        return target

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, objective: Objective
                 ) -> dict[str, float]:
        from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

        pred = model(split.x).float()[:, 0]
        y = split.y
        values = torch.stack([
            mean_squared_error(pred, y, squared=False),
            mean_absolute_error(pred, y),
            r2_score(pred, y),
        ])
        return dict(zip(self.metrics, values.tolist(), strict=True))  # the one host sync

    def probe(self) -> tuple[Tensor, Tensor]:
        return torch.randn(4, 2), torch.randn(4)
