"""The one run path: a plan (validated before anything trains), executed into a store.

``train``, ``sweep``, ``check`` and ``baseline`` all come here: they turn their arguments
into ``JobRequest``s and call ``run`` (or ``make_plan`` for a dry run); this module plans,
resumes, writes ``meta.json``, executes and reads the results back. Execution is
resumable: a run whose key is already in the store is skipped. Runs execute in this
process, in a pool of worker processes (``workers``), or as one shard of a ``torchrun``
launch (each rank takes every world_size-th run and writes its own shard).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from losscli.engine import RunOutcome, run_one, run_seeds
from losscli.errors import UsageError
from losscli.jobs import Job, JobData, create_job
from losscli.losses import Loss, create_loss, list_losses, load_plugin
from losscli.losses.image import MissingWeightsError
from losscli.results import (
    ResultStore,
    RunResult,
    best_value,
    curve_auc,
    read_runs,
    steps_to_target,
)
from losscli.settings import Settings
from losscli.suite import JobRequest
from losscli.vectorised import Calibration

__all__ = ["Plan", "Progress", "RunSpec", "SweepResult", "compatible_losses", "execute",
           "load_plugins", "make_plan", "run", "run_suite", "versions"]


@dataclass(frozen=True)
class RunSpec:
    job: Job
    loss: Loss
    seed: int
    cfg: Settings  # resolved: every field set

    @property
    def key(self) -> str:
        """Stable identity: everything that changes the numbers, hashed."""
        ident = {
            "job": self.job.name,
            "options": {k: str(v) for k, v in sorted(self.job.options.items())},
            "loss": self.loss.key,
            "seed": self.seed,
            # the device type, not its index: rank 3's cuda:3 runs the same run as cuda:0
            "cfg": {**self.cfg.identity(), "device": self.cfg.device.split(":")[0]},
        }
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """Every run, the data they train on (loaded once, on the run device) and the
    vectorised-seeds calibration shared by the plan's runs."""

    runs: list[RunSpec]
    data: dict[tuple, JobData]  # job data key → its data
    calibration: Calibration = field(default_factory=Calibration)

    def keys(self) -> list[str]:
        return [r.key for r in self.runs]

    @property
    def sources(self) -> dict[tuple, str]:
        return {k: d.source for k, d in self.data.items()}

    def jobs(self) -> list[Job]:
        return list({r.job.name: r.job for r in self.runs}.values())


class Progress(Protocol):
    """What the caller is told while a plan executes (the CLI draws bars from it)."""

    def start(self, spec: RunSpec) -> None: ...
    def step(self, step: int) -> None: ...
    def done(self, spec: RunSpec, result: RunResult) -> None: ...


class _Silent:
    def start(self, spec: RunSpec) -> None: ...
    def step(self, step: int) -> None: ...
    def done(self, spec: RunSpec, result: RunResult) -> None: ...


def versions() -> str:
    import torchvision

    import losscli

    return (f"losscli={losscli.__version__};torch={torch.__version__};"
            f"torchvision={torchvision.__version__};python={platform.python_version()}")


def load_plugins(plugins: Sequence[str]) -> list[str]:
    for p in plugins:
        load_plugin(p)
    return list(plugins)


# --------------------------------------------------------------------------- planning


def compatible_losses(job: Job) -> list[str]:
    return [i.name for i in list_losses() if job.incompatibility(i) is None]


def _loss_problems(job: Job, spec: str) -> tuple[Loss | None, list[str]]:
    try:
        loss = create_loss(spec)
    except UsageError as exc:
        return None, [f"--loss {spec}: {exc}"]
    problems = [f"--loss {spec}: {term.info.name}: {why}" for term in loss.terms
                if (why := job.incompatibility(term.info))]
    if not problems:
        output, target = job.probe()
        try:  # bad parameter values (e.g. gamma=-1) fail here, not halfway through a sweep
            job.bind(loss)(output, target)
        except (ValueError, TypeError, MissingWeightsError) as exc:
            problems.append(f"--loss {spec}: {exc}")
    return loss, problems


def _check_request(req: JobRequest, prefix: str) -> tuple[Job | None, list[Loss], list[str]]:
    """The job and losses of one request, or the problems that stop it."""
    try:
        job = create_job(req.task, **req.options)
    except UsageError as exc:
        return None, [], [prefix + str(exc)]
    problems, losses = [], []
    for spec in dict.fromkeys(req.losses or job.task.losses):  # a repeated loss runs once
        loss, errs = _loss_problems(job, spec)
        problems += [prefix + e for e in errs]
        losses.append(loss)
    if problems:
        problems.append(f"{prefix}losses that apply to {job.name}: "
                        + ", ".join(compatible_losses(job)))
    return job, losses, problems


