"""``losscli check`` and ``losscli baseline``: CI guards on quality and convergence."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

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
from losscli.errors import UsageError

RunDir = Annotated[Path | None, typer.Argument(
    help="A run directory to read (instead of running --suite).", show_default=False)]
SuiteOpt = Annotated[Path | None, typer.Option(
    "--suite", help="Run this suite first (e.g. tasks/ci.toml).")]


def _runs(run_dir: Path | None, suite: Path | None, out_dir: Path | None, device: Device,
          quiet: bool, plugins: list[str]):
    """The runs to judge: read from ``run_dir``, or produced by running ``suite``."""
    from losscli.cli.common import cli_device
    from losscli.cli.running import progress_factory
    from losscli.results import read_runs
    from losscli.sweep import load_plugins, run_suite

    if (run_dir is None) == (suite is None):
        raise UsageError("give either a RUN_DIR or --suite SUITE.toml")
    if suite is not None:
        root = out_dir or Path(tempfile.mkdtemp(prefix="losscli-check-"))
        return run_suite(suite, root, device=cli_device(device),
                         plugins=load_plugins(plugins), progress=progress_factory(quiet)).runs
    if not (run_dir / "runs.csv").exists() and not list(run_dir.glob("runs.*.csv")):
        raise UsageError(f"{run_dir} holds no runs.csv")
    return read_runs(run_dir)


@handle_errors
def baseline(
    run_dir: RunDir = None,
    suite: SuiteOpt = None,
    out_file: Annotated[Path, typer.Option("--out", help="Baseline CSV to write.")] =
        Path("results/baseline.csv"),
    device: DeviceOpt = Device.cpu,
    quiet: QuietOpt = False,
) -> None:
    """Record a baseline (mean, spread, steps to target per job variant and loss)."""
    from losscli.check import make_baseline
    from losscli.results import WriteError

    base = make_baseline(_runs(run_dir, suite, None, device, quiet, []))
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
    quiet: QuietOpt = False,
) -> None:
    """Compare runs with a baseline; exit 1 on a regression in quality or convergence.

    Tolerance per (job variant, loss): the mean over seeds may be worse by
    max(0.005, 1 % of the baseline mean, 3 × the baseline's seed std); steps to target may
    grow by 25 % plus one eval interval; every seed that reached the target must still.
    """
    from losscli.check import compare, read_baseline, write_junit

    base = read_baseline(baseline_file)
    runs = _runs(run_dir, suite, out_dir, device, quiet, plugin or [])
    verdicts = compare(runs, base)
    out.print(_table(verdicts, baseline_file))
    if junit:
        write_junit(verdicts, junit)
    bad = [v for v in verdicts if not v.ok]
    if bad:
        err.print(f"{len(bad)} of {len(verdicts)} regressed", style="red", highlight=False)
        raise typer.Exit(EXIT_FAILED)
    err.print(f"all {len(verdicts)} within tolerance", style="green", highlight=False)


def _table(verdicts, baseline_file: Path) -> Table:
    from losscli.render import fmt_num

    table = Table(title=f"check against {baseline_file}", title_justify="left")
    for col in ("variant", "loss", "metric", "baseline", "current", "Δ", "tolerance",
                "steps→target", "verdict"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        verdict = Text("ok", style="green") if v.ok else Text(
            "REGRESSION: " + "; ".join(v.problems), style="bold red")
        table.add_row(
            v.variant, Text(v.loss), v.metric,
            f"{fmt_num(v.base_mean)} ± {fmt_num(v.base_std)}",
            f"{fmt_num(v.cur_mean)} ± {fmt_num(v.cur_std)}", f"{v.delta:+.4f}",
            fmt_num(v.tol), f"{fmt_num(v.base_steps, 0)} → {fmt_num(v.cur_steps, 0)}", verdict)
    return table
