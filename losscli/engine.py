"""One training run, nothing else: data on the device, timed steps, evals, a result.

Rules (see the README's design section): batches come from an on-device permutation; the
loss is accumulated on the device and read once per eval (no host sync per step); only
training steps after the warm-up are timed; a non-finite loss ends the run as
``diverged`` and an exception as ``error``; same seed and settings on CPU give identical
numbers.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from losscli.jobs import Job, JobData
from losscli.losses import Loss

__all__ = ["RunOutcome", "TrainConfig", "choose_vectorised", "make_optimizer", "prepare_model",
           "resolve_device", "run_one", "run_seeds"]

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
    """Adam, AdamW or SGD (momentum 0.9). On CUDA the fused kernels (one launch for all
    parameters); elsewhere torch's default foreach implementation."""
    fused = {"fused": True} if cfg.device.startswith("cuda") else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                               **fused)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, its 4-D (conv) weights in ``channels_last`` on CPU and CUDA.

    Measured on CPU (2 threads, oneDNN): training steps 10-26 % faster on the conv jobs and
    evals up to 2x faster (max-pool and conv run NHWC natively); a no-op for MLPs. The
    inputs stay NCHW: the first conv's output follows the weights' layout.
    """
    model = model.to(device)
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


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
    return run_seeds(job, data, loss, cfg, [seed], on_step=on_step)[0]


def run_seeds(
    job: Job,
    data: JobData,
    loss: Loss,
    cfg: TrainConfig,
    seeds: Sequence[int],
    *,
    vectorised: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> list[RunOutcome]:
    """Train one run per seed: one after another, or (``vectorised``) all seeds at once as
    one ``torch.func.vmap``-ed model. Seed k gives the same numbers either way (to float
    rounding). Never raises for a failing run: the outcomes say ``error``."""
    if not vectorised:
        return [_guarded(job, data, loss, cfg, [seed], False, on_step)[0] for seed in seeds]
    return _guarded(job, data, loss, cfg, list(seeds), True, on_step)


def _guarded(job, data, loss, cfg, seeds, vectorised, on_step) -> list[RunOutcome]:
    device = torch.device(cfg.device)
    outs = [RunOutcome(status="ok") for _ in seeds]
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once
        trainer = (_Stacked if vectorised else _Single)(job, data, loss, cfg, seeds, device)
        _train(trainer, job, data, cfg, device, outs, on_step)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # an error is a result; the sweep goes on
        for out in outs:
            out.status = "error"
            out.error = f"{type(exc).__name__}: {exc}"
    for out in outs:
        out.peak_mem_mb = _peak_mem_mb(device)
    return outs


class _Single:
    """One model, one optimizer: the plain training step."""

    def __init__(self, job, data, loss, cfg, seeds, device):
        torch.manual_seed(seeds[0])
        model = prepare_model(job.build_model(), device)
        self.model, self.cfg, self.device = model, cfg, device
        self.opt = make_optimizer(cfg, model.parameters())
        self.objective = job.bind(loss)
        self.batches = _Batches(data, cfg.batch_size, seeds[0])

    def step(self) -> Tensor:
        x, y = self.batches.next()
        if self.cfg.bf16:  # (entering a disabled autocast costs ~2 % of a small MLP's step)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                output = self.model(x).float()  # the loss is always computed in fp32
        else:
            output = self.model(x)
        value = self.objective(output, y)
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        self.opt.step()
        return value.detach()  # 0-d: adds into the [1] running sum

    def models(self) -> list[nn.Module]:
        return [self.model]

    def loss_ms(self) -> list[float]:
        return [_loss_ms(self.model, self.objective, self.batches, self.device)]


class _Stacked:
    """S seeds as one model: parameters stacked on a leading dim, forward and loss vmapped.

    Element-wise optimizers (Adam, AdamW, SGD) on the stacked tensors update each seed
    exactly as its own optimizer would; each seed keeps its own init and batch order.
    """

    def __init__(self, job, data, loss, cfg, seeds, device):
        from torch.func import functional_call, stack_module_state, vmap

        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(job.build_model().to(device))
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.objective = job.bind(loss)

        def seed_loss(params, buffers, x, y):
            output = functional_call(self.base, (params, buffers), (x,))
            return self.objective(output.float(), y)

        self.batched_loss = vmap(seed_loss)
        self.functional_call = functional_call
        self.opt = make_optimizer(cfg, self.params.values())
        self.batches = [_Batches(data, cfg.batch_size, seed) for seed in seeds]
        self.device, self.n = device, len(seeds)

    def step(self) -> Tensor:
        xs, ys = zip(*(b.next() for b in self.batches), strict=True)
        values = self.batched_loss(self.params, self.buffers, torch.stack(xs), torch.stack(ys))
        self.opt.zero_grad(set_to_none=True)
        values.sum().backward()  # seeds share no parameter: each gets its own gradient
        self.opt.step()
        return values.detach()

    def models(self) -> list[nn.Module]:
        return [_SeedSlice(self, k) for k in range(self.n)]

    def loss_ms(self) -> list[float]:
        return [_loss_ms(m, self.objective, b, self.device)
                for m, b in zip(self.models(), self.batches, strict=True)]


class _SeedSlice(nn.Module):
    """Seed k of a stacked model, as a module for evaluation."""

    def __init__(self, stacked: _Stacked, k: int):
        super().__init__()
        self.stacked, self.k = stacked, k

    def forward(self, x: Tensor) -> Tensor:
        s = self.stacked
        params = {n: p[self.k] for n, p in s.params.items()}
        buffers = {n: b[self.k] for n, b in s.buffers.items()}
        return s.functional_call(s.base, (params, buffers), (x,))


class _SegmentTimer:
    """Seconds of training between evals. CUDA: events recorded in the stream, so starting
    a segment costs no host sync and the time is the GPU's; elsewhere: sync, then
    ``perf_counter``."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            _sync(self.device)
            self._start = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()  # the segment's end is a sync point anyway (the eval reads)
            return self._start.elapsed_time(end) / 1000
        _sync(self.device)
        return time.perf_counter() - self._start


