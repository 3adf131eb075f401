"""Many runs: a plan (validated before anything trains) and its execution into a store.

Execution is resumable: a run whose key is already in the store is skipped. Runs execute
in this process, in a pool of worker processes (``workers``), or as one shard of a
``torchrun`` launch (each rank takes every world_size-th run and writes its own shard).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from losscli.engine import OPTIMIZERS, RunOutcome, TrainConfig, choose_vectorised, run_seeds
from losscli.errors import UsageError
from losscli.jobs import Job, JobData, create_job
from losscli.losses import Loss, create_loss, list_losses, load_plugin
from losscli.losses.image import MissingWeightsError
from losscli.results import ResultStore
from losscli.suite import JobRequest, Overrides

__all__ = ["Overrides", "Plan", "RunSpec", "compatible_losses", "execute", "job_data",
           "make_plan", "versions"]


@dataclass(frozen=True)
class RunSpec:
    job: Job
    loss: Loss
    seed: int
    cfg: TrainConfig
    epochs: float

    @property
    def key(self) -> str:
        """Stable identity: everything that changes the numbers, hashed."""
        ident = {
            "job": self.job.name,
            "options": {k: str(v) for k, v in sorted(self.job.options.items())},
            "loss": self.loss.key,
            "seed": self.seed,
            # the device type, not its index: rank 3's cuda:3 runs the same run as cuda:0
            "cfg": {**self.cfg.describe(), "device": self.cfg.device.split(":")[0]},
        }
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plan:
    runs: list[RunSpec]
    sources: dict[tuple, str]  # job data key → where its data came from

    def keys(self) -> list[str]:
        return [r.key for r in self.runs]


_DATA: dict[tuple, JobData] = {}


def job_data(job: Job, device: str) -> JobData:
    """The job's data on ``device``, loaded once per process (runs after the first reuse it)."""
    key = (job.data_key, device)
    if key not in _DATA:
        _DATA[key] = job.load_data().to(device)
    return _DATA[key]


def versions() -> str:
    import torchvision

    import losscli

    return (f"losscli={losscli.__version__};torch={torch.__version__};"
            f"torchvision={torchvision.__version__};python={platform.python_version()}")


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


def _config(job: Job, n_train: int, ov: Overrides, device: str, bf16: bool
            ) -> tuple[TrainConfig, float]:
    b = job.task.budget
    bs = ov.batch_size or b.batch_size
    if bs > n_train:
        raise UsageError(f"batch size {bs} exceeds the {n_train} training samples of {job.name}")
    per_epoch = n_train // bs
    steps = ov.steps or (ov.epochs * per_epoch if ov.epochs else None) or b.steps \
        or (b.epochs or 1) * per_epoch
    optimizer = ov.optimizer or b.optimizer
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    eval_every = ov.eval_every or b.eval_every or (per_epoch if steps >= per_epoch else 0)
    cfg = TrainConfig(steps=steps, batch_size=bs, lr=ov.lr if ov.lr is not None else b.lr,
                      optimizer=optimizer,
                      weight_decay=ov.weight_decay if ov.weight_decay is not None
                      else b.weight_decay,
                      eval_every=eval_every, device=device, bf16=bf16)
    return cfg, steps / per_epoch


def make_plan(requests: Sequence[JobRequest], device: str = "cpu", bf16: bool = False) -> Plan:
    """Resolve names, load the data and check every loss against its job before training.

    Raises:
        UsageError: naming every problem found (unknown names, incompatible pairs, bad values).
    """
    if bf16 and not device.startswith("cuda"):
        raise UsageError("--bf16 needs --device cuda")
    problems: list[str] = []
    checked: list[tuple[JobRequest, Job, list[Loss]]] = []
    for req in requests:
        prefix = f"[{req.task}] " if len(requests) > 1 else ""
        try:
            job = create_job(req.task, **req.options)
        except UsageError as exc:
            problems.append(prefix + str(exc))
            continue
        found, losses = [], []
        for spec in dict.fromkeys(req.losses or job.task.losses):  # a repeated loss runs once
            loss, errs = _loss_problems(job, spec)
            found += errs
            losses.append(loss)
        if found:
            problems += [prefix + p for p in found]
            problems.append(f"{prefix}losses that apply to {job.name}: "
                            + ", ".join(compatible_losses(job)))
        checked.append((req, job, losses))
    if problems:
        raise UsageError("\n".join(problems))
    runs, sources = [], {}
    for req, job, losses in checked:
        data = job_data(job, device)  # a data error (e.g. missing files) is a usage error too
        sources[job.data_key] = data.source
        cfg, epochs = _config(job, data.n_train, req.overrides, device, bf16)
        runs += [RunSpec(job, loss, seed, cfg, epochs) for loss in losses for seed in req.seeds]
    return Plan(runs=runs, sources=sources)


# --------------------------------------------------------------------------- execution


