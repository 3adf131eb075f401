"""``losscli report RUN_DIR``: Markdown + PNG and a self-contained HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import err, handle_errors


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", show_default=False,
                                            help="A run directory (train or sweep output).")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Where to write (default RUN_DIR/report).")] = None,
    suite: Annotated[Path | None, typer.Option(
        help="Suite whose \\[\\[finding]] entries to evaluate (default: the suite the run "
        "directory was made from, if any).")] = None,
) -> None:
    """Write report.md (with PNG plots) and a self-contained report.html.

    At the top, which loss to pick per job variant. Per variant: a ranking with 95 % CIs
    and Holm-corrected significance against the best loss, costs in ranking order,
    validation curves with the end of training enlarged, quality vs time; for tuned runs
    the chosen settings, the metric against the tuned value, its spread over the grid and
    the untuned ranking beside the tuned one; for paper suites, a verdict per finding."""
    from losscli.report import build_report
    from losscli.results import WriteError, read_meta, read_run_dir
    from losscli.suite import load_suite

    read_run_dir(run_dir)  # a usage error when it holds no runs or they do not parse
    if suite is None:
        recorded = read_meta(run_dir).get("suite")
        suite = Path(recorded) if isinstance(recorded, str) and Path(recorded).is_file() \
            else None
    findings = load_suite(suite).findings if suite else ()
    try:
        md, page = build_report(run_dir, out_dir, findings)
    except OSError as exc:  # the readers' problems are usage errors; this is the writing
        raise WriteError(out_dir or run_dir / "report", exc.strerror or str(exc)) from None
    err.print(f"report: {md}\n        {page}", highlight=False)
