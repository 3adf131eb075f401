"""``losscli recommend RUN_DIR``: per job variant, the loss to pick and the honest caveats."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import FormatOpt, OutputFormat, handle_errors, out


@handle_errors
def recommend(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (train or sweep output).",
                                            show_default=False)],
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Per job variant: the loss to pick on the test metric, every loss not significantly
    worse (Welch tests against the best, Holm-corrected, alpha 0.05), the pick's mean and
    95 % interval, tuned settings and cost. "No difference detected" is a valid answer."""
    from losscli.errors import UsageError
    from losscli.results import read_runs
    from losscli.stats import recommendations

    if not run_dir.is_dir() or not any(run_dir.glob("runs*.csv")):
        raise UsageError(f"{run_dir} holds no runs.csv")
    table = recommendations(read_runs(run_dir))
    if table.empty:
        raise UsageError(f"{run_dir}: no finished runs to compare")
    if fmt is OutputFormat.csv:
        sys.stdout.write(table.to_csv(index=False))
    elif fmt is OutputFormat.json:
        sys.stdout.write(table.to_json(orient="records", indent=2) + "\n")
    else:
        out.print(recommend_table(table))


def recommend_table(table):
    from rich.table import Table
    from rich.text import Text

    from losscli.render import fmt_num, tuned_text

    view = Table(title="recommendation per job variant (test split; seeds as samples)",
                 title_justify="left", show_lines=True)
    for col in ("variant", "pick", "mean [95 % CI]", "not significantly worse", "verdict",
                "tuned", "samples/s"):
        view.add_column(col, overflow="fold")
    for _, r in table.iterrows():
        view.add_row(Text(r["variant"]), Text(r["pick"], style="bold"),
                     f"{fmt_num(r['mean'])} [{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]",
                     Text(r["not_significantly_worse"] or "–"), Text(r["verdict"]),
                     Text(tuned_text(r["tuned"])), fmt_num(r["samples_per_s"], 0))
    return view