def _row(spec: RunSpec, data: JobData, out: RunOutcome, together: int = 1) -> dict[str, Any]:
    job = spec.job
    name = job.primary_metric
    evals = [m for _, m in out.evals[1:]] or [m for _, m in out.evals]
    finals = evals[-1] if evals else {}
    best = {k: _best(k, evals, job) for k in finals}
    target = job.task.target
    crossed = [s for s, m in out.evals
               if (m[name] >= target if job.maximize else m[name] <= target)]
    return {
        "run_key": spec.key, "job": job.name,
        "job_options": job.options_json,
        "loss": spec.loss.spec, "loss_key": spec.loss.key,
        "seed": spec.seed, "device": spec.cfg.device, "status": out.status, "error": out.error,
        "primary_metric": name, "primary_best": best.get(name, math.nan),
        "primary_final": finals.get(name, math.nan), "target": target,
        "steps_to_target": crossed[0] if crossed and out.status == "ok" else None,
        "curve_auc": _curve_auc(out.evals, name, spec.cfg.steps),
        "final_train_loss": out.train_loss[-1][1] if out.train_loss else math.nan,
        "steps": spec.cfg.steps, "eval_every": spec.cfg.eval_every,
        "epochs": round(spec.epochs, 3),
        "batch_size": spec.cfg.batch_size, "lr": spec.cfg.lr, "optimizer": spec.cfg.optimizer,
        "train_seconds": round(out.train_seconds, 4),
        "samples_per_s": out.timed_samples / out.train_seconds if out.train_seconds else math.nan,
        "loss_ms_per_step": out.loss_ms_per_step, "seeds_together": together,
        "peak_mem_mb": round(out.peak_mem_mb, 1),
        "final_metrics": finals, "best_metrics": best, "data_source": data.source,
        "versions": versions(), "finished_at": datetime.now(timezone.utc).isoformat(),
    }


_LOWER_IS_BETTER = {"ece", "nll", "rmse", "mae", "lpips", "loss"}


def _best(metric: str, evals: list[dict[str, float]], job: Job) -> float:
    values = [m[metric] for m in evals]
    lower = (not job.maximize) if metric == job.primary_metric else metric in _LOWER_IS_BETTER
    return min(values) if lower else max(values)


def _curve_auc(evals: list[tuple[int, dict[str, float]]], metric: str, steps: int) -> float:
    """Area under the eval curve over the fraction of training, from step 0 (trapezoid)."""
    pts = [(s / steps, m[metric]) for s, m in evals]
    if len(pts) < 2 or not pts[-1][0]:
        return math.nan
    area = sum((x1 - x0) * (y0 + y1) / 2
               for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False))
    return area / pts[-1][0]


def _history(out: RunOutcome) -> list[tuple[int, str, str, float]]:
    rows = [(s, "train", "loss", v) for s, v in out.train_loss]
    rows += [(s, "test", k, v) for s, m in out.evals for k, v in m.items()]
    return sorted(rows, key=lambda r: r[0])


def run_group(specs: Sequence[RunSpec], vectorise: str = "auto",
              on_step: Callable[[int], None] | None = None) -> list[tuple[dict, list]]:
    """Runs that differ only in their seed → their rows and history rows. ``vectorise``:
    ``auto`` (calibrate), ``always`` (vmap when there are several seeds) or ``never``."""
    first = specs[0]
    data = job_data(first.job, first.cfg.device)
    seeds = [s.seed for s in specs]
    together = vectorise == "always" and len(seeds) > 1 or vectorise == "auto" and \
        choose_vectorised(first.job, data, first.loss, first.cfg, seeds)
    outs = run_seeds(first.job, data, first.loss, first.cfg, seeds, vectorised=together,
                     on_step=on_step)
    return [(_row(spec, data, out, len(seeds) if together else 1), _history(out))
            for spec, out in zip(specs, outs, strict=True)]


def run_spec(spec: RunSpec) -> tuple[dict[str, Any], list]:
    """One run → its runs.csv row and history rows (what a pool worker does)."""
    return run_group([spec], "never")[0]


def _seed_groups(runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Consecutive runs that differ only in the seed, in plan order."""
    groups: dict[tuple, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault((r.job.data_key, r.job.options_json, r.loss.key, r.cfg), []).append(r)
    return list(groups.values())


def shard(runs: list[RunSpec], rank: int, world_size: int) -> list[RunSpec]:
    """This rank's share of the plan: every world_size-th run, in plan order."""
    return runs[rank::world_size]


def execute(
    runs: Sequence[RunSpec],
    store: ResultStore,
    *,
    workers: int = 1,
    plugins: Sequence[str] = (),
    on_start: Callable[[RunSpec], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_done: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    vectorise: str = "auto",
) -> list[dict[str, Any]]:
    """Run every run whose key is not in ``store`` yet; append each as it finishes.

    In one process, the seeds of a (job, loss, settings) train together as one vmapped
    model when ``vectorise`` allows it and it is faster (``engine.choose_vectorised``).
    """
    done = store.finished_keys()
    todo = [r for r in runs if r.key not in done]
    rows = []
    if workers > 1 and len(todo) > 1:
        return _execute_pool(todo, store, workers, plugins, on_start, on_done)
    for group in _seed_groups(todo):
        if on_start:
            on_start(group[0])
        for spec, (row, history) in zip(group, run_group(group, vectorise, on_step),
                                        strict=True):
            store.append(row, history)
            rows.append(row)
            if on_done:
                on_done(spec, row)
    return rows


def _init_worker(threads: int, plugins: Sequence[str]) -> None:
    torch.set_num_threads(threads)
    for p in plugins:
        load_plugin(p)


def _execute_pool(todo, store, workers, plugins, on_start, on_done) -> list[dict[str, Any]]:
    """A pool of worker processes, CPU threads divided among them; this process writes."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // workers)
    rows = []
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, tuple(plugins))) as pool:
        pending = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < workers:
                spec = queue.pop(0)
                if on_start:
                    on_start(spec)
                pending[pool.submit(run_spec, spec)] = spec
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = pending.pop(fut)
                row, history = fut.result()
                store.append(row, history)
                rows.append(row)
                if on_done:
                    on_done(spec, row)
    return rows
