"""Comparison reports from a run directory: Markdown with PNG plots, and one
self-contained HTML file (plots embedded) made from the same tables.

The Markdown is the source: table cells and lines may hold inline code (backticks) and
bold (``**``); the HTML renders those as ``<code>`` and ``<b>``, so no Markdown shows
literally in the page. Figures are drawn by ``losscli.report_plots``; what the report says
about tuning comes from ``losscli.report_tuning``.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from losscli import report_plots as plots
from losscli import report_tuning as tuning
from losscli.render import fmt_num
from losscli.report_calibration import reliability_plot
from losscli.results import (
    compared,
    read_history,
    read_meta,
    read_runs,
    seed_stats,
    with_variant,
)
from losscli.stats import ALPHA, compare, welch_p

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


def _typed(finding) -> dict:
    """The finding's job options as the job stores them (``imbalance = 100`` is the
    float 100.0, written ``"100.0"`` in runs.csv); as written when the job is unknown."""
    from losscli.errors import UsageError
    from losscli.jobs import job_class
    from losscli.options import validate_options

    try:
        return validate_options(job_class(finding.task).option_specs, finding.options,
                                finding.task)
    except (KeyError, UsageError):
        return dict(finding.options)


def evaluate_finding(finding, runs: pd.DataFrame) -> FindingResult:
    """Each ``better`` loss against ``than`` on the test metric over shared seeds: effect,
    sign consistency, and Welch p corrected across the finding's comparisons (Holm).

    reproduced: every ``better`` loss wins on average, on every seed, with corrected
    p < 0.05; not reproduced: some ``better`` loss loses on average with corrected
    p < 0.05; else inconclusive.
    """
    opts = json.dumps({k: str(v) for k, v in sorted(_typed(finding).items())})
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


# --------------------------------------------------------------------------- sections


@dataclass
class Table:
    caption: str  # Markdown inline; "" for none
    head: list[str]
    rows: list[list[str]]  # cells: Markdown inline (`code`, **bold**)


@dataclass
class Section:
    title: str
    line: str  # Markdown inline
    tables: list[Table] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


RANK_HEAD = ["#", "loss", "seeds", "test (mean ± std)", "95 % CI", "worse than best by",
             "Hedges g", "Holm p vs best", f"significant (p < {ALPHA})"]
COST_HEAD = ["#", "loss", "samples/s", "loss fwd+bwd ms/step", "train s/run",
             "steps to target"]
SUMMARY_HEAD = ["job variant", "pick", "test mean [95 % CI]", "not significantly worse",
                "verdict", "tuned"]
FINDING_HEAD = ["finding", "verdict", "evidence"]
CAPTIONS = {  # by the end of a figure's file name
    "curves": "Validation curves from the first eval after step 0 (with 4 or more evals, "
              "the last third enlarged beside them) and the training loss.",
    "quality-vs-time": "Test metric against training time per run.",
    "tuning": "Tuning: validation metric against the tuned value, one line per loss.",
    "sensitivity": "Sensitivity: every trial's validation metric per loss; a long bar "
                   "needs tuning.",
    "reliability": "Reliability on test (classification runs).",
    "critical-difference": "Critical-difference diagram (Demšar 2006): average ranks of "
                           "the losses; losses joined by a bar are not significantly "
                           "different (Nemenyi).",
}


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _ranking_rows(rank: pd.DataFrame) -> list[list[str]]:
    rows = []
    for i, r in rank.iterrows():
        sig = "" if i == 0 else ("yes" if r["significant"] else "no")
        rows.append([str(i + 1), _code(r["loss"]), str(r["n"]),
                     f"{fmt_num(r['mean'])} ± {fmt_num(r['std'])}",
                     f"[{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]",
                     "best" if i == 0 else fmt_num(r["worse_by"]),
                     "" if i == 0 else fmt_num(r["hedges_g"], 2),
                     "best" if i == 0 else _p(r["p_holm"]), sig])
    return rows


def _cost_rows(group: pd.DataFrame, order: list[str]) -> list[list[str]]:
    """Cost per loss, in ranking order (``order``; losses without a finished run last)."""
    ok = group[group["status"] == "ok"]
    place = {loss: i for i, loss in enumerate(order)}
    per_loss = sorted(ok.groupby("loss_key", sort=False),
                      key=lambda kg: place.get(kg[1]["loss"].iloc[0], len(place)))
    return [[str(i + 1), _code(g["loss"].iloc[0]), f"{g['samples_per_s'].mean():,.0f}",
             fmt_num(g["loss_ms_per_step"].mean(), 3), fmt_num(g["train_seconds"].mean(), 1),
             fmt_num(g["steps_to_target"].mean(), 0)]
            for i, (_, g) in enumerate(per_loss)]


def _variant_section(i: int, variant: str, group: pd.DataFrame, history: pd.DataFrame,
                     trials: pd.DataFrame, rankings: dict, colour: dict[str, str],
                     out: Path) -> Section:
    metric = group["primary_metric"].iloc[0]
    maximize = bool(group["maximize"].iloc[0])
    counts = group["status"].value_counts().to_dict()
    rank = rankings[variant]
    order = list(rank["loss"]) if len(rank) else []
    order += [loss for loss in dict.fromkeys(group["loss"]) if loss not in order]
    palette = {loss: colour[loss] for loss in order}
    ok = group[group["status"] == "ok"]
    section = Section(variant, f"{metric}, {'higher' if maximize else 'lower'} is better · "
                      f"runs: {', '.join(f'{n} {s}' for s, n in counts.items())}")
    section.tables = [Table("", RANK_HEAD, _ranking_rows(rank)),
                      Table("Cost, in ranking order", COST_HEAD, _cost_rows(group, order))]
    images = section.images
    if len(ok):
        images += [plots.curve_figure(variant, ok, history, metric, palette,
                                      out / f"v{i}-curves.png"),
                   plots.quality_vs_time(variant, ok, metric, palette,
                                         out / f"v{i}-quality-vs-time.png")]
    reliability = reliability_plot(variant, group, history, out / f"v{i}-reliability.png",
                                   palette)
    images += [reliability] if reliability else []  # classification runs' test bins
    if len(trials):
        _tuning_parts(section, i, variant, group, trials, rankings, order, colour, out)
    return section


def _tuning_parts(section: Section, i: int, variant: str, group: pd.DataFrame,
                  trials: pd.DataFrame, rankings: dict, order: list[str],
                  colour: dict[str, str], out: Path) -> None:
    """A tuned variant's chosen settings, tuning and sensitivity figures, and its ranking
    beside the untuned one's when the run directory has that too."""
    metric = group["primary_metric"].iloc[0]
    maximize = bool(group["maximize"].iloc[0])
    frame = tuning.trial_frame(trials)
    tuned = dict(zip(group["loss"], group["tuned"], strict=True))
    studies = [tuning.study_of(loss, tuned[loss]) for loss in order]
    palette = {study: colour[study] for study in dict.fromkeys([*studies, *frame["study"]])}
    rows, chosen = tuning.chosen_rows(group, frame, maximize, order)
    section.tables.append(Table(
        f"Tuning on validation: the settings chosen per loss ({frame['trial'].nunique()} "
        "trials each, successive halving); the spread is how much the grid mattered",
        tuning.CHOSEN_HEAD, rows))
    axis = tuning.tuning_axis(frame)
    section.images += [
        plots.tuning_plot(variant, frame, metric, axis, maximize, palette,
                          out / f"v{i}-tuning.png"),
        plots.sensitivity_plot(variant, frame, chosen, metric, palette,
                               out / f"v{i}-sensitivity.png")]
    partner = tuning.untuned_partner(variant, list(rankings))
    if partner is not None:
        section.tables.append(Table(
            "Untuned vs tuned ranking on test (untuned: the same job and budget at a fixed "
            "lr, its own section)",
            tuning.side_by_side_head(partner),
            tuning.side_by_side(rankings[partner], rankings[variant], group)))