def make_plan(requests: Sequence[JobRequest], device: str = "cpu", bf16: bool = False
              ) -> Plan:
    """Resolve names, load the data and check every loss against its job before training.

    Settings are layered: the job's task file, then the request's (suite defaults, suite
    entry or command line), then ``device`` and ``bf16``.

    Raises:
        UsageError: naming every problem found (unknown names, incompatible pairs, bad values).
    """
    if bf16 and not device.startswith("cuda"):
        raise UsageError("--bf16 needs --device cuda")
    checked, problems = [], []
    for req in requests:
        job, losses, found = _check_request(req, f"[{req.task}] " if len(requests) > 1 else "")
        problems += found
        if job is not None:
            checked.append((req, job, losses))
    if problems:
        raise UsageError("\n".join(problems))
    runs, data = [], {}
    for req, job, losses in checked:
        if job.data_key not in data:  # a data error (e.g. missing files) is a usage error too
            data[job.data_key] = job.load_data().to(device)
        cfg = job.settings(data[job.data_key], Settings(device=device, bf16=bf16)
                           .over(req.settings))
        runs += [RunSpec(job, loss, seed, cfg) for loss in losses for seed in req.seeds]
    return Plan(runs=runs, data=data)


# --------------------------------------------------------------------------- results


def result_of(spec: RunSpec, data: JobData, out: RunOutcome, together: int = 1) -> RunResult:
    """A finished run as its runs.csv row."""
    job, name = spec.job, spec.job.primary_metric
    later = out.evals[1:] or out.evals  # "best" is over the evals after step 0
    finals = later[-1][1] if later else {}
    best = {k: best_value([m[k] for _, m in later], job.maximizes(k)) for k in finals}
    reached = steps_to_target([(s, m[name]) for s, m in out.evals], job.task.target,
                              job.maximize)
    cfg = spec.cfg
    return RunResult(
        run_key=spec.key, job=job.name, job_options=job.options_json, loss=spec.loss.spec,
        loss_key=spec.loss.key, seed=spec.seed, device=cfg.device, status=out.status,
        error=out.error, primary_metric=name, maximize=job.maximize,
        primary_best=best.get(name, math.nan), primary_final=finals.get(name, math.nan),
        target=job.task.target, steps_to_target=reached if out.status == "ok" else None,
        curve_auc=curve_auc([(s, m[name]) for s, m in out.evals], cfg.steps),
        final_train_loss=out.train_loss[-1][1] if out.train_loss else math.nan,
        steps=cfg.steps, eval_every=cfg.eval_every, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay, bf16=cfg.bf16, threads=torch.get_num_threads(),
        train_seconds=round(out.train_seconds, 4),
        samples_per_s=out.timed_samples / out.train_seconds if out.train_seconds else math.nan,
        loss_ms_per_step=out.loss_ms_per_step, peak_mem_mb=round(out.peak_mem_mb, 1),
        seeds_together=together, final_metrics=finals, best_metrics=best,
        data_source=data.source, versions=versions(),
        finished_at=datetime.now(timezone.utc).isoformat())


def history_of(out: RunOutcome) -> list[tuple[int, str, str, float]]:
    rows = [(s, "train", "loss", v) for s, v in out.train_loss]
    rows += [(s, "test", k, v) for s, m in out.evals for k, v in m.items()]
    return sorted(rows, key=lambda r: r[0])


# --------------------------------------------------------------------------- execution


