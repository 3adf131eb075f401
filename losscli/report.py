"""Comparison reports from a run directory: Markdown with PNG plots, and one
self-contained HTML file (plots embedded)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from losscli.render import fmt_num  # noqa: E402
from losscli.results import (  # noqa: E402
    compared,
    read_history,
    read_meta,
    read_runs,
    seed_stats,
    with_variant,
)
from losscli.stats import ALPHA, compare, welch_p  # noqa: E402

__all__ = ["FindingResult", "build_report", "evaluate_finding", "ranking"]

def ranking(group: pd.DataFrame) -> pd.DataFrame:
    """Per loss of one variant, best first: mean ± std and 95 % interval over seeds,
    difference and Hedges' g against the best, Welch p and Holm-corrected p
    (``losscli.stats.compare``; the metric's direction is read from the runs)."""
    values = {g["loss"].iloc[0]: seed_stats(g)["values"]
              for _, g in group[group["status"] == "ok"].groupby("loss_key", sort=False)}
    if not values:
        return pd.DataFrame()
    return compare(values, bool(group["maximize"].iloc[0]), group["primary_metric"].iloc[0])


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
    g = g[g["phase"].fillna("run") != "tune"] if "phase" in g.columns else g
    return pd.Series([json.loads(m)[metric] for m in g["test_metrics"]], index=g["seed"])


def evaluate_finding(finding, runs: pd.DataFrame) -> FindingResult:
    """Each ``better`` loss against ``than`` on the test metric over shared seeds: effect,
    sign consistency, and Welch p corrected across the finding's comparisons (Holm).

    reproduced: every ``better`` loss wins on average, on every seed, with corrected
    p < 0.05; not reproduced: some ``better`` loss loses on average with corrected
    p < 0.05; else inconclusive.
    """
    opts = json.dumps({k: str(v) for k, v in sorted(finding.options.items())})
    sel = runs[(runs["job"] == finding.task) & (runs["job_options"] == opts)]
    if finding.steps is not None:
        sel = sel[sel["steps"] == finding.steps]
    base = _metric_by_seed(sel, finding.than, finding.metric)
    tests = [_paired(finding, spec, _metric_by_seed(sel, spec, finding.metric), base)
             for spec in finding.better]
    done = [t for t in tests if t is not None]
    if done:
        from statsmodels.stats.multitest import multipletests

        for t, p in zip(done, multipletests([t["p"] for t in done], method="holm")[1],
                        strict=True):
            t["p_holm"] = p
    verdicts = [_verdict(t) for t in tests]
    lines = [f"{spec} vs {finding.than}: fewer than 2 shared seeds" if t is None else
             f"{spec}: {finding.metric} {t['cand']:.4g} vs {finding.than} {t['base']:.4g} "
             f"(better by {t['diff']:+.4g}, wins {t['wins']}/{t['n']} seeds, Welch p "
             f"{_p(t['p'])}, Holm {_p(t['p_holm'])})" for spec, t in zip(finding.better, tests,
                                                                     strict=True)]
    return FindingResult(finding.id, finding.title, _overall(verdicts), "; ".join(lines))


def _paired(finding, spec: str, cand: pd.Series, base: pd.Series) -> dict | None:
    seeds = sorted(set(cand.index) & set(base.index))
    if len(seeds) < 2:
        return None
    a, b = cand[seeds].to_numpy(float), base[seeds].to_numpy(float)
    diff = (1 if finding.maximize else -1) * (a - b)
    return {"cand": a.mean(), "base": b.mean(), "diff": diff.mean(),
            "wins": int((diff > 0).sum()), "n": len(seeds), "p": welch_p(a, b)}


def _verdict(t: dict | None) -> str:
    if t is None:
        return "no data"
    if t["diff"] > 0 and t["wins"] == t["n"] and t["p_holm"] < ALPHA:
        return "reproduced"
    if t["diff"] < 0 and t["p_holm"] < ALPHA:
        return "not reproduced"
    return "inconclusive"


def _overall(verdicts: list[str]) -> str:
    if not verdicts or all(v == "no data" for v in verdicts):
        return "no data"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "not reproduced" if "not reproduced" in verdicts else "inconclusive"


def _p(p: float) -> str:
    """A p-value as people write it: ``< 0.001`` below that."""
    return "–" if p != p else "< 0.001" if p < 0.001 else f"{p:.3f}"


# --------------------------------------------------------------------------- documents


def _ranking_rows(rank: pd.DataFrame) -> list[list[str]]:
    rows = []
    for i, r in rank.iterrows():
        sig = "" if i == 0 else ("yes" if r["significant"] else "no")
        rows.append([str(i + 1), r["loss"], str(r["n"]),
                     f"{fmt_num(r['mean'])} ± {fmt_num(r['std'])}",
                     f"[{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]",
                     "best" if i == 0 else fmt_num(r["worse_by"]),
                     "" if i == 0 else fmt_num(r["hedges_g"], 2),
                     "best" if i == 0 else _p(r["p_holm"]), sig])
    return rows


def _cost_rows(group: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, g in group[group["status"] == "ok"].groupby("loss_key", sort=False):
        rows.append([g["loss"].iloc[0], f"{g['samples_per_s'].mean():,.0f}",
                     fmt_num(g["loss_ms_per_step"].mean(), 3),
                     fmt_num(g["train_seconds"].mean(), 1),
                     fmt_num(g["steps_to_target"].mean(), 0)])
    return rows


RANK_HEAD = ["#", "loss", "seeds", "test (mean ± std)", "95 % CI", "worse than best by",
             "Hedges g", "Holm p vs best", f"significant (p < {ALPHA})"]
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
    trials = with_variant(runs[runs["phase"] == "tune"]) if "phase" in runs else runs[:0]
    ranked = compared(runs)
    variants = with_variant(ranked).groupby("variant", sort=False) if len(ranked) else []
    for i, (variant, group) in enumerate(variants):
        metric = group["primary_metric"].iloc[0]
        counts = group["status"].value_counts().to_dict()
        images = variant_plots(variant, group, history, metric, out, f"v{i}") \
            if (group["status"] == "ok").any() else []
        mine = trials[trials["variant"] == variant] if len(trials) else trials
        if len(mine):
            images.append(tuning_plot(variant, mine, metric, out / f"v{i}-tuning.png"))
        sections.append(Section(
            title=variant, metric=metric, maximize=bool(group["maximize"].iloc[0]),
            ranking=_ranking_rows(ranking(group)), cost=_cost_rows(group),
            images=images, statuses=", ".join(f"{n} {s}" for s, n in counts.items())))
    return sections


def tuning_plot(variant: str, trials: pd.DataFrame, metric: str, path: Path) -> Path:
    """Validation metric against learning rate, one line per loss (pruned trials hollow):
    a loss whose curve is narrow and peaked is fragile; the table beside it gives the
    spread (max - min over the grid)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for loss, g in trials.groupby("loss", sort=False):
        g = g.sort_values("lr")
        (line,) = ax.plot(g["lr"], g["val_final"], marker="o", lw=1.4, label=loss)
        pruned = g[g["status"] == "pruned"]
        ax.scatter(pruned["lr"], pruned["val_final"], s=40, facecolors="white",
                   edgecolors=line.get_color(), zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation {metric} (last eval; hollow: pruned early)")
    ax.set_title(f"{variant}: tuning", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _save(fig, path)


def _summary_rows(runs) -> list[list[str]]:
    from losscli.stats import recommendations

    table = recommendations(runs)
    return [[r["variant"], r["pick"],
             f"{fmt_num(r['mean'])} [{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]",
             r["not_significantly_worse"] or "–", r["verdict"], r["tuned"] or "–"]
            for _, r in table.iterrows()]


SUMMARY_HEAD = ["job variant", "pick", "test mean [95 % CI]", "not significantly worse",
                "verdict", "tuned"]


def _across(runs, out: Path) -> tuple[list[str], Path | None]:
    """Average ranks over variants, the Friedman test and a critical-difference diagram
    (autorank), where at least two variants share at least two losses."""
    from losscli.stats import across_variants, variant_tables

    tables = variant_tables(runs)
    means = pd.DataFrame({v: t.set_index("loss")["mean"] for v, t in tables.items()}).T
    maximize = pd.Series({v: t.attrs["maximize"] for v, t in tables.items()})
    try:
        result = across_variants(means, maximize)
    except Exception as exc:  # autorank refuses some shapes (e.g. too few variants)
        return [f"Across variants: not computed ({exc})."], None
    if result is None:
        return [], None
    ranks = ", ".join(f"{loss} {r:.2f}" for loss, r in result.rankdf["meanrank"].items())
    lines = [f"Across {means.dropna(axis=1).shape[0]} variants: average ranks {ranks}; "
             f"Friedman p {_p(result.pvalue)}; critical difference {result.cd:.2f} "
             f"(Nemenyi, alpha {ALPHA})."]
    from autorank import plot_stats

    plot_stats(result, allow_insignificant=True)
    return lines, _save(plt.gcf(), out / "critical-difference.png")


def build_report(run_dir: Path, out: Path | None = None, findings=()) -> tuple[Path, Path]:
    """Write ``report.md`` (+ PNGs) and a self-contained ``report.html``; return both paths."""
    run_dir = Path(run_dir)
    out = Path(out or run_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    runs, history = read_runs(run_dir), read_history(run_dir)
    meta = read_meta(run_dir)
    sections = _sections(runs, history, out)
    results = [evaluate_finding(f, runs) for f in findings]
    summary = Section("Summary: which loss to pick", "", True, _summary_rows(runs), [],
                      [], "")
    lines, cd = _across(runs, out)
    summary.statuses = " ".join(lines)
    summary.images = [cd] if cd else []
    md = out / "report.md"
    md.write_text(_markdown(run_dir, meta, [summary, *sections], results))
    page = out / "report.html"
    page.write_text(_html(run_dir, meta, [summary, *sections], results))
    return md, page


def _intro(run_dir: Path, meta: dict) -> list[str]:
    return [f"Run directory: `{run_dir}`",
            f"Command: `{meta.get('command', '?')}` · device {meta.get('device', '?')} · "
            f"{meta.get('versions', '')} · commit {str(meta.get('git_commit'))[:10]}",
            "Quality is each run's primary metric on the test split (evaluated once, after "
            "training; curves are validation); mean ± std and a 95 % t-interval "
            f"over seeds; Welch's t-test against the best loss, Holm-corrected over the "
            f"variant's comparisons (significant at p < {ALPHA})."]


FINDING_HEAD = ["finding", "verdict", "evidence"]


def _markdown(run_dir, meta, sections, results) -> str:
    parts = ["# losscli report", "", *[f"{line}  " for line in _intro(run_dir, meta)], ""]
    if results:
        parts += ["## Published findings", "",
                  _md_table(FINDING_HEAD, [[f"{r.id}: {r.title}", f"**{r.verdict}**",
                                            r.evidence] for r in results]), ""]
    for s in sections:
        better = "higher" if s.maximize else "lower"
        head, line = (SUMMARY_HEAD, s.statuses) if not s.metric else \
            (RANK_HEAD, f"{s.metric}, {better} is better · runs: {s.statuses}")
        parts += [f"## {s.title}", "", line, "", _md_table(head, s.ranking), ""]
        parts += [_md_table(COST_HEAD, s.cost), ""] if s.cost else []
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
        head, line = (SUMMARY_HEAD, s.statuses) if not s.metric else (
            RANK_HEAD, f"{s.metric}, {'higher' if s.maximize else 'lower'} is better · runs: "
            f"{s.statuses}")
        parts.append(f"<h2>{html.escape(s.title)}</h2><p>{html.escape(line)}</p>")
        parts.append(_html_table(head, s.ranking))
        parts += [_html_table(COST_HEAD, s.cost)] if s.cost else []
        for img in s.images:
            data = base64.b64encode(img.read_bytes()).decode()
            parts.append(f"<p><img alt='{img.stem}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(parts + ["</body></html>"])
