"""``losscli train``: every loss × every seed on one job, everything else fixed."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import EXIT_FAILED, Device, OutputFormat, Vectorise, handle_errors
from losscli.cli.running import RunProgress, render_summary, report_errors, run_meta

BUDGET = "Budget (defaults: the job's tasks/<job>.toml)"
DATA = "Data"
OUTPUT = "Output"
JOB = "Job options (see `losscli list tasks`)"


@handle_errors
def train(
    task: Annotated[str, typer.Option("--task", "-t", help="Job: mnist, fashion (see "
                                      "`losscli list tasks`).")] = "mnist",
    loss: Annotated[list[str] | None, typer.Option(
        "--loss", "-l", help="Loss spec, repeatable: 'ce', 'focal:gamma=2', 'dice+0.5*ce'. "
        "Default: the job's default set.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per loss (first..first+N-1).")] = 1,
    first_seed: Annotated[int, typer.Option(min=0, help="The first seed.")] = 0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs.",
                                               rich_help_panel=BUDGET)] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (wins over "
                                              "--epochs).", rich_help_panel=BUDGET)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, rich_help_panel=BUDGET)] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate.",
                                             rich_help_panel=BUDGET)] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | adamw | sgd (momentum 0.9).",
                                                  rich_help_panel=BUDGET)] = None,
    weight_decay: Annotated[float | None, typer.Option(min=0.0, rich_help_panel=BUDGET)] = None,
    eval_every: Annotated[int | None, typer.Option(min=1, help="Steps between evals "
                                                   "(default: every epoch).",
                                                   rich_help_panel=BUDGET)] = None,
    device: Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")] =
        Device.auto,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast on CUDA (the loss stays fp32).")] =
        False,
    data_dir: Annotated[Path | None, typer.Option(
        help="torchvision-layout data root (DIR/MNIST/raw, DIR/FashionMNIST/raw). Without "
        "it: mnist uses the embedded real 5k subset, fashion uses Debian's "
        "dataset-fashion-mnist files.", rich_help_panel=DATA)] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download into --data-dir "
                                           "(online only).", rich_help_panel=DATA)] = False,
    outliers: Annotated[float | None, typer.Option(
        help="reg: fraction of training targets replaced by gross one-sided outliers.",
        rich_help_panel=JOB)] = None,
    noise: Annotated[str | None, typer.Option(
        help="reg: noise distribution (gaussian | student_t | laplace).",
        rich_help_panel=JOB)] = None,
    csv_file: Annotated[Path | None, typer.Option(
        "--csv", help="reg: your own table; with --target COLUMN.", rich_help_panel=JOB)] = None,
    target: Annotated[str | None, typer.Option(help="reg: the column to predict in --csv.",
                                               rich_help_panel=JOB)] = None,
    classes: Annotated[str | None, typer.Option(
        help="det: comma-separated VOC class subset.", rich_help_panel=JOB)] = None,
    max_images: Annotated[int | None, typer.Option(min=1, help="det: image cap.",
                                                   rich_help_panel=JOB)] = None,
    image_size: Annotated[int | None, typer.Option(min=8, help="det/seg: image side in px.",
                                                   rich_help_panel=JOB)] = None,
    num_classes: Annotated[int | None, typer.Option(min=1, help="seg: shape classes.",
                                                    rich_help_panel=JOB)] = None,
    fg_fraction: Annotated[float | None, typer.Option(
        help="seg: target foreground fraction (class imbalance).", rich_help_panel=JOB)] = None,
    binary: Annotated[bool | None, typer.Option(
        "--binary/--no-binary", help="seg: binary foreground/background variant.",
        rich_help_panel=JOB, show_default=False)] = None,
    pos_ratio: Annotated[float | None, typer.Option(
        help="imbalanced: positives per negative (e.g. 0.02 for 1:50).",
        rich_help_panel=JOB)] = None,
    sigma: Annotated[float | None, typer.Option(
        help="denoise: Gaussian noise sigma on [0, 1] images.", rich_help_panel=JOB)] = None,
    opt: Annotated[list[str] | None, typer.Option(
        "--opt", help="Any other job option as key=value (repeatable).",
        rich_help_panel=JOB)] = None,
    vectorise: Annotated[Vectorise, typer.Option(
        help="Train a loss's seeds together as one vmapped model: auto (when a short "
        "calibration says it is faster), always, never.")] = Vectorise.auto,
    plugin: Annotated[list[str] | None, typer.Option(
        help="Module or .py file registering extra losses (repeatable).")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (default results/runs/<time>-<task>).",
        rich_help_panel=OUTPUT)] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Summary on stdout.",
                                              rich_help_panel=OUTPUT)] = OutputFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.",
                                        rich_help_panel=OUTPUT)] = False,
) -> None:
    """Train one job with each loss for each seed and print a comparison table.

    Everything but the loss is fixed: data, model, optimizer, budget and seeds. Results go
    to a run directory (runs.csv, history.csv, meta.json); the summary (mean ± std over
    seeds, ranked by the job's primary metric) goes to stdout.
    """
    from losscli.engine import resolve_device
    from losscli.errors import UsageError
    from losscli.losses import load_plugin
    from losscli.results import ResultStore, read_runs, summarize
    from losscli.suite import JobRequest, Overrides
    from losscli.sweep import execute, make_plan

    for p in plugin or []:
        load_plugin(p)
    try:
        dev = str(resolve_device(device.value))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    overrides = Overrides(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                          optimizer=optimizer, weight_decay=weight_decay, eval_every=eval_every)
    options = {
        "data_dir": str(data_dir) if data_dir else None, "download": download or None,
        "outliers": outliers, "noise": noise, "csv": str(csv_file) if csv_file else None,
        "target_column": target, "classes": classes, "max_images": max_images,
        "image_size": image_size, "num_classes": num_classes, "fg_fraction": fg_fraction,
        "binary": binary, "pos_ratio": pos_ratio, "sigma": sigma, **_key_values(opt or []),
    }
    request = JobRequest(task=task, losses=tuple(loss or ()),
                         seeds=tuple(range(first_seed, first_seed + seeds)),
                         overrides=overrides, options=options)
    plan = make_plan([request], dev, bf16)
    job = plan.runs[0].job
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    store = ResultStore(out_dir or Path("results") / "runs" / f"{stamp}-{job.name}")
    store.write_meta(run_meta(plan, dev))
    with RunProgress(len(plan.runs), quiet) as progress:
        execute(plan.runs, store, on_start=progress.start, on_step=progress.step,
                on_done=progress.done, vectorise=vectorise.value)
    runs = read_runs(store.root)
    summary = summarize(runs, {job.name: job.maximize})
    render_summary(summary, [job], plan, fmt, store.root)
    if report_errors(runs):
        raise typer.Exit(EXIT_FAILED)


def _key_values(items: list[str]) -> dict:
    from losscli.errors import UsageError
    from losscli.losses.registry import parse_value

    parsed = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--opt takes key=value, got {item!r}")
        parsed[key.strip().replace("-", "_")] = parse_value(value.strip())
    return parsed


