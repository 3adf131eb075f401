"""``losscli sweep SUITE.toml``: a grid of jobs × losses × seeds, resumable."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from losscli.cli.common import EXIT_FAILED, Device, OutputFormat, Vectorise, err, handle_errors, out
from losscli.cli.running import RunProgress, render_summary, report_errors, run_meta


@handle_errors
def sweep(
    suite_file: Annotated[Path, typer.Argument(help="Suite TOML (see tasks/quick.toml).",
                                               show_default=False)],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (default results/runs/<suite name>). Re-running the "
        "same command resumes: finished runs are skipped.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes; CPU threads are "
                                         "divided among them.")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads per process "
                                                "(default: torch's).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the validated plan and exit.")] = False,
    device: Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")] =
        Device.auto,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast on CUDA (loss in fp32).")] = False,
    vectorise: Annotated[Vectorise, typer.Option(
        help="Train a loss's seeds together as one vmapped model: auto (when a short "
        "calibration says it is faster), always, never.")] = Vectorise.auto,
    plugin: Annotated[list[str] | None, typer.Option(
        help="Module or .py file registering extra losses (repeatable).")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Summary on stdout.")] =
        OutputFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Run every job × loss × seed of a suite; the whole plan is checked before training.

    Each finished run is appended to the run directory at once, so a sweep killed at any
    moment loses at most the run in flight. Under ``torchrun --nproc-per-node N -m losscli
    sweep ...`` each rank runs its share of the plan and writes its own shard.
    """
    import torch

    from losscli.results import summarize

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        result = run_suite(suite_file, out_dir, workers=workers, device=device, bf16=bf16,
                           plugins=plugin or [], quiet=quiet, dry_run=dry_run,
                           vectorise=vectorise.value)
    finally:
        torch.set_num_threads(previous)  # in-process callers (tests) keep their setting
    if result is None:  # a dry run, or a rank other than 0
        return
    plan, runs, root = result
    jobs = list({r.job.name: r.job for r in plan.runs}.values())
    render_summary(summarize(runs, {j.name: j.maximize for j in jobs}), jobs, plan, fmt, root)
    if report_errors(runs):
        raise typer.Exit(EXIT_FAILED)


def run_suite(suite_file: Path, out_dir: Path | None, *, workers: int = 1,
              device: Device = Device.auto, bf16: bool = False, plugins: list[str] = (),
              quiet: bool = False, dry_run: bool = False, vectorise: str = "auto"):
    """Plan, resume and execute a suite; on rank 0 return (plan, its runs, run dir)."""
    from losscli.results import ResultStore, read_runs
    from losscli.suite import load_suite
    from losscli.sweep import execute, make_plan, shard

    _load_plugins(plugins)
    suite = load_suite(suite_file)
    rank, world, dev = _distributed(_device(device))
    plan = make_plan(suite.requests, dev, bf16)
    root = out_dir or Path("results") / "runs" / suite.name
    if dry_run:
        if rank == 0:
            out.print(_plan_table(plan, root))
        return None
    store = ResultStore(root, shard=f"rank{rank}" if world > 1 else None)
    mine = shard(plan.runs, rank, world)
    done = store.finished_keys()
    if rank == 0:
        store.write_meta(run_meta(plan, dev, suite=str(suite_file), world_size=world,
                                  workers=workers))
        if done & set(plan.keys()):
            err.print(f"resuming: {len(done & set(plan.keys()))} of {len(plan.runs)} runs "
                      "already finished", highlight=False)
    skipped = sum(r.key in done for r in mine)
    with RunProgress(len(mine), quiet or rank > 0, skipped=skipped) as progress:
        execute(mine, store, workers=workers, plugins=plugins, on_start=progress.start,
                on_step=progress.step, on_done=progress.done, vectorise=vectorise)
    _barrier(world)
    if rank != 0:
        return None
    runs = read_runs(store.root)
    return plan, runs[runs["run_key"].isin(plan.keys())], store.root


def _load_plugins(plugins: list[str] | None) -> list[str]:
    from losscli.losses import load_plugin

    for p in plugins or []:
        load_plugin(p)
    return list(plugins or [])


def _device(device: Device) -> str:
    from losscli.engine import resolve_device
    from losscli.errors import UsageError

    try:
        return str(resolve_device(device.value))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; gloo on CPU, NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # ranks finish their shards at different times: wait long at the final barrier
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=24))
    return dist.get_rank(), world, "cuda" if cuda else device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _plan_table(plan, root: Path):
    from rich.table import Table

    from losscli.results import ResultStore, variant_label

    done = ResultStore(root).finished_keys() if root.exists() else set()
    table = Table(title=f"plan: {len(plan.runs)} runs → {root}", title_justify="left")
    for col in ("job", "loss", "seeds", "steps", "batch", "lr", "optimizer", "finished"):
        table.add_column(col)
    groups: dict[tuple, list] = {}
    for r in plan.runs:
        label = variant_label(r.job.name, r.job.options_json, r.cfg.steps)
        groups.setdefault((label, r.loss.spec), []).append(r)
    for (label, spec), runs in groups.items():
        cfg = runs[0].cfg
        table.add_row(label, spec, ",".join(str(r.seed) for r in runs), str(cfg.steps),
                      str(cfg.batch_size), f"{cfg.lr:g}", cfg.optimizer,
                      f"{sum(r.key in done for r in runs)}/{len(runs)}")
    return table