def _seed_groups(runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Runs that differ only in the seed, in plan order."""
    groups: dict[tuple, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault((r.job.data_key, r.job.options_json, r.loss.key, r.cfg), []).append(r)
    return list(groups.values())


def shard(runs: list[RunSpec], rank: int, world_size: int) -> list[RunSpec]:
    """This rank's share of the plan: every world_size-th run, in plan order."""
    return runs[rank::world_size]


def _stack(plan: Plan, group: list[RunSpec], data: JobData, vectorise: str) -> bool:
    """Whether the seeds of ``group`` train as one vmapped model (see ``vectorised``)."""
    if len(group) < 2 or vectorise == "never":
        return False
    first = group[0]
    return vectorise == "always" or plan.calibration.choose(
        first.job, data, first.loss, first.cfg, [s.seed for s in group])


def _run_group(plan: Plan, group: list[RunSpec], store: ResultStore, vectorise: str,
               progress: Progress) -> None:
    """The seeds of one (job, loss, settings): stacked when allowed and faster (each row
    written when the stack finishes), else one by one (each row written as its run
    finishes)."""
    first = group[0]
    data = plan.data[first.job.data_key]
    if _stack(plan, group, data, vectorise):
        progress.start(first)
        outs = run_seeds(first.job, data, first.loss, first.cfg, [s.seed for s in group],
                         vectorised=True, on_step=progress.step)
        for spec, out in zip(group, outs, strict=True):
            _write(store, progress, spec, result_of(spec, data, out, len(group)), out)
        return
    for spec in group:
        progress.start(spec)
        out = run_one(spec.job, data, spec.loss, spec.cfg, spec.seed, progress.step)
        _write(store, progress, spec, result_of(spec, data, out), out)


def _write(store: ResultStore, progress: Progress, spec: RunSpec, result: RunResult,
           out: RunOutcome) -> None:
    store.append(result, history_of(out))
    progress.done(spec, result)


def execute(plan: Plan, store: ResultStore, *, runs: Sequence[RunSpec] | None = None,
            workers: int = 1, plugins: Sequence[str] = (), vectorise: str = "auto",
            progress: Progress | None = None) -> None:
    """Run every run of ``runs`` (default: the plan's) not in ``store`` yet; append each
    as it finishes."""
    progress = progress or _Silent()
    done = store.finished_keys()
    todo = [r for r in (plan.runs if runs is None else runs) if r.key not in done]
    if workers > 1 and len(todo) > 1:
        _execute_pool(todo, store, workers, plugins, progress)
        return
    for group in _seed_groups(todo):
        _run_group(plan, group, store, vectorise, progress)


_WORKER_DATA: dict[tuple, JobData] = {}  # in a pool worker: its data, loaded once


def _init_worker(threads: int, plugins: Sequence[str]) -> None:
    torch.set_num_threads(threads)
    load_plugins(plugins)


def run_spec(spec: RunSpec) -> tuple[RunResult, list]:
    """One run → its row and history rows (what a pool worker does)."""
    key = (spec.job.data_key, spec.cfg.device)
    if key not in _WORKER_DATA:
        _WORKER_DATA[key] = spec.job.load_data().to(spec.cfg.device)
    data = _WORKER_DATA[key]
    out = run_one(spec.job, data, spec.loss, spec.cfg, spec.seed)
    return result_of(spec, data, out), history_of(out)


def _execute_pool(todo: list[RunSpec], store: ResultStore, workers: int,
                  plugins: Sequence[str], progress: Progress) -> None:
    """A pool of worker processes, CPU threads divided among them; this process writes."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, tuple(plugins))) as pool:
        pending, queue = {}, list(todo)
        while queue or pending:
            while queue and len(pending) < workers:
                spec = queue.pop(0)
                progress.start(spec)
                pending[pool.submit(run_spec, spec)] = spec
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = pending.pop(fut)
                result, history = fut.result()
                store.append(result, history)
                progress.done(spec, result)


# --------------------------------------------------------------------------- the run path


@dataclass
class SweepResult:
    plan: Plan
    runs: Any  # pandas.DataFrame of the plan's runs (read back from the store)
    root: Path


def run(requests: Sequence[JobRequest], root: Path, *, device: str = "cpu",
        bf16: bool = False, workers: int = 1, plugins: Sequence[str] = (),
        vectorise: str = "auto", progress: Callable[[int, int], Any] | None = None,
        meta: dict[str, Any] | None = None) -> SweepResult | None:
    """Plan, resume and execute; on rank 0 return the plan, its runs and the run directory.

    ``progress(total, already_done)`` makes a context manager that yields a ``Progress``.
    Under torchrun each rank runs its share and writes its own shard; ranks other than 0
    return None.
    """
    rank, world, device = _distributed(device)
    plan = make_plan(requests, device, bf16)
    store = ResultStore(root, shard=f"rank{rank}" if world > 1 else None)
    mine = shard(plan.runs, rank, world)
    done = store.finished_keys()
    if rank == 0:
        store.write_meta(run_meta(plan, device, world_size=world, workers=workers,
                                  **(meta or {})))
    with (progress or _no_progress)(len(mine), sum(r.key in done for r in mine)) as bars:
        execute(plan, store, runs=mine, workers=workers, plugins=plugins,
                vectorise=vectorise, progress=bars)
    _barrier(world)
    if rank != 0:
        return None
    runs = read_runs(store.root)
    return SweepResult(plan, runs[runs["run_key"].isin(plan.keys())], store.root)


def run_suite(suite_file: Path, out_dir: Path | None = None, **kwargs: Any
              ) -> SweepResult | None:
    """``run`` for a suite file; the run directory defaults to results/runs/<suite name>."""
    from losscli.suite import load_suite

    suite = load_suite(suite_file)
    root = out_dir or Path("results") / "runs" / suite.name
    return run(suite.requests, root, meta={"suite": str(suite_file)}, **kwargs)


class _no_progress:  # noqa: N801  (used like a function that makes a context manager)
    def __init__(self, total: int, done: int):
        pass

    def __enter__(self) -> Progress:
        return _Silent()

    def __exit__(self, *exc) -> None:
        return None


def run_meta(plan: Plan, device: str, **extra: Any) -> dict[str, Any]:
    """meta.json: the command line, versions, device, git commit, what was planned."""
    return {
        "command": shlex.join(["losscli", *sys.argv[1:]]),
        "jobs": sorted({r.job.name for r in plan.runs}),
        "job_options": {r.job.name: r.job.options for r in plan.runs},
        "data_sources": {k[0]: v for k, v in plan.sources.items()},
        "losses": sorted({r.loss.spec for r in plan.runs}),
        "seeds": sorted({r.seed for r in plan.runs}),
        "planned_runs": len(plan.runs),
        "config": {r.job.name: r.cfg.identity() for r in plan.runs},
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


def _distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; gloo on CPU, NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
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