def _sections(runs: pd.DataFrame, history: pd.DataFrame, out: Path) -> list[Section]:
    trials = with_variant(runs[runs["phase"] == "tune"]) if "phase" in runs else runs[:0]
    ranked = compared(runs)
    if not len(ranked):
        return []
    variants = list(with_variant(ranked).groupby("variant", sort=False))
    rankings = {variant: ranking(group) for variant, group in variants}
    studies = [tuning.study_of(loss, t) for loss, t in zip(trials["loss"], trials["tuned"],
                                                          strict=True)] if len(trials) else []
    colour = plots.colours(list(dict.fromkeys([*ranked["loss"], *studies])))
    return [_variant_section(i, variant, group, history,
                             trials[trials["variant"] == variant] if len(trials) else trials,
                             rankings, colour, out)
            for i, (variant, group) in enumerate(variants)]


def _summary_rows(runs) -> list[list[str]]:
    from losscli.stats import recommendations

    table = recommendations(runs)
    return [[r["variant"], _code(r["pick"]),
             f"{fmt_num(r['mean'])} [{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]",
             ", ".join(_code(s) for s in r["not_significantly_worse"].split(", ") if s)
             or "–", r["verdict"], tuning.setting_text(r["tuned"])]
            for _, r in table.iterrows()]


