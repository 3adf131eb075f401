"""Shared by the commands that train or read runs (train, sweep, check, show): the progress
display, the CPU-thread option and the summary on stdout."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.text import Text

from losscli.cli.common import EXIT_FAILED, OutputFormat, err, out
from losscli.render import tuned_text

__all__ = ["ColumnsOpt", "PerSeedOpt", "RunProgress", "ThreadsOpt", "TuneStorageOpt", "WideOpt",
           "cpu_threads", "finish", "loading", "progress_factory", "render_summary",
           "report_errors", "seed_label", "show_runs", "table_columns"]

ThreadsOpt = Annotated[int | None, typer.Option(
    min=1, help="CPU threads per process (default: torch's). On CPU the thread count changes "
    "float rounding: runs compare exactly only at the same count.")]
PerSeedOpt = Annotated[bool, typer.Option(
    "--per-seed", help="One row per run (each seed) instead of mean ± std per loss.")]
WideOpt = Annotated[bool, typer.Option(
    "--wide", help="Every table column, even wider than the terminal.")]
TuneStorageOpt = Annotated[str | None, typer.Option(
    metavar="<url>", help="Share tuning trials with other processes through an Optuna "
    "database: sqlite:///PATH.db (one machine; every torchrun rank), postgresql://USER@HOST/DB "
    "(several machines). Each grid point runs once across them; all agree on the winner.")]
ColumnsOpt = Annotated[str | None, typer.Option(
    metavar="<names>", help="Extra table columns, comma-separated: best, auc, a metric's name, "
    "train_loss, samples_s, loss_ms, runs (or all). Default: those that fit the terminal.")]


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` for the block, then restored, so in-process callers
    (tests) keep their setting. None: the load-following governor of ``losscli.threads``
    picks each run's count (unless ``OMP_NUM_THREADS`` fixes it)."""
    import torch

    from losscli import threads

    if n is None:
        threads.govern_torch_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(n or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def loading(quiet: bool, text: str = "loading torch and the loss library"
            ) -> contextlib.AbstractContextManager:
    """A spinner on stderr while ``text`` happens: e.g. torch loading, seconds on a busy
    machine before the progress display can say anything."""
    return contextlib.nullcontext() if quiet else err.status(text, spinner="dots")


def table_columns(wide: bool, columns: str | None, metrics: Iterable[str] = ()
                  ) -> tuple[str, ...] | None:
    """``--wide``/``--columns`` as ``render.Fitted``'s ``columns``; a name that is no column
    of a summary scoring ``metrics`` is a usage error naming the valid ones."""
    from losscli.errors import UsageError, close_matches
    from losscli.render import ALL, column_keys

    if wide:
        return ALL
    if columns is None:
        return None
    names = tuple(c.strip().lower() for c in columns.split(",") if c.strip())
    if "all" in names:
        return ALL
    valid = column_keys(metrics)
    for name in names:
        if name not in valid:
            near = close_matches(name, valid)
            hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
            raise UsageError(f"--columns: no column {name!r}{hint}; valid: "
                             f"{', '.join([*valid, 'all'])}")
    return names


def seed_label(seeds: Sequence[int]) -> str:
    """``seed 3``, ``seeds 0-2`` (consecutive) or ``seeds 0,2,5``."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ",".join(map(str, seeds))


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _CountColumn(ProgressColumn):
    """``120/500 steps``."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed):,}/{int(task.total):,} steps", style="cyan")


class _EtaColumn(ProgressColumn):
    """Time left: the steps left times the mean time per step since the bar's first step
    (evals and per-run overheads included, so the estimate does not swing at each eval)."""

    def render(self, task: Task) -> Text:
        t0, c0 = task.fields.get("t0"), task.fields.get("c0", 0)
        if task.total is None or t0 is None or task.completed <= c0:
            return Text("")
        per_step = (time.monotonic() - t0) / (task.completed - c0)
        return Text(f"ETA {_clock(per_step * (task.total - task.completed))}", style="blue")


@dataclass
class _Running:
    """Runs that train together (one, or the seeds of a stack) and their bar."""

    task: Any
    specs: list
    last: int = 0
    pending: set = field(default_factory=set)
    stepped: bool = False


