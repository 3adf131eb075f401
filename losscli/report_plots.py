"""The report's figures (PNG, matplotlib's Agg backend): per job variant the validation
curves with the end of training enlarged, the training loss, quality against time, and
for tuned runs the validation metric against the tuned value and its spread over the grid.

A loss keeps its colour in every figure of a report (``palette``: loss → colour, its keys
in the variant's ranking order, which the legend follows), and each figure's legend sits
below the axes, where it cannot cover data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["DPI", "colours", "curve_figure", "quality_vs_time", "save", "sensitivity_plot",
           "tuning_plot"]

DPI = 100  # modest: a report's PNGs stay around 50-100 kB each
LOG_SPAN = 100.0  # a panel whose positive values span this factor or more gets a log axis


def colours(losses: Sequence[str]) -> dict[str, str]:
    """One colour per loss, in the order given, kept by every figure of a report."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {loss: cycle[i % len(cycle)] for i, loss in enumerate(losses)}


def save(fig, path: Path) -> Path:
    """Write ``fig`` (the saved area grows to hold a legend below the axes) and close it."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def legend_below(fig, axes, order: Sequence[str] = ()) -> None:
    """One legend for the figure, under its axes, where it never covers a point or a line;
    its entries in ``order`` (the ranking: the palette's keys), others after."""
    seen: dict[str, object] = {}
    for ax in np.atleast_1d(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    place = {label: i for i, label in enumerate(order)}
    seen = dict(sorted(seen.items(), key=lambda kv: place.get(kv[0], len(place))))
    if seen:  # one row when the labels fit in it (matplotlib fills columns first)
        one_row = sum(len(label) + 6 for label in seen) <= 100
        fig.legend(list(seen.values()), list(seen), loc="upper center", fontsize=8,
                   bbox_to_anchor=(0.5, 0.0), frameon=False,
                   ncol=len(seen) if one_row else 1 if max(map(len, seen)) > 40 else 2)


def _curves(history: pd.DataFrame, runs: pd.DataFrame, split: str, metric: str
            ) -> Iterator[tuple[str, np.ndarray, pd.Series, pd.Series, pd.Series]]:
    """Per loss: steps and the mean/min/max over seeds of a metric's curve."""
    h = history[(history["split"] == split) & (history["metric"] == metric)]
    h = h.merge(runs[["run_key", "loss", "loss_key"]], on="run_key")
    for _, g in h.groupby("loss_key", sort=False):
        table = g.pivot_table(index="step", columns="run_key", values="value")
        yield (g["loss"].iloc[0], table.index.to_numpy(), table.mean(axis=1),
               table.min(axis=1), table.max(axis=1))


def _band(ax, steps, mean, low, high, colour: str, label: str, marker: str = "") -> None:
    ax.plot(steps, mean, label=label, lw=1.6, color=colour, marker=marker, ms=3)
    ax.fill_between(steps, low, high, color=colour, alpha=0.18, lw=0)


def _scale(ax, values: np.ndarray) -> None:
    """A log axis when the positive values span two decades or more, else linear."""
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() >= LOG_SPAN:
        ax.set_yscale("log")


def _zoom_from(steps: np.ndarray) -> float | None:
    """The first step of the end-of-training panel: the last third of the evals after step 0
    (at least 3 of them); None when there are too few evals for a second panel."""
    later = np.sort(steps[steps > 0])
    if len(later) < 4:
        return None
    return float(later[-max(3, len(later) // 3)])


def curve_figure(variant: str, runs: pd.DataFrame, history: pd.DataFrame, metric: str,
                 palette: dict[str, str], path: Path) -> Path:
    """Validation curves from the first eval after step 0 (the untrained model's value would
    squash the rest), the last evals enlarged, and the training loss."""
    val = list(_curves(history, runs, "val", metric))
    steps = np.unique(np.concatenate([c[1] for c in val])) if val else np.array([])
    zoom = _zoom_from(steps)
    fig, axes = plt.subplots(1, 3 if zoom is not None else 2,
                             figsize=(13 if zoom is not None else 10, 3.6))
    for loss, s, mean, low, high in val:
        keep = s > 0 if (s > 0).any() else s >= 0
        _band(axes[0], s[keep], mean[keep], low[keep], high[keep], palette.get(loss, "k"), loss)
        if zoom is not None:
            end = s >= zoom
            _band(axes[1], s[end], mean[end], low[end], high[end], palette.get(loss, "k"),
                  loss, marker="o")
    axes[0].set_title(f"validation {metric} from the first eval after step 0\n(band: min–max "
                      "over seeds)", fontsize=9)
    if zoom is not None:
        axes[1].set_title(f"end of training: the evals from step {zoom:g} enlarged",
                          fontsize=9)
    for ax in axes[:-1]:
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
    _train_loss_panel(axes[-1], history, runs, palette)
    legend_below(fig, axes, list(palette))
    fig.suptitle(variant, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def _train_loss_panel(ax, history: pd.DataFrame, runs: pd.DataFrame,
                      palette: dict[str, str]) -> None:
    train = history[(history["split"] == "train") & (history["metric"] == "loss")]
    values = []
    for loss, s, mean, low, high in _curves(train, runs, "train", "loss"):
        _band(ax, s, mean, low, high, palette.get(loss, "k"), loss)
        values.append(mean.to_numpy(float))
    _scale(ax, np.concatenate(values) if values else np.array([]))
    ax.set_title("training loss (each loss on its own scale: compare shapes, not levels)",
                 fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(alpha=0.3)


def quality_vs_time(variant: str, runs: pd.DataFrame, metric: str, palette: dict[str, str],
                    path: Path) -> Path:
    """Each loss's test metric against its training time, mean ± std over seeds."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for _, g in runs.groupby("loss_key", sort=False):
        loss = g["loss"].iloc[0]
        ax.errorbar(g["train_seconds"].mean(), g["test_final"].mean(),
                    xerr=g["train_seconds"].std(ddof=0), yerr=g["test_final"].std(ddof=0),
                    fmt="o", capsize=3, label=loss, color=palette.get(loss, "k"))
    ax.set_xlabel("train seconds per run (eval excluded)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{variant}\nquality vs time (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    legend_below(fig, ax, list(palette))
    fig.tight_layout()
    return save(fig, path)


def tuning_plot(variant: str, trials: pd.DataFrame, metric: str, axis: str, maximize: bool,
                palette: dict[str, str], path: Path) -> Path:
    """The validation metric against the tuned ``axis`` (``lr`` or ``term.param``), one line
    per loss through the best trial at each value; every trial a point (hollow: pruned
    early, at the value it had then). A narrow, peaked line is a fragile loss."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for study, g in trials.groupby("study", sort=False):
        colour = palette.get(study, "k")
        done = g.dropna(subset=["x", "val_final"])
        best = done.groupby("x")["val_final"].agg("max" if maximize else "min")
        ax.plot(best.index, best.to_numpy(), lw=1.4, color=colour, label=study)
        pruned = done["status"] == "pruned"
        ax.scatter(done.loc[~pruned, "x"], done.loc[~pruned, "val_final"], s=22, color=colour,
                   zorder=3)
        ax.scatter(done.loc[pruned, "x"], done.loc[pruned, "val_final"], s=34,
                   facecolors="white", edgecolors=colour, zorder=3)
    values = trials["x"].dropna().astype(float)
    if len(values) and (values > 0).all() and values.max() / values.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("learning rate" if axis == "lr" else axis)
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{variant}\nvalidation {metric} vs {axis} (hollow: pruned early, value at "
                 "its last eval)", fontsize=9)
    ax.grid(alpha=0.3)
    legend_below(fig, ax, list(palette))
    fig.tight_layout()
    return save(fig, path)


def sensitivity_plot(variant: str, trials: pd.DataFrame, chosen: dict[str, float],
                     metric: str, palette: dict[str, str], path: Path) -> Path:
    """Per loss, every trial's validation metric on one row, the range of the trials that
    trained the full budget as a bar and the chosen setting as a diamond: a long bar is a
    loss that needs tuning."""
    studies = list(dict.fromkeys(trials["study"]))
    fig, ax = plt.subplots(figsize=(5.6, 1.1 + 0.5 * len(studies)))
    for i, study in enumerate(studies):
        g = trials[trials["study"] == study].dropna(subset=["val_final"])
        colour = palette.get(study, "k")
        full = g[g["status"] == "ok"]["val_final"]
        if len(full):
            ax.hlines(i, full.min(), full.max(), color=colour, lw=6, alpha=0.35)
        pruned = g["status"] == "pruned"
        jitter = np.linspace(-0.12, 0.12, len(g)) if len(g) > 1 else np.zeros(len(g))
        ax.scatter(g.loc[~pruned, "val_final"], i + jitter[~pruned.to_numpy()], s=20,
                   color=colour, zorder=3)
        ax.scatter(g.loc[pruned, "val_final"], i + jitter[pruned.to_numpy()], s=30,
                   facecolors="white", edgecolors=colour, zorder=3)
        if study in chosen:
            ax.scatter([chosen[study]], [i], marker="D", s=60, color="black", zorder=4)
    ax.set_yticks(range(len(studies)), studies, fontsize=8)
    ax.set_ylim(len(studies) - 0.5, -0.5)
    ax.set_xlabel(f"validation {metric} per trial (bar: range of full-budget trials; "
                  "hollow: pruned early; ◆ chosen)", fontsize=8)
    ax.set_title(f"{variant}\nsensitivity: the spread of validation {metric} across the "
                 "grid", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return save(fig, path)