MIN_BLOCKS = 5  # autorank's minimum number of blocks (rows) for the Friedman test


def rank_blocks(runs) -> dict[str, tuple[pd.DataFrame, str]]:
    """Per job, the blocks to rank its losses over, signed so that higher is better: its
    variants' mean test metric when it has ``MIN_BLOCKS`` or more variants (Demšar 2006:
    one block per data set), else one block per (variant, seed), so that a job with two
    or three variants still gets average ranks and a Friedman test over its seeds.
    Only the losses every variant of the job trained, and blocks where all of them
    finished, are kept. Returns {job: (blocks x losses frame, what a block is)}."""
    ok = compared(runs)
    ok = ok[ok["status"] == "ok"]
    if ok.empty:
        return {}
    sign = ok["maximize"].map(lambda m: 1.0 if str(m).lower() in ("true", "1") else -1.0)
    ok = with_variant(ok).assign(signed=ok["test_final"].astype(float) * sign)
    out = {}
    for job, d in ok.groupby("job", sort=False):
        losses_of = d.groupby("variant")["loss"].agg(set)
        common = sorted(set.intersection(*losses_of))
        if len(common) < 2 or len(losses_of) < 2:
            continue
        d = d[d["loss"].isin(common)]
        if len(losses_of) >= MIN_BLOCKS:
            table, unit = d.pivot_table(index="variant", columns="loss", values="signed",
                                        aggfunc="mean"), "job variants"
        else:
            table, unit = d.pivot_table(index=["variant", "seed"], columns="loss",
                                        values="signed", aggfunc="mean"), \
                "(job variant, seed) pairs"
        out[job] = (table[common].dropna(axis=0), unit)
    return out


def _across(runs, out: Path) -> tuple[list[str], list[Path]]:
    """Per job with two or more variants sharing two or more losses: average ranks, the
    Friedman test and a critical-difference diagram (autorank; ``rank_blocks``)."""
    import matplotlib.pyplot as plt
    from autorank import autorank, plot_stats

    lines, figures = [], []
    for job, (table, unit) in rank_blocks(runs).items():
        n_var = table.index.get_level_values(0).nunique()
        if len(table) < MIN_BLOCKS:
            lines.append(f"{job}: average ranks not computed ({len(table)} {unit}; the "
                         f"Friedman test here needs {MIN_BLOCKS}).")
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # autorank prints when forced
                result = autorank(table, alpha=ALPHA, verbose=False, order="descending",
                                  force_mode="nonparametric")
        except Exception as exc:  # autorank refuses some shapes
            lines.append(f"{job}: average ranks not computed (autorank: {exc}).")
            continue
        ranks = ", ".join(f"`{loss}` {r:.2f}" for loss, r in
                          result.rankdf["meanrank"].sort_values(kind="stable").items())
        cd = f"; critical difference {result.cd:.2f} (Nemenyi, alpha {ALPHA})" \
            if result.cd is not None else ""
        lines.append(f"{job}: across {len(table)} {unit} ({n_var} variants), average ranks "
                     f"{ranks} (1 = best); Friedman p {_p(result.pvalue)}{cd}.")
        plot_stats(result, allow_insignificant=True)
        figures.append(plots.save(plt.gcf(), out / f"{job}-critical-difference.png"))
    return lines, figures