class RunProgress:
    """One transient display on stderr, told by ``losscli.sweep.run`` what happens:

    - a phase line with a spinner while the plan is checked or seeds are calibrated;
    - a bar per run in training, advancing per step and naming its seed (``seeds 0-2``
      when stacked);
    - an overall bar counted in steps of the runs left, with an ETA;
    - a line per finished run, printed above the bars as it finishes.
    """

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        self.quiet = quiet
        # a long loss spec is shortened with … here only: the bars must fit on one line
        description = Column(no_wrap=True, overflow="ellipsis", max_width=48)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}", table_column=description),
            BarColumn(bar_width=20), _CountColumn(), TimeElapsedColumn(), _EtaColumn(),
            console=err, transient=True, disable=quiet)
        self.running: dict[str, _Running] = {}  # first run key → its group
        self.group_of: dict[str, str] = {}  # run key → first run key of its group
        self.current: str | None = None
        self.all: Any = None
        self.all_stepped = False
        self.left = self.total = self.counted = 0

    def __enter__(self) -> RunProgress:
        """Yields itself: the ``Progress`` that ``losscli.sweep.run`` reports to."""
        self.progress.__enter__()
        self.phase_task = self.progress.add_task("", total=None, visible=False)
        self.phase_on = False
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def phase(self, text: str) -> None:
        self.progress.reset(self.phase_task, description=escape(text), visible=True)
        self.phase_on = True

    def _end_phase(self) -> None:
        if self.phase_on:
            self.phase_on = False
            self.progress.update(self.phase_task, visible=False)

    def plan(self, todo, total: int) -> None:
        if total > len(todo):
            err.print(f"resuming: {total - len(todo)} of {total} runs already finished",
                      highlight=False)
        self.left, self.total = len(todo), total
        self.all = self.progress.add_task(self._all_label(),
                                          total=sum(r.cfg.steps for r in todo) or 1)

    def _all_label(self) -> str:
        return f"[bold]all runs[/] {self.total - self.left}/{self.total}"

    def start(self, specs) -> None:
        first = specs[0]
        label = f"{first.job.name} {first.loss.spec} · {seed_label([s.seed for s in specs])}"
        if getattr(first, "phase", "run") == "tune":
            label = f"tuning {first.job.name} {first.loss.spec} · trial {first.trial}"
        task = self.progress.add_task(escape(label), total=first.cfg.steps, t0=None)
        self.running[first.key] = _Running(task, list(specs), pending={s.key for s in specs})
        self.group_of |= {s.key: first.key for s in specs}
        self.current = first.key

    def step(self, step: int, key: str | None = None) -> None:
        group = self.running.get(key or self.current or "")
        if group is None or step <= group.last:
            return
        self._end_phase()  # training has begun
        now, moved = time.monotonic(), step - group.last
        group.last, self.counted = step, self.counted + moved * len(group.specs)
        self.progress.update(group.task, completed=step)
        if not group.stepped:  # each ETA counts from its bar's first step: setup excluded
            group.stepped = True
            self.progress.update(group.task, t0=now, c0=step)
        if self.all is not None:
            self.progress.update(self.all, completed=self.counted)
            if not self.all_stepped:
                self.all_stepped = True
                self.progress.update(self.all, t0=now, c0=self.counted)

    def done(self, spec, result) -> None:
        self._end_phase()
        group = self.running.get(self.group_of.pop(spec.key, ""))
        if group is not None:
            # a run that ended early (diverged, errored) still counts all its steps
            self.counted += max(0, spec.cfg.steps - group.last)
            group.pending.discard(spec.key)
            if not group.pending:
                self.progress.remove_task(group.task)
                del self.running[group.specs[0].key]
        self.left -= 1
        if self.all is not None:
            self.progress.update(self.all, completed=self.counted,
                                 description=self._all_label())
        if not self.quiet:
            self.progress.console.print(_finished_line(spec, result), highlight=False)


