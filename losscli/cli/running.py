"""Shared by the commands that train (train, sweep, check): progress, meta, tables."""

from __future__ import annotations

import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape

from losscli.cli.common import OutputFormat, err, out

__all__ = ["RunProgress", "render_summary", "report_errors", "run_meta"]


def run_meta(plan, device: str, **extra: Any) -> dict[str, Any]:
    """meta.json: the command line, versions, device, git commit, what was planned."""
    import torch

    from losscli.sweep import versions

    return {
        "command": shlex.join(["losscli", *sys.argv[1:]]),
        "jobs": sorted({r.job.name for r in plan.runs}),
        "job_options": {r.job.name: r.job.options for r in plan.runs},
        "data_sources": {k[0]: v for k, v in plan.sources.items()},
        "losses": sorted({r.loss.spec for r in plan.runs}),
        "seeds": sorted({r.seed for r in plan.runs}),
        "planned_runs": len(plan.runs),
        "config": {r.job.name: r.cfg.describe() for r in plan.runs},
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "git_commit": _git_commit(),
        "started_at": datetime.now(timezone.utc).isoformat(),
        **extra,
    }


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


class RunProgress:
    """One transient progress display on stderr: all runs (with ETA) and the current run;
    a line per finished run is printed above it."""

    def __init__(self, total_runs: int, quiet: bool, skipped: int = 0):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
            disable=quiet,
        )
        self.total_runs, self.skipped = total_runs, skipped
        self._every = 1

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        self.all = self.progress.add_task("all runs", total=self.total_runs,
                                          completed=self.skipped)
        self.run = self.progress.add_task("", total=1, visible=False)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, spec) -> None:
        self._every = max(1, spec.cfg.steps // 200)
        self.progress.reset(self.run, total=spec.cfg.steps, visible=True,
                            description=escape(f"{spec.job.name} {spec.loss.spec} "
                                               f"seed {spec.seed}"))

    def step(self, step: int) -> None:
        if step % self._every == 0:  # a host-side counter only; no device sync
            self.progress.update(self.run, completed=step)

    def done(self, spec, row: dict) -> None:
        self.progress.advance(self.all)
        if self.quiet:
            return
        colour = {"ok": "green", "diverged": "yellow"}.get(row["status"], "red")
        self.progress.console.print(
            f"[{colour}]{row['status']:>8}[/] " + escape(
                f"{spec.job.name} {spec.loss.spec} seed {spec.seed}: {row['primary_metric']} "
                f"{row['primary_final']:.4f}, {row['train_seconds']:.1f} s"), highlight=False)


def render_summary(summary, jobs, plan, fmt: OutputFormat, root: Path) -> None:
    """The summary on stdout as a table per job, CSV or JSON."""
    from losscli.render import summary_table

    if fmt is OutputFormat.csv:
        sys.stdout.write(summary.to_csv(index=False))
        return
    if fmt is OutputFormat.json:
        sys.stdout.write(summary.to_json(orient="records", indent=2) + "\n")
        return
    device = plan.runs[0].cfg.device if plan.runs else "?"
    for job in jobs:
        for variant, part in summary[summary["job"] == job.name].groupby("variant", sort=False):
            source = plan.sources.get(job.data_key, "")
            out.print(summary_table(part, job, f"{variant} · {source} · {device}"))
    err.print(f"results: {root}", highlight=False)


def report_errors(runs) -> bool:
    """Print each errored run on stderr; True when there was one."""
    errors = runs[runs["status"] == "error"]
    for _, r in errors.iterrows():
        err.print(f"error: {r['job']} {r['loss']} seed {r['seed']}: {r['error']}", style="red",
                  highlight=False, markup=False)
    return len(errors) > 0