def build_report(run_dir: Path, out: Path | None = None, findings=()) -> tuple[Path, Path]:
    """Write ``report.md`` (+ PNGs) and a self-contained ``report.html``; return both paths."""
    run_dir = Path(run_dir)
    out = Path(out or run_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    runs, history = read_runs(run_dir), read_history(run_dir)
    meta = read_meta(run_dir)
    results = [evaluate_finding(f, runs) for f in findings]
    lines, cds = _across(runs, out)
    summary = Section("Summary: which loss to pick", " ".join(lines),
                      [Table("", SUMMARY_HEAD, _summary_rows(runs))], cds)
    found = Section("Published findings", "", [Table("", FINDING_HEAD, [
        [f"{r.id}: {r.title}", f"**{r.verdict}**", r.evidence] for r in results])]) \
        if results else None
    sections = [summary, *([found] if found else []), *_sections(runs, history, out)]
    md = out / "report.md"
    md.write_text(_markdown(run_dir, meta, sections))
    page = out / "report.html"
    page.write_text(_html(run_dir, meta, sections))
    return md, page


# --------------------------------------------------------------------------- documents


def _intro(run_dir: Path, meta: dict) -> list[str]:
    return [f"Run directory: `{run_dir}`",
            f"Command: `{meta.get('command', '?')}` · device {meta.get('device', '?')} · "
            f"{meta.get('versions', '')} · commit {str(meta.get('git_commit'))[:10]}",
            "Quality is each run's primary metric on the test split (evaluated once, after "
            "training; curves are validation); mean ± std and a 95 % t-interval "
            f"over seeds; Welch's t-test against the best loss, Holm-corrected over the "
            f"variant's comparisons (significant at p < {ALPHA})."]


def _caption(path: Path) -> str:
    text = next((text for end, text in CAPTIONS.items() if path.stem.endswith(end)), "")
    if path.stem.endswith("-critical-difference"):  # one per job: say which
        return f"{path.stem.removesuffix('-critical-difference')}: {text}"
    return text


def _md_table(table: Table) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines += ["| " + " | ".join(table.head) + " |", "|" + "---|" * len(table.head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _markdown(run_dir, meta, sections: list[Section]) -> str:
    parts = ["# losscli report", "", *[f"{line}  " for line in _intro(run_dir, meta)], ""]
    for s in sections:
        parts += [f"## {s.title}", ""] + ([s.line, ""] if s.line else [])
        for table in s.tables:
            parts += [_md_table(table), ""]
        parts += [f"![{img.stem}]({img.name})  \n*{_caption(img)}*\n" for img in s.images]
    return "\n".join(parts)


def _inline(text: object) -> str:
    """Markdown inline (`code`, **bold**) as HTML, everything else escaped."""
    parts = str(text).split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else
                   re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(p))
                   for i, p in enumerate(parts))


_NUMBER_CHARS = re.compile(r"[\d\s.,±\[\]<–+\-−e%/()]*")


def _numeric(rows: list[list[str]], col: int) -> bool:
    """A column of numbers (right-aligned): every cell digits, signs, ``±``, brackets,
    ``–``, ``best`` or ``(best) to``, and a digit somewhere; text and code stay left."""
    cells = [str(row[col]).replace("(best) to", "").replace("best", "") for row in rows]
    return any(re.search(r"\d", c) for c in cells) and \
        all(_NUMBER_CHARS.fullmatch(c) for c in cells)


def _html_table(table: Table, cell_class=None) -> str:
    right = [_numeric(table.rows, i) for i in range(len(table.head))]
    align = lambda i: " class='num'" if right[i] else ""  # noqa: E731
    th = "".join(f"<th{align(i)}>{html.escape(h)}</th>" for i, h in enumerate(table.head))
    body = "".join("<tr>" + "".join(
        f"<td{align(i)}{cell_class(i, c) if cell_class else ''}>{_inline(c)}</td>"
        for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _verdict_class(col: int, cell: str) -> str:
    """The verdict cell of the findings table, coloured by its verdict."""
    words = cell.strip("*").split()
    return f" class='{words[0]}'" if col == 1 and words else ""


CSS = ("body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;color:#222;"
       "padding:0 1em}table{border-collapse:collapse;margin:.4em 0 1.2em}"
       "caption{text-align:left;font-style:italic;font-size:13px;padding:2px 0}"
       "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;"
       "vertical-align:top}th{background:#f6f6f6}.num{text-align:right;"
       "font-variant-numeric:tabular-nums;white-space:nowrap}img{max-width:100%}"
       "figure{display:inline-block;vertical-align:top;max-width:100%;margin:.6em 1em 1.4em 0}"
       "figcaption{font-size:13px;color:#555;max-width:640px}"
       ".reproduced{color:#080}.inconclusive{color:#a60}.not{color:#b00}"
       "code{background:#f3f3f3;padding:0 2px;font-size:12px}h2{margin-top:1.8em;"
       "border-bottom:1px solid #ddd}")


def _html(run_dir, meta, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>losscli report</title>"
             f"<style>{CSS}</style></head><body><h1>losscli report</h1>"]
    parts += [f"<p>{_inline(line)}</p>" for line in _intro(run_dir, meta)]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{_inline(s.line)}</p>"] if s.line else []
        cells = _verdict_class if s.title == "Published findings" else None
        parts += [_html_table(table, cells) for table in s.tables]
        for img in s.images:
            data = base64.b64encode(img.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(img.stem)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>"
                         f"{html.escape(_caption(img))}</figcaption></figure>")
    return "\n".join(parts + ["</body></html>"])
