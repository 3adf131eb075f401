"""Many runs: a plan (validated before anything trains) and its execution into a store."""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from losscli.engine import OPTIMIZERS, RunOutcome, TrainConfig, run_one
from losscli.errors import UsageError
from losscli.jobs import Job, JobData, create_job
from losscli.losses import Loss, create_loss
from losscli.results import ResultStore

__all__ = ["Overrides", "Plan", "RunSpec", "execute", "make_plan", "versions"]


@dataclass(frozen=True)
class Overrides:
    """Budget settings from the command line; ``None`` keeps the job's own default."""

    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    eval_every: int | None = None


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
            "cfg": self.cfg.describe(),
        }
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plan:
    runs: list[RunSpec]
    data: dict[tuple, JobData]  # loaded once per job data key, already on the device


def versions() -> str:
    import torchvision

    import losscli

    return (f"losscli={losscli.__version__};torch={torch.__version__};"
            f"torchvision={torchvision.__version__};python={platform.python_version()}")


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
        except (ValueError, TypeError) as exc:
            problems.append(f"--loss {spec}: {exc}")
    return loss, problems


def compatible_losses(job: Job) -> list[str]:
    from losscli.losses import list_losses

    return [i.name for i in list_losses() if job.incompatibility(i) is None]


def _config(job: Job, n_train: int, ov: Overrides, device: str, bf16: bool
            ) -> tuple[TrainConfig, float]:
    b = job.task.budget
    bs = ov.batch_size or b.batch_size
    if bs > n_train:
        raise UsageError(f"--batch-size {bs} exceeds the {n_train} training samples of {job.name}")
    per_epoch = n_train // bs
    steps = ov.steps or (ov.epochs * per_epoch if ov.epochs else None) or b.steps \
        or (b.epochs or 1) * per_epoch
    optimizer = ov.optimizer or b.optimizer
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    eval_every = ov.eval_every or b.eval_every or (per_epoch if steps >= per_epoch else 0)
    cfg = TrainConfig(steps=steps, batch_size=bs, lr=ov.lr if ov.lr is not None else b.lr,
                      optimizer=optimizer,
                      weight_decay=ov.weight_decay if ov.weight_decay is not None
                      else b.weight_decay,
                      eval_every=eval_every, device=device, bf16=bf16)
    return cfg, steps / per_epoch


def make_plan(
    task: str,
    losses: Sequence[str],
    seeds: Sequence[int],
    overrides: Overrides = Overrides(),
    device: str = "cpu",
    bf16: bool = False,
    job_options: dict[str, Any] | None = None,
) -> Plan:
    """Resolve names, load the data and check every loss against the job before training.

    Raises:
        UsageError: naming every problem found (unknown names, incompatible pairs, bad values).
    """
    job = create_job(task, **(job_options or {}))
    specs = list(losses) or list(job.task.losses)
    problems, compiled = [], []
    for spec in dict.fromkeys(specs):  # a loss given twice runs once
        loss, found = _loss_problems(job, spec)
        problems += found
        compiled.append(loss)
    if problems:
        raise UsageError("\n".join(problems) + f"\nlosses that apply to {job.name}: "
                         + ", ".join(compatible_losses(job)))
    if bf16 and not device.startswith("cuda"):
        raise UsageError("--bf16 needs --device cuda")
    data = job.load_data().to(device)
    cfg, epochs = _config(job, data.n_train, overrides, device, bf16)
    runs = [RunSpec(job, loss, seed, cfg, epochs) for loss in compiled for seed in seeds]
    return Plan(runs=runs, data={job.data_key: data})


# --------------------------------------------------------------------------- execution


def _row(spec: RunSpec, data: JobData, out: RunOutcome) -> dict[str, Any]:
    job = spec.job
    name, better = job.primary_metric, (max if job.maximize else min)
    evals = [m for _, m in out.evals[1:]] or [m for _, m in out.evals]
    finals = evals[-1] if evals else {}
    best = {k: better(m[k] for m in evals) if k == name else
            _best(k, evals) for k in finals}
    target = job.task.target
    crossed = [s for s, m in out.evals
               if (m[name] >= target if job.maximize else m[name] <= target)]
    return {
        "run_key": spec.key, "job": job.name, "loss": spec.loss.spec, "loss_key": spec.loss.key,
        "seed": spec.seed, "device": spec.cfg.device, "status": out.status, "error": out.error,
        "primary_metric": name, "primary_best": best.get(name, math.nan),
        "primary_final": finals.get(name, math.nan), "target": target,
        "steps_to_target": crossed[0] if crossed and out.status == "ok" else None,
        "curve_auc": _curve_auc(out.evals, name, spec.cfg.steps),
        "final_train_loss": out.train_loss[-1][1] if out.train_loss else math.nan,
        "steps": out.steps_done, "epochs": round(spec.epochs, 3),
        "batch_size": spec.cfg.batch_size, "lr": spec.cfg.lr, "optimizer": spec.cfg.optimizer,
        "train_seconds": round(out.train_seconds, 4),
        "samples_per_s": out.timed_samples / out.train_seconds if out.train_seconds else math.nan,
        "loss_ms_per_step": out.loss_ms_per_step, "peak_mem_mb": round(out.peak_mem_mb, 1),
        "final_metrics": finals, "best_metrics": best, "data_source": data.source,
        "versions": versions(), "finished_at": datetime.now(timezone.utc).isoformat(),
    }


_LOWER_IS_BETTER = {"ece", "nll", "rmse", "mae", "lpips", "loss"}


def _best(metric: str, evals: list[dict[str, float]]) -> float:
    values = [m[metric] for m in evals]
    return min(values) if metric in _LOWER_IS_BETTER else max(values)


def _curve_auc(evals: list[tuple[int, dict[str, float]]], metric: str, steps: int) -> float:
    """Area under the eval curve over the fraction of training, from step 0 (trapezoid)."""
    pts = [(s / steps, m[metric]) for s, m in evals]
    if len(pts) < 2:
        return math.nan
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False))
    return area / pts[-1][0] if pts[-1][0] else math.nan


def _history(out: RunOutcome) -> list[tuple[int, str, str, float]]:
    rows = [(s, "train", "loss", v) for s, v in out.train_loss]
    rows += [(s, "test", k, v) for s, m in out.evals for k, v in m.items()]
    return sorted(rows, key=lambda r: r[0])


def execute(
    plan: Plan,
    store: ResultStore,
    *,
    skip: set[str] = frozenset(),
    on_start: Callable[[int, RunSpec], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_done: Callable[[RunSpec, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every planned run not in ``skip`` and append each to ``store`` as it finishes."""
    rows = []
    for i, spec in enumerate(plan.runs):
        if spec.key in skip:
            continue
        if on_start:
            on_start(i, spec)
        data = plan.data[spec.job.data_key]
        out = run_one(spec.job, data, spec.loss, spec.cfg, spec.seed, on_step=on_step)
        row = _row(spec, data, out)
        store.append(row, _history(out))
        rows.append(row)
        if on_done:
            on_done(spec, row)
    return rows
