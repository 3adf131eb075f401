"""``losscli report RUN_DIR``: Markdown + PNG and a self-contained HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import err, handle_errors
from losscli.errors import UsageError


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (train or sweep output).",
                                            show_default=False)],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Where to write (default RUN_DIR/report).")] = None,
    suite: Annotated[Path | None, typer.Option(
        help="Suite whose [[finding]] entries to evaluate (default: the suite the run "
        "directory was made from, if any).")] = None,
) -> None:
    """Write report.md (with PNG plots) and report.html (images embedded): per job a
    ranking with 95 % CIs and significance against the best loss, convergence curves,
    costs, quality vs time, and for paper suites a verdict per published finding."""
    from losscli.report import build_report
    from losscli.suite import load_suite

    if not any(run_dir.glob("runs*.csv")):
        raise UsageError(f"{run_dir} holds no runs.csv")
    meta_path = run_dir / "meta.json"
    if suite is None and meta_path.exists():
        recorded = json.loads(meta_path.read_text()).get("suite")
        suite = Path(recorded) if recorded and Path(recorded).exists() else None
    findings = load_suite(suite).findings if suite else ()
    md, page = build_report(run_dir, out_dir, findings)
    err.print(f"report: {md}\n        {page}", highlight=False)
