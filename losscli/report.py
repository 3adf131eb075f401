"""Comparison reports from a run directory: Markdown with PNG plots, and one
self-contained HTML file (plots embedded)."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from losscli.render import fmt_num  # noqa: E402
from losscli.results import (  # noqa: E402
    read_history,
    read_meta,
    read_runs,
    seed_stats,
    with_variant,
)

__all__ = ["FindingResult", "build_report", "evaluate_finding", "ranking"]

ALPHA = 0.05  # significance level of the Welch t-tests


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return 0.0 if len(a) >= 2 and len(b) >= 2 and np.mean(a) != np.mean(b) else math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def ranking(group: pd.DataFrame) -> pd.DataFrame:
    """Per loss of one variant: mean ± std, 95 % CI over seeds, and Welch's p against the
    best loss (the metric's direction is read from the runs)."""
    rows = []
    for _, g in group[group["status"] == "ok"].groupby("loss_key", sort=False):
        st = seed_stats(g)
        n, mean, sd = st["ok"], st["mean"], st["std"]
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
        rows.append({"loss": g["loss"].iloc[0], "n": n, "mean": mean, "std": sd,
                     "ci_low": mean - half, "ci_high": mean + half, "values": st["values"]})
    if not rows:
        return pd.DataFrame()
    maximize = bool(group["maximize"].iloc[0])
    df = pd.DataFrame(rows).sort_values("mean", ascending=not maximize).reset_index(drop=True)
    best = df.loc[0, "values"]
    df["p_vs_best"] = [math.nan if i == 0 else _welch_p(best, v)
                       for i, v in enumerate(df["values"])]
    df["significant"] = df["p_vs_best"] < ALPHA
    return df.drop(columns="values")


# --------------------------------------------------------------------------- plots


def _curves(history: pd.DataFrame, runs: pd.DataFrame, split: str, metric: str):
    """Per loss: steps and the mean/min/max over seeds of a metric's curve."""
    h = history[(history["split"] == split) & (history["metric"] == metric)]
    h = h.merge(runs[["run_key", "loss", "loss_key"]], on="run_key")
    for _, g in h.groupby("loss_key", sort=False):
        table = g.pivot_table(index="step", columns="run_key", values="value")
        yield (g["loss"].iloc[0], table.index.to_numpy(), table.mean(axis=1),
               table.min(axis=1), table.max(axis=1))


def _plot_curves(ax, history, runs, split, metric, log=False) -> None:
    for loss, steps, mean, low, high in _curves(history, runs, split, metric):
        (line,) = ax.plot(steps, mean, label=loss, lw=1.6)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} {metric}")
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def variant_plots(variant: str, runs, history, metric: str, out: Path, stem: str) -> list[Path]:
    ok = runs[runs["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _plot_curves(axes[0], history, ok, "val", metric)
    axes[0].set_title(f"{variant}: validation {metric} (band: min–max over seeds)", fontsize=9)
    train = history[(history["split"] == "train") & (history["value"] > 0)]
    _plot_curves(axes[1], train, ok, "train", "loss", log=True)
    axes[1].set_title("training loss (each loss on its own scale)", fontsize=9)
    axes[0].legend(fontsize=7)
    curves = _save(fig, out / f"{stem}-curves.png")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for _, g in ok.groupby("loss_key", sort=False):
        ax.errorbar(g["train_seconds"].mean(), g["test_final"].mean(),
                    xerr=g["train_seconds"].std(ddof=0), yerr=g["test_final"].std(ddof=0),
                    fmt="o", capsize=3, label=g["loss"].iloc[0])
    ax.set_xlabel("train seconds per run (eval excluded)")
    ax.set_ylabel(f"final {metric}")
    ax.set_title(f"{variant}: quality vs time", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [curves, _save(fig, out / f"{stem}-quality-vs-time.png")]


# --------------------------------------------------------------------------- findings


@dataclass
class FindingResult:
    id: str
    title: str
    verdict: str  # reproduced | not reproduced | inconclusive | no data
    evidence: str


def _metric_by_seed(runs: pd.DataFrame, spec: str, metric: str) -> pd.Series:
    g = runs[(runs["loss"] == spec) & (runs["status"] == "ok")]
    return pd.Series([json.loads(m)[metric] for m in g["test_metrics"]], index=g["seed"])


def evaluate_finding(finding, runs: pd.DataFrame) -> FindingResult:
    """Each ``better`` loss against ``than``: effect size, sign consistency over seeds, Welch p.

    reproduced: every ``better`` loss wins on average, on every seed, with p < 0.05;
    not reproduced: some ``better`` loss loses on average with p < 0.05; else inconclusive.
    """
    opts = json.dumps({k: str(v) for k, v in sorted(finding.options.items())})
    sel = runs[(runs["job"] == finding.task) & (runs["job_options"] == opts)]
    if finding.steps is not None:
        sel = sel[sel["steps"] == finding.steps]
    base = _metric_by_seed(sel, finding.than, finding.metric)
    sign = 1 if finding.maximize else -1
    verdicts, lines = [], []
    for spec in finding.better:
        cand = _metric_by_seed(sel, spec, finding.metric)
        seeds = sorted(set(cand.index) & set(base.index))
        if len(seeds) < 2:
            verdicts.append("no data")
            lines.append(f"{spec} vs {finding.than}: fewer than 2 shared seeds")
            continue
        diff = sign * (cand[seeds].to_numpy() - base[seeds].to_numpy())
        p = _welch_p(cand[seeds].to_numpy(), base[seeds].to_numpy())
        wins = int((diff > 0).sum())
        d = diff.mean() / diff.std(ddof=1) if diff.std(ddof=1) > 0 else math.inf * np.sign(
            diff.mean())
        if diff.mean() > 0 and wins == len(seeds) and p < ALPHA:
            verdicts.append("reproduced")
        elif diff.mean() < 0 and p < ALPHA:
            verdicts.append("not reproduced")
        else:
            verdicts.append("inconclusive")
        lines.append(f"{spec}: {finding.metric} {cand[seeds].mean():.4g} vs {finding.than} "
                     f"{base[seeds].mean():.4g} (better by {diff.mean():+.4g}, paired d "
                     f"{d:.2f}, wins {wins}/{len(seeds)} seeds, Welch p {p:.3g})")
    if not verdicts:
        verdict = "no data"
    elif all(v == "reproduced" for v in verdicts):
        verdict = "reproduced"
    elif "not reproduced" in verdicts:
        verdict = "not reproduced"
    elif all(v == "no data" for v in verdicts):
        verdict = "no data"
    else:
        verdict = "inconclusive"
    return FindingResult(finding.id, finding.title, verdict, "; ".join(lines))


# --------------------------------------------------------------------------- documents


def _ranking_rows(rank: pd.DataFrame) -> list[list[str]]:
    rows = []
    for i, r in rank.iterrows():
        sig = "" if i == 0 else ("yes" if r["significant"] else "no")
        rows.append([str(i + 1), r["loss"], str(r["n"]),
                     f"{fmt_num(r['mean'])} ± {fmt_num(r['std'])}",
                     f"[{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]",
                     "best" if i == 0 else fmt_num(r["p_vs_best"], 3), sig])
    return rows


def _cost_rows(group: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, g in group[group["status"] == "ok"].groupby("loss_key", sort=False):
        rows.append([g["loss"].iloc[0], f"{g['samples_per_s'].mean():,.0f}",
                     fmt_num(g["loss_ms_per_step"].mean(), 3),
                     fmt_num(g["train_seconds"].mean(), 1),
                     fmt_num(g["steps_to_target"].mean(), 0)])
    return rows


RANK_HEAD = ["#", "loss", "seeds", "final (mean ± std)", "95 % CI", "Welch p vs best",
             f"significant (p < {ALPHA})"]
COST_HEAD = ["loss", "samples/s", "loss fwd+bwd ms/step", "train s/run", "steps to target"]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Section:
    title: str
    metric: str
    maximize: bool
    ranking: list[list[str]]
    cost: list[list[str]]
    images: list[Path]
    statuses: str


def _sections(runs, history, out: Path) -> list[Section]:
    sections = []
    variants = with_variant(runs).groupby("variant", sort=False) if len(runs) else []
    for i, (variant, group) in enumerate(variants):
        metric = group["primary_metric"].iloc[0]
        counts = group["status"].value_counts().to_dict()
        images = variant_plots(variant, group, history, metric, out, f"v{i}") \
            if (group["status"] == "ok").any() else []
        sections.append(Section(
            title=variant, metric=metric, maximize=bool(group["maximize"].iloc[0]),
            ranking=_ranking_rows(ranking(group)), cost=_cost_rows(group),
            images=images, statuses=", ".join(f"{n} {s}" for s, n in counts.items())))
    return sections


def build_report(run_dir: Path, out: Path | None = None, findings=()) -> tuple[Path, Path]:
    """Write ``report.md`` (+ PNGs) and a self-contained ``report.html``; return both paths."""
    run_dir = Path(run_dir)
    out = Path(out or run_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    runs, history = read_runs(run_dir), read_history(run_dir)
    meta = read_meta(run_dir)
    sections = _sections(runs, history, out)
    results = [evaluate_finding(f, runs) for f in findings]
    md = out / "report.md"
    md.write_text(_markdown(run_dir, meta, sections, results))
    page = out / "report.html"
    page.write_text(_html(run_dir, meta, sections, results))
    return md, page


def _intro(run_dir: Path, meta: dict) -> list[str]:
    return [f"Run directory: `{run_dir}`",
            f"Command: `{meta.get('command', '?')}` · device {meta.get('device', '?')} · "
            f"{meta.get('versions', '')} · commit {str(meta.get('git_commit'))[:10]}",
            "Quality is each run's primary metric on the test split (evaluated once, after "
            "training; curves are validation); mean ± std and a 95 % t-interval "
            f"over seeds; Welch's t-test against the best loss (significant at p < {ALPHA})."]


FINDING_HEAD = ["finding", "verdict", "evidence"]


def _markdown(run_dir, meta, sections, results) -> str:
    parts = ["# losscli report", "", *[f"{line}  " for line in _intro(run_dir, meta)], ""]
    if results:
        parts += ["## Published findings", "",
                  _md_table(FINDING_HEAD, [[f"{r.id}: {r.title}", f"**{r.verdict}**",
                                            r.evidence] for r in results]), ""]
    for s in sections:
        better = "higher" if s.maximize else "lower"
        parts += [f"## {s.title}", "", f"{s.metric}, {better} is better · runs: {s.statuses}",
                  "", _md_table(RANK_HEAD, s.ranking), "", _md_table(COST_HEAD, s.cost), ""]
        parts += [f"![{img.stem}]({img.name})" for img in s.images] + [""]
    return "\n".join(parts)


CSS = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;"
       "padding:3px 8px;font-size:13px;text-align:right}td:nth-child(2),th:nth-child(2)"
       "{text-align:left}img{max-width:100%}.reproduced{color:#080}.inconclusive{color:#a60}"
       ".not{color:#b00}code{background:#f3f3f3}")


def _html(run_dir, meta, sections, results) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>losscli report</title>"
             f"<style>{CSS}</style></head><body><h1>losscli report</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in _intro(run_dir, meta)]
    if results:
        rows = "".join(
            f"<tr><td>{html.escape(r.id)}: {html.escape(r.title)}</td>"
            f"<td class='{r.verdict.split()[0]}'><b>{r.verdict}</b></td>"
            f"<td>{html.escape(r.evidence)}</td></tr>" for r in results)
        parts.append("<h2>Published findings</h2><table><tr><th>finding</th><th>verdict</th>"
                     f"<th>evidence</th></tr>{rows}</table>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2><p>{s.metric}, "
                     f"{'higher' if s.maximize else 'lower'} is better · runs: {s.statuses}</p>")
        parts += [_html_table(RANK_HEAD, s.ranking), _html_table(COST_HEAD, s.cost)]
        for img in s.images:
            data = base64.b64encode(img.read_bytes()).decode()
            parts.append(f"<p><img alt='{img.stem}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(parts + ["</body></html>"])
