"""Rich tables: the only module that decides how results look in a terminal."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text

__all__ = ["fmt_num", "summary_table"]


def fmt_num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(summary, job, subtitle: str) -> Table:
    """One row per loss: quality (mean ± std over seeds), convergence, cost."""
    metric = job.primary_metric
    others = [m for m in job.metrics if m != metric and f"{m}_mean" in summary.columns]
    table = Table(title=f"{job.name}: {metric} ({'higher' if job.maximize else 'lower'} is "
                  f"better) · {subtitle}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("loss", style="bold", overflow="fold")
    table.add_column(f"{metric} (final)", justify="right")
    table.add_column("best", justify="right")
    table.add_column(f"steps→{fmt_num(job.task.target, 2)}", justify="right")
    table.add_column("AUC", justify="right")
    for m in others:
        table.add_column(m, justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("train s", justify="right")
    table.add_column("samples/s", justify="right")
    table.add_column("loss ms", justify="right")
    table.add_column("runs", justify="right")
    for _, r in summary.iterrows():
        quality = f"{fmt_num(r['final_mean'])} ± {fmt_num(r['final_std'])}"
        steps = fmt_num(r["steps_to_target"], 0) + f" ({r['reached_target']}/{r['ok']})"
        status = f"{r['ok']}/{r['runs']}"
        if r["diverged"]:
            status += f" [yellow]{r['diverged']} diverged[/]"
        if r["errors"]:
            status += f" [red]{r['errors']} error[/]"
        table.add_row(
            str(r["rank"]), Text(str(r["loss"])), quality, fmt_num(r["best_mean"]), steps,
            fmt_num(r["curve_auc"]), *[fmt_num(r[f"{m}_mean"]) for m in others],
            fmt_num(r["final_train_loss"]), fmt_num(r["train_seconds"], 1),
            fmt_num(r["samples_per_s"], 0), fmt_num(r["loss_ms_per_step"], 3), status,
        )
    return table
