"""``losscli show RUN_DIR`` and ``losscli diff RUN_A RUN_B``: read run directories again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import EXIT_FAILED, FormatOpt, OutputFormat, err, handle_errors, out
from losscli.cli.running import ColumnsOpt, PerSeedOpt, WideOpt
from losscli.errors import UsageError


def _read(run_dir: Path):
    from losscli.results import read_runs

    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory")
    if not any(run_dir.glob("runs*.csv")):
        raise UsageError(f"{run_dir} holds no runs.csv")
    return read_runs(run_dir)


@handle_errors
def show(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", show_default=False,
                                            help="A run directory (train or sweep output).")],
    fmt: FormatOpt = OutputFormat.table,
    per_seed: PerSeedOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
) -> None:
    """Print a run directory's summary again (nothing is retrained).

    The table `train` and `sweep` print, from RUN_DIR's runs.csv and history.csv, or its
    CSV or JSON; `--per-seed` gives one row per run."""
    from losscli.cli.running import show_runs, table_columns

    runs = _read(run_dir)
    metrics = {m for cell in runs["test_metrics"] if isinstance(cell, str) and cell
               for m in json.loads(cell)}
    show_runs(runs, run_dir, fmt, columns=table_columns(wide, columns, metrics),
              per_seed=per_seed)


@handle_errors
def diff(
    run_a: Annotated[Path, typer.Argument(metavar="RUN_A", show_default=False,
                                          help="The run directory to compare against.")],
    run_b: Annotated[Path, typer.Argument(metavar="RUN_B", show_default=False,
                                          help="The run directory to judge.")],
) -> None:
    """Compare two run directories per (job variant, loss); exit 1 where RUN_B is worse.

    RUN_A is the baseline and the rule is `check`'s (`losscli check --help`).
    Pairs found in one directory only are named on stderr."""
    from losscli.check import compare, make_baseline
    from losscli.render import verdict_views

    runs_a, runs_b = _read(run_a), _read(run_b)
    base, keys_b = make_baseline(runs_a), _keys(runs_b)
    keys_a = dict(zip(zip(base["variant"], base["loss_key"], strict=True), base["loss"],
                      strict=True))
    if not keys_a.keys() & keys_b.keys():
        raise UsageError(f"{run_a} and {run_b} share no (job variant, loss): a variant is "
                         "every setting that changes the numbers (`losscli show` names them)")
    shared = [k in keys_b for k in zip(base["variant"], base["loss_key"], strict=True)]
    verdicts = compare(runs_b, base[shared])
    for view in verdict_views(verdicts, f"{run_b} against {run_a}"):
        out.print(view, crop=False)
    for where, keys, other in ((run_a, keys_a, keys_b), (run_b, keys_b, keys_a)):
        for variant, loss_key in keys.keys() - other.keys():
            err.print(f"only in {where}: {keys[variant, loss_key]} · {variant}",
                      highlight=False, markup=False)
    bad = [v for v in verdicts if not v.ok]
    if bad:
        err.print(f"{len(bad)} of {len(verdicts)} worse in {run_b}", style="red",
                  highlight=False)
        raise typer.Exit(EXIT_FAILED)
    err.print(f"all {len(verdicts)} ok: no regression in {run_b} at a 1 % false-alarm rate",
              style="green", highlight=False)


def _keys(runs) -> dict[tuple[str, str], str]:
    """(variant, canonical loss) → the loss as written, for each group of runs."""
    from losscli.results import groups

    return {key: str(g["loss"].iloc[0]) for key, g in groups(runs)}
