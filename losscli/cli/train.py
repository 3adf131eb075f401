"""``losscli train``: every loss × every seed on one job, everything else fixed."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
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
    cli_device,
    handle_errors,
)
from losscli.cli.help import TASKS
from losscli.cli.running import ColumnsOpt, PerSeedOpt, ThreadsOpt, TuneStorageOpt, WideOpt

BUDGET = "Budget (defaults: the job's tasks/<job>.toml)"
TUNE_HELP = (
    "Tune every loss equally on the validation split first (repeatable): 'lr' (7 rates "
    "over 3 decades around the job's), 'lr=[1e-4,1e-3]', 'focal:gamma=[0.5,1,2,5]', "
    "'trials=N', 'first_rung=N' (first comparison at budget/N, default 9; 1: no halving). "
    "Synchronous successive halving; the winner trains --seeds fresh seeds.")


class Select(str, Enum):
    final = "final"
    best = "best"


EpochsOpt = Annotated[float | None, typer.Option(min=0.001, help="Epochs.",
                                                rich_help_panel=BUDGET)]
StepsOpt = Annotated[int | None, typer.Option(min=1, help="Optimizer steps (wins over --epochs).",
                                              rich_help_panel=BUDGET)]
BatchOpt = Annotated[int | None, typer.Option(min=1, help="Batch size.", rich_help_panel=BUDGET)]
LrOpt = Annotated[float | None, typer.Option(min=0.0, help="Learning rate.",
                                             rich_help_panel=BUDGET)]
OptimizerOpt = Annotated[str | None, typer.Option(help="adam | adamw | sgd (momentum 0.9).",
                                                  rich_help_panel=BUDGET)]
WeightDecayOpt = Annotated[float | None, typer.Option(min=0.0, help="Weight decay.",
                                                      rich_help_panel=BUDGET)]
EvalEveryOpt = Annotated[int | None, typer.Option(
    min=1, help="Steps between evals (default: every epoch).", rich_help_panel=BUDGET)]
JOB_OPTIONS_HELP = (
    "Job options: every option of the job is a flag too, `--NAME VALUE` (`--fg-fraction 0.05`, "
    "`--binary`, `--csv t.csv --target y`), or `--opt NAME=VALUE`. `losscli list tasks JOB` "
    "lists a job's options with their types, defaults and ranges.")


@handle_errors
def train(
    ctx: typer.Context,
    task: Annotated[str, typer.Option("--task", "-t", metavar="<job>", help=f"Job: {TASKS} "
                                      "(`losscli list tasks`).")] = "mnist",
    loss: Annotated[list[str] | None, typer.Option(
        "--loss", "-l", metavar="<spec>", help="Loss spec, repeatable: 'ce', 'focal:gamma=2', "
        "'dice+0.5*ce'. Default: the job's default set.")] = None,
    seeds: Annotated[int, typer.Option(min=1, max=1000,  # losscli.suite.MAX_SEEDS
                                       help="Seeds per loss (first..first+N-1).")] = 1,
    first_seed: Annotated[int, typer.Option(min=0, max=2**31, help="The first seed.")] = 0,
    epochs: EpochsOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    weight_decay: WeightDecayOpt = None,
    eval_every: EvalEveryOpt = None,
    device: DeviceOpt = Device.auto,
    bf16: Bf16Opt = False,
    opt: Annotated[list[str] | None, typer.Option(
        "--opt", metavar="<name=value>", help="A job option as NAME=VALUE (repeatable).")] =
        None,
    tune: Annotated[list[str] | None, typer.Option(metavar="<spec>", help=TUNE_HELP)] = None,
    tune_storage: TuneStorageOpt = None,
    select: Annotated[Select, typer.Option(help="The model the test split scores: the "
                                           "final one, or the best on validation.")] =
        Select.final,
    vectorise: VectoriseOpt = Vectorise.auto,
    plugin: PluginOpt = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (default results/runs/<time>-<task>).")] = None,
    threads: ThreadsOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    per_seed: PerSeedOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train one job with each loss for each seed and print a comparison table.

    Everything but the loss is fixed: data, model, optimizer, budget and seeds. Results go
    to a run directory (runs.csv, history.csv, meta.json); the summary (mean ± std over
    seeds, ranked by the job's primary metric) goes to stdout."""
    from losscli.cli.running import cpu_threads, finish, loading, progress_factory, table_columns

    with loading(quiet):
        from losscli.jobs import create_job
        from losscli.settings import Settings
        from losscli.sweep import load_plugins, run

    settings = Settings(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                        optimizer=optimizer, weight_decay=weight_decay, eval_every=eval_every,
                        select=select.value).check("train")
    plugins = load_plugins(plugin or [])
    request = _request(ctx, task, loss, range(first_seed, first_seed + seeds), settings,
                       opt, tune)
    shown = table_columns(wide, columns,
                          create_job(request.task, **request.options).test_metric_names)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    with cpu_threads(threads):
        result = run([request], out_dir or Path("results") / "runs" / f"{stamp}-{task}",
                     device=cli_device(device), bf16=bf16, plugins=plugins,
                     vectorise=vectorise.value, progress=progress_factory(quiet),
                     tune_storage=tune_storage)
    finish(result, fmt, per_seed=per_seed, columns=shown)


def _request(ctx: typer.Context, task: str, losses, seeds, settings, opt, tune):
    """The one job of a ``train`` plan: its options from the job's own flags and --opt."""
    from losscli.jobs import job_class
    from losscli.suite import JobRequest
    from losscli.tuning import parse_tune

    cls = job_class(task)
    options = {**job_flags(ctx.args, cls, ctx), **key_values(opt or [])}
    return JobRequest(task=cls.name, losses=tuple(losses or ()), settings=settings,
                      seeds=tuple(seeds), options=options, tune=parse_tune(tune or []))


def job_flags(tokens: list[str], cls, ctx: typer.Context) -> dict:
    """The job options given as flags (``--fg-fraction 0.3``), from the tokens typer left."""
    from losscli.options import parse_flags

    shared = [o for p in ctx.command.params for o in getattr(p, "opts", ())]
    return parse_flags(tokens, cls.option_specs, cls.name, shared)


def key_values(items: list[str]) -> dict:
    """``--opt NAME=VALUE`` items (values stay text: the job's declarations convert them)."""
    from losscli.errors import UsageError

    parsed = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--opt takes NAME=VALUE, got {item!r}")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed
