"""Shared by the commands that train (train, sweep, check): progress and tables."""

from __future__ import annotations

import sys

from rich.markup import escape

from losscli.cli.common import OutputFormat, err, out

__all__ = ["RunProgress", "render_summary", "report_errors"]


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
        """Yields itself: the ``Progress`` that ``losscli.sweep.run`` reports to."""
        if self.skipped:
            err.print(f"resuming: {self.skipped} of {self.total_runs} runs already finished",
                      highlight=False)
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

    def done(self, spec, result) -> None:
        self.progress.advance(self.all)
        if self.quiet:
            return
        colour = {"ok": "green", "diverged": "yellow"}.get(result.status, "red")
        self.progress.console.print(
            f"[{colour}]{result.status:>8}[/] " + escape(
                f"{spec.job.name} {spec.loss.spec} seed {spec.seed}: {result.primary_metric} "
                f"val {result.val_final:.4f}, test {result.test_final:.4f}, "
                f"{result.train_seconds:.1f} s"), highlight=False)


def progress_factory(quiet: bool):
    """``losscli.sweep.run``'s ``progress``: a display for (total runs, already done)."""
    return lambda total, done: RunProgress(total, quiet, skipped=done)


def render_summary(result, fmt: OutputFormat) -> None:
    """A sweep's summary on stdout as a table per job variant, CSV or JSON."""
    from losscli.render import summary_table
    from losscli.results import summarize

    summary = summarize(result.runs)
    if fmt is OutputFormat.csv:
        sys.stdout.write(summary.to_csv(index=False))
    elif fmt is OutputFormat.json:
        sys.stdout.write(summary.to_json(orient="records", indent=2) + "\n")
    else:
        for job in result.plan.jobs():
            source = result.plan.sources.get(job.data_key, "")
            part = summary[summary["job"] == job.name] if len(summary) else summary
            for variant, rows in part.groupby("variant", sort=False):
                out.print(summary_table(rows, job, f"{variant} · {source}"))
    mixed = summary[summary["threads"].str.contains(",")] if len(summary) else summary
    for _, r in mixed.iterrows():
        err.print(f"warning: {r['variant']} {r['loss']} mixes runs made with {r['threads']} "
                  "CPU threads (their float rounding differs)", style="yellow",
                  highlight=False, markup=False)
    err.print(f"results: {result.root}", highlight=False)


def report_errors(runs) -> bool:
    """Print each errored run on stderr; True when there was one."""
    errors = runs[runs["status"] == "error"]
    for _, r in errors.iterrows():
        err.print(f"error: {r['job']} {r['loss']} seed {r['seed']}: {r['error']}", style="red",
                  highlight=False, markup=False)
    return len(errors) > 0
