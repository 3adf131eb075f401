"""The report's reliability diagram: per job variant, the test split's calibration of
each loss, from the ``test_bins`` rows classification runs leave in history.csv
(``losscli.calibration.reliability_bins``), so it is drawn without retraining."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from losscli.report_plots import legend_below, save  # noqa: E402

__all__ = ["BINS_SPLIT", "pooled_bins", "reliability_plot"]

BINS_SPLIT = "test_bins"  # history.csv split of the bins; step = bin index


def pooled_bins(history: pd.DataFrame, run_keys) -> pd.DataFrame:
    """The bins of the runs ``run_keys`` pooled, as if their test predictions were one
    set: per bin (index = bin), the count-weighted mean ``confidence`` and ``accuracy``
    (NaN in a bin no run filled) and the mean ``count`` per run."""
    rows = history[(history["split"] == BINS_SPLIT) & history["run_key"].isin(run_keys)]
    wide = rows.pivot(index=["run_key", "step"], columns="metric", values="value")
    n = wide["count"]
    sums = wide[["confidence", "accuracy"]].fillna(0.0).mul(n, axis=0).groupby(level="step")
    total = n.groupby(level="step").sum()
    pooled = sums.sum().div(total.where(total > 0), axis=0)
    pooled["count"] = total / wide.index.get_level_values("run_key").nunique()
    return pooled


def _label(loss: str, runs: pd.DataFrame) -> str:
    """``loss`` with its mean test ECE over seeds, before and after temperature scaling."""
    metrics = pd.DataFrame([json.loads(m) for m in runs["test_metrics"]])
    if "ece" not in metrics:
        return loss
    after = f", {metrics['ece_ts'].mean():.3f} after TS" if "ece_ts" in metrics else ""
    return f"{loss} (ECE {metrics['ece'].mean():.3f}{after})"


def reliability_plot(variant: str, runs: pd.DataFrame, history: pd.DataFrame, path: Path,
                     palette: dict[str, str] | None = None) -> Path | None:
    """One panel for ``variant``: per loss, test accuracy against mean confidence per bin
    (pooled over seeds, ``pooled_bins``) with the diagonal of perfect calibration, and
    each bin's share of the test samples as faint bars. ``palette``: a colour per loss
    spec (the report's, so a loss keeps its colour across figures). Returns None, drawing
    nothing, when no ``ok`` run of ``runs`` stored bins."""
    ok = runs[runs["status"] == "ok"]
    have = set(history.loc[history["split"] == BINS_SPLIT, "run_key"]) & set(ok["run_key"])
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 5))
    share = ax.twinx()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for _, g in ok[ok["run_key"].isin(have)].groupby("loss_key", sort=False):
        loss, bins = g["loss"].iloc[0], pooled_bins(history, g["run_key"])
        width = 1 / len(bins)
        filled = bins[bins["count"] > 0]
        (line,) = ax.plot(filled["confidence"], filled["accuracy"], marker="o", ms=3, lw=1.4,
                          color=(palette or {}).get(loss), label=_label(loss, g))
        share.bar((bins.index + 0.5) * width, bins["count"] / bins["count"].sum(), width=width,
                  color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence of the predicted class (15 bins)")
    ax.set_ylabel("test accuracy in the bin")
    share.set_ylabel("share of test samples (bars)", fontsize=8)
    ax.set_zorder(share.get_zorder() + 1)  # the lines above the bars
    ax.patch.set_visible(False)
    ax.set_title(textwrap.fill(f"{variant}: reliability on test before temperature scaling, "
                               "seeds pooled", 90), fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    legend_below(fig, ax)  # a legend inside the square covered the upper-left bins
    return save(fig, path)
