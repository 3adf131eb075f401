"""One training run, nothing else: data on the device, timed steps, evals, a result.

Rules (see the README's design section): batches come from an on-device permutation; the
loss is accumulated on the device and read once per eval (no host sync per step); only
training steps after the warm-up are timed; a non-finite loss ends the run as
``diverged`` and an exception as ``error``; same seed and settings on CPU give identical
numbers.
"""

from __future__ import annotations

import math
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from losscli.jobs import Job, JobData
from losscli.losses import Loss

__all__ = ["RunOutcome", "TrainConfig", "make_optimizer", "resolve_device", "run_one"]

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting that changes a run's numbers (besides job, loss and seed)."""

    steps: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    eval_every: int = 0  # 0: ten evals per run
    warmup_steps: int = 5
    device: str = "cpu"
    bf16: bool = False

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class RunOutcome:
    status: str  # ok | diverged | error
    error: str = ""
    error_trace: str = ""
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    steps_done: int = 0
    train_seconds: float = 0.0
    timed_samples: int = 0
    loss_ms_per_step: float = math.nan
    peak_mem_mb: float = math.nan


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available here")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    # foreach kernels: one launch for all parameters (the default where supported)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # this is a CPU-GPU sync point: only at segment ends
    elif device.type == "mps":
        torch.mps.synchronize()


def _eval_steps(cfg: TrainConfig) -> set[int]:
    every = cfg.eval_every or max(1, cfg.steps // 10)
    return set(range(every, cfg.steps + 1, every)) | {cfg.steps}


class _Batches:
    """Batches from an on-device permutation, reshuffled each epoch (drop-last)."""

    def __init__(self, data: JobData, batch_size: int, seed: int):
        self.x, self.y, self.bs = data.train_x, data.train_y, batch_size
        self.n = data.n_train
        if batch_size > self.n:
            raise ValueError(f"batch size {batch_size} exceeds the {self.n} training samples")
        self.gen = torch.Generator(device=self.x.device).manual_seed(seed)
        self.pos, self.perm = self.n, None

    def next(self) -> tuple[Tensor, Tensor]:
        if self.pos + self.bs > self.n:
            self.perm = torch.randperm(self.n, device=self.x.device, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return self.x[idx], self.y[idx]


def run_one(
    job: Job,
    data: JobData,
    loss: Loss,
    cfg: TrainConfig,
    seed: int,
    on_step: Callable[[int], None] | None = None,
) -> RunOutcome:
    """Train ``job``'s model with ``loss`` for ``cfg.steps`` steps on ``data`` (already on
    ``cfg.device``). Never raises for a failing run: the outcome says ``error``."""
    device = torch.device(cfg.device)
    out = RunOutcome(status="ok")
    try:
        _train(job, data, loss, cfg, seed, device, out, on_step)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # an error is a result; the sweep goes on
        out.status = "error"
        out.error = f"{type(exc).__name__}: {exc}"
        out.error_trace = traceback.format_exc()
    out.peak_mem_mb = _peak_mem_mb(device)
    return out


def _train(job, data, loss, cfg, seed, device, out, on_step) -> None:
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = job.build_model().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model.parameters())
    objective = job.bind(loss)
    batches = _Batches(data, cfg.batch_size, seed)
    evals, warm = _eval_steps(cfg), min(cfg.warmup_steps, cfg.steps - 1)
    out.evals.append((0, _evaluate(job, model, data)))
    running, since = torch.zeros((), device=device), 0
    t0 = None
    for step in range(1, cfg.steps + 1):
        if step == warm + 1:
            _sync(device)
            t0 = time.perf_counter()
        x, y = batches.next()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            output = model(x)
        value = objective(output.float(), y)  # the loss is always computed in fp32
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        running += value.detach()
        since += 1
        out.steps_done = step
        if on_step is not None:
            on_step(step)
        if step in evals:
            if t0 is not None:
                _sync(device)
                out.train_seconds += time.perf_counter() - t0
                out.timed_samples += (step - max(warm, _last_eval(out))) * cfg.batch_size
            mean_loss = (running / since).item()  # the one host sync per eval
            out.train_loss.append((step, mean_loss))
            running.zero_()
            since = 0
            if not math.isfinite(mean_loss):
                out.status = "diverged"
                out.error = f"non-finite training loss ({mean_loss}) before step {step}"
                return
            out.evals.append((step, _evaluate(job, model, data)))
            t0 = time.perf_counter() if step < cfg.steps else None
    out.loss_ms_per_step = _loss_ms(model, objective, batches, device)


def _last_eval(out: RunOutcome) -> int:
    return out.train_loss[-1][0] if out.train_loss else 0


def _evaluate(job: Job, model: nn.Module, data: JobData) -> dict[str, float]:
    model.eval()
    try:
        return job.evaluate(model, data)
    finally:
        model.train()


def _loss_ms(model, objective, batches, device, repeats: int = 20) -> float:
    """Forward+backward time of the loss alone on one real batch, in ms (median)."""
    x, y = batches.next()
    with torch.no_grad():
        output = model(x).float()
    output.requires_grad_(True)
    times = []
    for i in range(repeats + 3):
        _sync(device)
        t = time.perf_counter()
        objective(output, y).backward()
        output.grad = None
        _sync(device)
        if i >= 3:  # warm-up calls are not counted
            times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set (Linux reports KiB); covers all runs so far
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