def _finished_line(spec, result) -> str:
    colour = {"ok": "green", "diverged": "yellow", "pruned": "blue"}.get(result.status, "red")
    if getattr(spec, "phase", "run") == "tune":  # a trial is scored on validation only
        return f"[{colour}]{result.status:>8}[/] " + escape(
            f"tuning {spec.job.name} trial {spec.trial} ({tuned_text(spec.tuned)}): "
            f"{result.primary_metric} val {result.val_final:.4f} (rung {result.rung}), "
            f"{result.train_seconds:.1f} s")
    together = f" (stacked ×{result.seeds_together})" if result.seeds_together > 1 else ""
    return f"[{colour}]{result.status:>8}[/] " + escape(
        f"{spec.job.name} {spec.loss.spec} seed {spec.seed}: {result.primary_metric} "
        f"val {result.val_final:.4f}, test {result.test_final:.4f}, "
        f"{result.train_seconds:.1f} s{together}")


def progress_factory(quiet: bool):
    """``losscli.sweep.run``'s ``progress``: makes the display (entered before planning)."""
    return lambda: RunProgress(quiet)


def render_summary(result, fmt: OutputFormat, *, columns: tuple[str, ...] | None = None,
                   per_seed: bool = False) -> None:
    """A sweep's summary on stdout (``show_runs``), then its run directory on stderr."""
    show_runs(result.runs, result.root, fmt, columns=columns, per_seed=per_seed)
    err.print(f"results: {result.root}", highlight=False)


def show_runs(runs, root: Path, fmt: OutputFormat, *, columns: tuple[str, ...] | None = None,
              per_seed: bool = False) -> None:
    """Runs of a run directory on stdout: a table per job variant (or one row per run with
    ``per_seed``), CSV or JSON; warnings on stderr."""
    from losscli.render import records
    from losscli.results import per_run, read_history, summarize, with_convergence

    history = read_history(root)
    frame = per_run(runs, history) if per_seed else \
        with_convergence(summarize(runs), runs, history)
    if fmt is OutputFormat.csv:
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(records(frame), indent=2) + "\n")
    else:
        _print_tables(frame, runs, columns, per_seed)
    if per_seed or not len(frame):
        return
    mixed = frame[frame["threads"].str.contains(",")]
    for _, r in mixed.iterrows():
        err.print(f"warning: {r['variant']} {r['loss']} mixes runs made with {r['threads']} "
                  "CPU threads (their float rounding differs)", style="yellow",
                  highlight=False, markup=False)


def _print_tables(frame, runs, columns, per_seed: bool) -> None:
    from losscli.render import fmt_target, per_seed_view, summary_view
    from losscli.results import with_variant

    if not len(frame):
        err.print("no finished runs", highlight=False)
        return
    first = with_variant(runs).groupby("variant", sort=False).first()
    for variant, rows in frame.groupby("variant", sort=False):
        r = first.loc[variant]
        rows = rows.drop(columns=[c for c in rows.columns if c.endswith("_mean") and c not in
                                  ("final_mean", "best_mean", "val_mean")
                                  and rows[c].isna().all()])  # other jobs' metrics
        metric = r["primary_metric"]
        direction = "higher" if str(r["maximize"]).lower() == "true" else "lower"
        title = (f"{r['job']}: {metric} ({direction} is better, target {fmt_target(r['target'])})"
                 f" · {variant} · {r['data_source']}")
        view = per_seed_view(rows, title=title, metric=metric, target=r["target"]) \
            if per_seed else summary_view(rows, title=title, metric=metric, target=r["target"],
                                          columns=columns)
        out.print(view, crop=False)
        unknown = [c for c in view.unknown_columns() if c != metric]  # shown already
        if not per_seed and unknown:
            err.print(f"warning: no column {', '.join(unknown)} in this table; "
                      f"--columns takes {', '.join(view.known_columns())}", style="yellow",
                      highlight=False, markup=False)


def finish(result, fmt: OutputFormat, *, per_seed: bool, columns: tuple[str, ...] | None
           ) -> None:
    """The end of a command that trained: the summary (``columns`` from ``table_columns``,
    checked before training), errored runs named, exit 1 if any."""
    render_summary(result, fmt, columns=columns, per_seed=per_seed)
    if report_errors(result.runs):
        raise typer.Exit(EXIT_FAILED)


def report_errors(runs) -> bool:
    """Print each errored run on stderr; True when there was one."""
    errors = runs[runs["status"] == "error"]
    for _, r in errors.iterrows():
        err.print(f"error: {r['job']} {r['loss']} seed {r['seed']}: {r['error']}", style="red",
                  highlight=False, markup=False)
    return len(errors) > 0
