"""Statistics a reviewer of a loss comparison would accept.

Within one job variant (``compare``): every loss against the best one by Welch's t-test on
the test metric over seeds, p-values corrected for the number of comparisons with Holm's
step-down method (statsmodels), a 95 % t-interval of each mean (clipped to the metric's
range where it has one), and the effect size (the difference of means and Hedges' g).
``recommend`` turns that into the answer: the loss to pick and every loss not
significantly worse, or "no difference detected".

Across job variants (``across_variants``): average ranks, the Friedman test and the
Nemenyi critical difference (Demšar 2006), through autorank.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as st

__all__ = ["ALPHA", "across_variants", "compare", "recommend", "recommendations", "welch_p",
           "variant_tables"]

ALPHA = 0.05
# metrics bounded to [0, 1]: their intervals are clipped there (PSNR, RMSE... are not)
UNIT_METRICS = {"accuracy", "f1_macro", "ece", "auprc", "auroc", "f1_best",
                "balanced_accuracy", "miou", "dice", "pixel_acc", "ssim", "map50", "map"}
NONNEGATIVE_METRICS = {"rmse", "mae", "nll", "lpips", "psnr"}


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch p; identical samples give 1, two constant different ones 0."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(st.ttest_ind(a, b, equal_var=False).pvalue)


def _hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return math.nan
    pooled = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    if pooled == 0:
        return 0.0 if a.mean() == b.mean() else math.copysign(math.inf, a.mean() - b.mean())
    return (a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (n1 + n2) - 9))


def _interval(x: np.ndarray, metric: str) -> tuple[float, float]:
    if len(x) < 2:
        return math.nan, math.nan
    half = st.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    low, high = x.mean() - half, x.mean() + half
    if metric in UNIT_METRICS:
        low, high = max(low, 0.0), min(high, 1.0)
    elif metric in NONNEGATIVE_METRICS:
        low = max(low, 0.0)
    return low, high


def compare(values: dict[str, np.ndarray], maximize: bool, metric: str = "") -> pd.DataFrame:
    """One row per loss, best first: n, mean, std, 95 % interval, difference to the best
    (positive = worse), Hedges' g against the best, Welch p and Holm-corrected p."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    for loss, x in values.items():
        x = np.asarray(x, float)
        low, high = _interval(x, metric)
        rows.append({"loss": loss, "n": len(x), "mean": x.mean() if len(x) else math.nan,
                     "std": x.std(ddof=1) if len(x) > 1 else math.nan, "ci_low": low,
                     "ci_high": high, "values": x})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).sort_values("mean", ascending=not maximize, kind="stable",
                                        na_position="last").reset_index(drop=True)
    best = df.loc[0, "values"]
    sign = 1 if maximize else -1
    df["worse_by"] = [0.0 if i == 0 else sign * (df.loc[0, "mean"] - m)
                      for i, m in enumerate(df["mean"])]
    df["hedges_g"] = [math.nan if i == 0 else _hedges_g(best, v) * sign
                      for i, v in enumerate(df["values"])]
    df["p"] = [math.nan if i == 0 else welch_p(best, v) for i, v in enumerate(df["values"])]
    tested = df["p"].notna()
    df["p_holm"] = math.nan
    if tested.any():
        df.loc[tested, "p_holm"] = multipletests(df.loc[tested, "p"], method="holm")[1]
    df["significant"] = df["p_holm"] < ALPHA
    return df.drop(columns="values")


def recommend(table: pd.DataFrame) -> tuple[str, list[str], str]:
    """From ``compare``'s table: the loss to pick, those not significantly worse, and a
    verdict line ("no difference detected" when no loss is significantly worse)."""
    if table.empty:
        return "", [], "no finished runs"
    best = table.loc[0, "loss"]
    tied = [r["loss"] for _, r in table.iloc[1:].iterrows() if not r["significant"]]
    if len(table) == 1:
        return best, [], "one loss only"
    if table["n"].min() < 2:
        return best, tied, "inconclusive: fewer than 2 seeds per loss, no test possible"
    if len(tied) == len(table) - 1:
        return best, tied, "no difference detected (Holm-corrected Welch tests, alpha 0.05)"
    worse = len(table) - 1 - len(tied)
    return best, tied, (f"{best} is best; {worse} loss(es) significantly worse, "
                        f"{len(tied)} not distinguishable from it")


def across_variants(means: pd.DataFrame, maximize: pd.Series):
    """Average ranks, Friedman test and critical difference over job variants.

    Args:
        means: rows = job variants, columns = losses, cells = mean test metric.
        maximize: per variant, whether higher is better (lower-is-better rows are negated
            so that every row ranks the same way).

    Returns an autorank result, or None when there are fewer than 2 variants or losses
    common to all of them.
    """
    from autorank import autorank

    data = means.dropna(axis=1)
    if data.shape[0] < 2 or data.shape[1] < 2:
        return None
    signed = data.mul(np.where(maximize.reindex(data.index).to_numpy(), 1.0, -1.0), axis=0)
    return autorank(signed, alpha=ALPHA, verbose=False, order="descending",
                    force_mode="nonparametric")


def variant_tables(runs) -> dict[str, pd.DataFrame]:
    """``compare`` for every job variant of a run directory's ranked runs, with each
    loss's tuned settings and cost (samples/s, loss ms) beside it."""
    from losscli.results import groups, seed_stats

    per_variant: dict[str, dict] = {}
    for (variant, _), g in groups(runs):
        ok = g[g["status"] == "ok"]
        per_variant.setdefault(variant, {})[g["loss"].iloc[0]] = (
            seed_stats(g)["values"], ok, bool(g["maximize"].iloc[0]),
            g["primary_metric"].iloc[0])
    tables = {}
    for variant, losses in per_variant.items():
        _, _, maximize, metric = next(iter(losses.values()))
        table = compare({k: v[0] for k, v in losses.items()}, maximize, metric)
        extra = {k: v[1] for k, v in losses.items()}
        table["tuned"] = [_first(extra[k], "tuned") for k in table["loss"]]
        table["samples_per_s"] = [extra[k]["samples_per_s"].mean() for k in table["loss"]]
        table["loss_ms"] = [extra[k]["loss_ms_per_step"].mean() for k in table["loss"]]
        table.attrs.update(metric=metric, maximize=maximize)
        tables[variant] = table
    return tables


def _first(frame: pd.DataFrame, column: str) -> str:
    if column not in frame.columns or not len(frame):
        return ""
    value = frame[column].iloc[0]
    return value if isinstance(value, str) else ""


def recommendations(runs) -> pd.DataFrame:
    """Per job variant: the loss to pick, the losses not significantly worse, the verdict,
    and the pick's mean, interval, tuned settings and cost."""
    rows = []
    for variant, table in variant_tables(runs).items():
        best, tied, verdict = recommend(table)
        top = table.iloc[0]
        rows.append({"variant": variant, "metric": table.attrs["metric"],
                     "maximize": table.attrs["maximize"], "pick": best,
                     "not_significantly_worse": ", ".join(tied), "verdict": verdict,
                     "mean": top["mean"], "ci_low": top["ci_low"], "ci_high": top["ci_high"],
                     "seeds": int(top["n"]), "tuned": top["tuned"],
                     "samples_per_s": top["samples_per_s"], "loss_ms": top["loss_ms"]})
    return pd.DataFrame(rows)
