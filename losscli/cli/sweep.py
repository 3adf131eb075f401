"""``losscli sweep SUITE.toml``: a grid of jobs × losses × seeds, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import (
    Bf16Opt,
    Device,
    DeviceOpt,
    FormatOpt,
    OutputFormat,
    PluginOpt,
    QuietOpt,
    Vectorise,
    VectoriseOpt,
    handle_errors,
    out,
)
from losscli.cli.running import ColumnsOpt, PerSeedOpt, ThreadsOpt, TuneStorageOpt, WideOpt


def _metric_names(requests) -> set[str]:
    """The test metrics of the suite's jobs (what ``--columns`` may name). A job that
    cannot be made is skipped: the plan check names every problem at once (exit 2)."""
    from losscli.errors import UsageError
    from losscli.jobs import create_job

    names: set[str] = set()
    for r in requests:
        try:
            names.update(create_job(r.task, **r.options).test_metric_names)
        except UsageError:
            continue
    return names


@handle_errors
def sweep(
    suite_file: Annotated[Path, typer.Argument(metavar="SUITE.toml", show_default=False,
                                               help="Suite TOML (see tasks/quick.toml).")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (default results/runs/<suite name>). Re-running the "
        "same command resumes: finished runs are skipped.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes; CPU threads are "
                                         "divided among them.")] = 1,
    threads: ThreadsOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Print the validated plan and exit.")] = False,
    device: DeviceOpt = Device.auto,
    bf16: Bf16Opt = False,
    vectorise: VectoriseOpt = Vectorise.auto,
    tune_storage: TuneStorageOpt = None,
    plugin: PluginOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    per_seed: PerSeedOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run every job × loss × seed of a suite; the whole plan is checked before training.

    Each finished run is appended to the run directory at once, so a sweep killed at any
    moment loses at most the run in flight. Under `torchrun --nproc-per-node N -m losscli
    sweep ...` each rank runs its share of the plan and writes its own shard.
    """
    from losscli.cli.common import cli_device
    from losscli.cli.running import cpu_threads, finish, loading, progress_factory, table_columns

    with loading(quiet):
        from losscli.suite import load_suite
        from losscli.sweep import load_plugins, make_plan, run_suite

    plugins = load_plugins(plugin or [])
    suite = load_suite(suite_file)
    shown = table_columns(wide, columns, _metric_names(suite.requests))
    if dry_run:
        with loading(quiet, "checking the plan, loading data"):
            plan = make_plan(suite.requests, cli_device(device), bf16)
        if tune_storage or suite.tune_storage:
            from losscli.tuning_storage import check_url

            check_url(tune_storage or suite.tune_storage,
                      out_dir or Path("results") / "runs" / suite.name)
        out.print(_plan_table(plan, out_dir or Path("results") / "runs" / suite.name))
        return
    with cpu_threads(threads):
        result = run_suite(suite_file, out_dir, device=cli_device(device), bf16=bf16,
                           workers=workers, plugins=plugins, vectorise=vectorise.value,
                           progress=progress_factory(quiet), tune_storage=tune_storage)
    if result is None:  # a rank other than 0
        return
    finish(result, fmt, per_seed=per_seed, columns=shown)


def _plan_table(plan, root: Path):
    from rich.table import Table

    from losscli.results import ResultStore

    done = ResultStore(root).finished_keys() if root.exists() else set()
    table = Table(title=f"plan: {len(plan.runs)} runs → {root}", title_justify="left")
    for col in ("job", "loss", "seeds", "steps", "batch", "lr", "optimizer", "finished"):
        table.add_column(col)
    groups: dict[tuple, list] = {}
    for r in plan.runs:
        groups.setdefault((r.job.name, r.job.options_json, r.cfg, r.loss.spec), []).append(r)
    for (name, options, cfg, spec), runs in groups.items():
        label = name + (f" {options}" if options != "{}" else "")
        table.add_row(label, spec, ",".join(str(r.seed) for r in runs), str(cfg.steps),
                      str(cfg.batch_size), f"{cfg.lr:g}", cfg.optimizer,
                      f"{sum(r.key in done for r in runs)}/{len(runs)}")
    return table