def _train(trainer, job, data, cfg, device, outs, on_step) -> None:
    """The loop shared by one seed and stacked seeds: timed steps, evals, divergence."""
    evals, warm = _eval_steps(cfg), min(cfg.warmup_steps, cfg.steps - 1)
    models, live = trainer.models(), list(range(len(outs)))
    for k in live:
        outs[k].evals.append((0, _evaluate(job, models[k], data)))
    running, since, last = torch.zeros(len(outs), device=device), 0, 0
    timer, timing = _SegmentTimer(device), False
    for step in range(1, cfg.steps + 1):
        if step == warm + 1:
            timer.start()
            timing = True
        running += trainer.step()
        since += 1
        if on_step is not None:
            on_step(step)
        if step not in evals:
            continue
        if timing:
            elapsed = timer.stop()
            for k in live:  # stacked seeds share the time evenly
                outs[k].train_seconds += elapsed / len(outs)
                outs[k].timed_samples += (step - max(warm, last)) * cfg.batch_size
        means = (running / since).tolist()  # the one host sync per eval
        running.zero_()
        since, last = 0, step
        for k in list(live):
            outs[k].steps_done = step
            outs[k].train_loss.append((step, means[k]))
            if not math.isfinite(means[k]):
                outs[k].status = "diverged"
                outs[k].error = f"non-finite training loss ({means[k]}) before step {step}"
                live.remove(k)
            else:
                outs[k].evals.append((step, _evaluate(job, models[k], data)))
        if not live:
            return
        timing = step < cfg.steps and step > warm
        if timing:
            timer.start()  # after the evals, which ended with a host sync
    for k, ms in zip(live, [trainer.loss_ms()[k] for k in live], strict=True):
        outs[k].loss_ms_per_step = ms


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


_CHOICE: dict[tuple, bool] = {}
_BATCHES: dict[tuple, bool] = {}


def choose_vectorised(job: Job, data: JobData, loss: Loss, cfg: TrainConfig,
                      seeds: Sequence[int], steps: int = 5) -> bool:
    """Whether training ``seeds`` as one vmapped model beats training them one by one.

    Timing: a short calibration on throwaway models (the real runs start afresh): after a
    warm-up step, three interleaved blocks of a few steps each way, best block of each; not
    at least 15 % faster means sequential. It is decided once per process for each (job,
    settings, number of seeds), on the first loss that vmap can batch: the model dominates
    the step, and calibrating every loss cost 13 % of the CI suite's wall time (py-spy).
    Support: whether vmap can batch this loss (no host sync, no data-dependent shapes) is
    checked per loss with one stacked step, only where the timing says vectorise.
    """
    if len(seeds) < 2 or not job.vectorisable:
        return False
    key = (job.data_key, cfg, len(seeds))
    if key not in _CHOICE:
        faster = _calibrate(job, data, loss, cfg, seeds, steps)
        if faster is None:  # this loss cannot be batched: no verdict on the job yet
            return False
        _CHOICE[key] = faster
        _BATCHES[key + (loss.key,)] = True
    if not _CHOICE[key]:
        return False
    support = key + (loss.key,)
    if support not in _BATCHES:
        _BATCHES[support] = _stacked_or_none(job, data, loss, cfg, seeds) is not None
    return _BATCHES[support]


def _stacked_or_none(job, data, loss, cfg, seeds) -> _Stacked | None:
    """A stacked trainer after one step, or None if vmap cannot batch this job and loss."""
    try:
        stacked = _Stacked(job, data, loss, cfg, list(seeds), torch.device(cfg.device))
        stacked.step()
    except Exception:  # an op vmap cannot batch, a host sync in the loss
        return None
    return stacked


def _calibrate(job, data, loss, cfg, seeds, steps, blocks: int = 3) -> bool | None:
    """Stacked at least 15 % faster than one seed at a time; None if it cannot batch."""
    device = torch.device(cfg.device)

    def seconds(trainer) -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        _sync(device)
        return time.perf_counter() - t

    stacked = _stacked_or_none(job, data, loss, cfg, seeds)  # its step is the warm-up
    if stacked is None:
        return None
    single = _Single(job, data, loss, cfg, [seeds[0]], device)
    single.step()
    # interleaved blocks, best of each: robust to a busy machine
    t_stacked, t_single = math.inf, math.inf
    for _ in range(blocks):
        t_stacked = min(t_stacked, seconds(stacked))
        t_single = min(t_single, seconds(single))
    return t_stacked < 0.85 * t_single * len(seeds)
