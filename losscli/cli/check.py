"""``losscli check`` and ``losscli baseline``: CI guards on quality and convergence."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import (
    EXIT_FAILED,
    Device,
    DeviceOpt,
    PluginOpt,
    QuietOpt,
    err,
    handle_errors,
    out,
)
from losscli.cli.running import ThreadsOpt
from losscli.errors import UsageError

RunDir = Annotated[Path | None, typer.Argument(
    metavar="RUN_DIR", help="A run directory to read (instead of running --suite).",
    show_default=False)]
SuiteOpt = Annotated[Path | None, typer.Option(
    "--suite", help="Run this suite first (e.g. tasks/ci.toml).")]


def _runs(run_dir: Path | None, suite: Path | None, out_dir: Path | None, device: Device,
          quiet: bool, plugins: list[str], threads: int | None = None):
    """The runs to judge: read from ``run_dir``, or produced by running ``suite``."""
    from losscli.cli.common import cli_device
    from losscli.cli.running import cpu_threads, loading, progress_factory
    from losscli.results import read_run_dir

    with loading(quiet):
        from losscli.sweep import load_plugins, run_suite

    if (run_dir is None) == (suite is None):
        raise UsageError("give either a RUN_DIR or --suite SUITE.toml")
    if suite is None:
        return read_run_dir(run_dir)
    kwargs = {"device": cli_device(device), "plugins": load_plugins(plugins),
              "progress": progress_factory(quiet)}
    if out_dir is not None:
        with cpu_threads(threads):
            return run_suite(suite, out_dir, **kwargs).runs
    with tempfile.TemporaryDirectory(prefix="losscli-check-") as tmp, cpu_threads(threads):
        try:  # the temporary directory is removed afterwards
            return run_suite(suite, Path(tmp), **kwargs).runs
        except KeyboardInterrupt as exc:
            exc.root = None  # nothing to resume: the temporary directory goes
            raise


@handle_errors
def baseline(
    run_dir: RunDir = None,
    suite: SuiteOpt = None,
    out_file: Annotated[Path, typer.Option("--out", help="Baseline CSV to write.")] =
        Path("results/baseline.csv"),
    device: DeviceOpt = Device.cpu,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Record a baseline (mean, spread, steps to target per job variant and loss)."""
    from losscli.check import check_baseline, make_baseline
    from losscli.results import WriteError

    base = make_baseline(_runs(run_dir, suite, None, device, quiet, [], threads))
    check_baseline(base, f"a baseline of {run_dir or suite}")
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        base.to_csv(out_file, index=False)
    except OSError as exc:
        raise WriteError(out_file, exc.strerror or str(exc)) from None
    err.print(f"baseline: {len(base)} rows → {out_file}", highlight=False)


@handle_errors
def check(
    run_dir: RunDir = None,
    suite: SuiteOpt = None,
    baseline_file: Annotated[Path, typer.Option("--baseline", help="Baseline CSV.")] =
        Path("results/baseline.csv"),
    junit: Annotated[Path | None, typer.Option(help="Also write JUnit XML here.")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Run directory for --suite (default: a fresh temporary one).")] = None,
    device: DeviceOpt = Device.cpu,
    plugin: PluginOpt = None,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compare runs with a baseline; exit 1 on a regression in quality or convergence.

    Quality per (job variant, loss): a one-sided t-test of the current seeds against the
    baseline's (its seed spread) at a 1 % false-alarm rate (rows without seed spread: worse
    by more than 0.005); the table states the smallest drop each row would catch (80 %
    power). Steps to target may grow by 25 % plus one eval interval; every seed that
    reached the target must still.
    """
    from losscli.check import compare, read_baseline, write_junit
    from losscli.render import verdict_views

    base = read_baseline(baseline_file)
    runs = _runs(run_dir, suite, out_dir, device, quiet, plugin or [], threads)
    verdicts = compare(runs, base)
    for view in verdict_views(verdicts, f"check against {baseline_file}"):
        out.print(view, crop=False)
    if junit:
        write_junit(verdicts, junit)
    bad = [v for v in verdicts if not v.ok]
    if bad:
        err.print(f"{len(bad)} of {len(verdicts)} regressed", style="red", highlight=False)
        raise typer.Exit(EXIT_FAILED)
    err.print(f"all {len(verdicts)} ok: no regression at a 1 % false-alarm rate (each row "
              "states the smallest drop it would catch)", style="green", highlight=False)

