"""One training run, nothing else: data on the device, timed steps, evals, a result.

Rules (see the README's design section): batches come from an on-device permutation; the
loss is accumulated on the device and read once per eval (no host sync per step); only
training steps after the warm-up are timed; a non-finite loss ends the run as
``diverged`` and an exception as ``error``; same seed and settings on CPU give identical
numbers. Several seeds can train as one vmapped model (``losscli.vectorised``) behind the
same small trainer interface: ``step()``, ``models()``, ``loss_ms()``, ``objective``,
``snapshot(k)``.

Protocol: every eval during training scores the validation split; the test split is read
once per run, after the last step, on the final model (or, with ``select = "best"``, on
the weights of the best validation eval). Nothing else reads it.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from losscli.jobs import Evaluation, Job, JobData, Objective, Split
from losscli.losses import Loss
from losscli.settings import OPTIMIZERS, Settings

__all__ = ["Batches", "RunOutcome", "SingleTrainer", "Trainer", "make_optimizer",
           "prepare_model", "resolve_device", "run_one", "run_seeds", "sync"]


@dataclass
class RunOutcome:
    status: str  # ok | diverged | pruned (a tuning trial stopped early) | error
    error: str = ""
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # validation
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)  # the one test evaluation
    series: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # and its series
    selected_step: int | None = None  # the step whose model the test split scored
    steps_done: int = 0
    train_seconds: float = 0.0
    timed_samples: int = 0
    loss_ms_per_step: float = math.nan
    peak_mem_mb: float = math.nan


class Trainer(Protocol):
    """What the loop needs from one seed's model or a stack of seeds."""

    objective: Objective

    def step(self) -> Tensor:
        """One optimizer step; the loss of each seed, ``[S]`` (or 0-d), on the device."""

    def models(self) -> list[nn.Module]:
        """One module per seed, for evaluation."""

    def loss_ms(self) -> list[float]:
        """Forward+backward ms of the loss alone, per seed."""

    def snapshot(self, k: int) -> nn.Module:
        """A frozen copy of seed ``k``'s model as it is now (for ``select = best``)."""


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


def make_optimizer(cfg: Settings, params) -> torch.optim.Optimizer:
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


def sync(device: torch.device) -> None:
    """Wait for the device: a CPU-GPU sync point, only at the ends of timed segments."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Batches:
    """Batches from an on-device permutation, reshuffled each epoch (drop-last)."""

    def __init__(self, data: JobData, batch_size: int, seed: int):
        self.x, self.y, self.bs = data.train.x, data.train.y, batch_size
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


class SingleTrainer:
    """One model, one optimizer: the plain training step."""

    def __init__(self, job: Job, data: JobData, loss: Loss, cfg: Settings, seed: int):
        self.device = torch.device(cfg.device)
        torch.manual_seed(seed)
        self.model = prepare_model(job.build_model(data), self.device)
        self.cfg = cfg
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.objective = job.bind(loss, data)
        self.batches = Batches(data, cfg.batch_size, seed)

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
        return [loss_ms(self.model, self.objective, self.batches, self.device)]

    def snapshot(self, k: int) -> nn.Module:
        return copy.deepcopy(self.model)


def run_one(job: Job, data: JobData, loss: Loss, cfg: Settings, seed: int,
            on_step: Callable[[int], None] | None = None,
            on_eval: Callable[[int, float], bool] | None = None,
            eval_also: Sequence[int] = ()) -> RunOutcome:
    """Train ``job``'s model with ``loss`` for ``cfg.steps`` steps on ``data`` (already on
    ``cfg.device``). Never raises for a failing run: the outcome says ``error``.

    ``on_eval(step, validation primary metric)`` (a tuning trial): called after each eval;
    True stops the run as ``pruned``, and the test split is then never evaluated (a
    trial with ``on_eval`` is scored on validation only). ``eval_also``: steps evaluated
    besides :func:`eval_steps` (a trial's successive-halving rungs)."""
    if on_eval is None:
        return run_seeds(job, data, loss, cfg, [seed], on_step=on_step)[0]
    return _guarded(job, data, cfg, [seed], on_step,
                    lambda: SingleTrainer(job, data, loss, cfg, seed), on_eval, eval_also)[0]


def run_seeds(job: Job, data: JobData, loss: Loss, cfg: Settings, seeds: Sequence[int], *,
              vectorised: bool = False, on_step: Callable[[int], None] | None = None
              ) -> list[RunOutcome]:
    """Train one run per seed: one after another, or (``vectorised``) all seeds at once as
    one ``torch.func.vmap``-ed model. Seed k gives the same numbers either way (to float
    rounding). Never raises for a failing run: the outcomes say ``error``."""
    if not vectorised:
        return [_guarded(job, data, cfg, [seed], on_step,
                         lambda s=seed: SingleTrainer(job, data, loss, cfg, s))[0]
                for seed in seeds]
    from losscli.vectorised import StackedTrainer

    return _guarded(job, data, cfg, list(seeds), on_step,
                    lambda: StackedTrainer(job, data, loss, cfg, seeds))


def run_trials(job: Job, data: JobData, loss: Loss, cfgs: Sequence[Settings], seed: int,
               on_evals: Callable[[int, dict[int, float]], set[int]],
               on_pruned: Callable[[int, RunOutcome], None] | None = None,
               on_step: Callable[[int], None] | None = None, eval_also: Sequence[int] = ()
               ) -> list[RunOutcome]:
    """Tuning trials of one loss that differ only in the learning rate, trained together as
    one vmapped model with a learning rate per member (``vectorised.TrialStack``): the
    same seed, so the same initial weights and batches as ``run_one`` gives each of them.

    ``on_evals(step, {member: validation primary metric})`` is called after each eval and
    returns the members to stop there as ``pruned`` (successive halving); they leave the
    stack, so the rest train faster, and ``on_pruned(member, outcome)`` gets each at once
    (its row can be written before the others finish). Trials never read the test split.
    Never raises for a failing run: the outcomes say ``error``."""
    from losscli.vectorised import TrialStack

    return _guarded(job, data, cfgs[0], list(cfgs), on_step,
                    lambda: TrialStack(job, data, loss, cfgs, seed), eval_also=eval_also,
                    on_evals=on_evals, on_pruned=on_pruned)


def _guarded(job, data, cfg, seeds, on_step, make_trainer, on_eval=None, eval_also=(),
             on_evals=None, on_pruned=None) -> list[RunOutcome]:
    device = torch.device(cfg.device)
    outs = [RunOutcome(status="ok") for _ in seeds]
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once
        train(make_trainer(), job, data, cfg, outs, on_step, on_eval, eval_also, on_evals,
              on_pruned)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # an error is a result; the sweep goes on
        for out in outs:
            out.status = "error"
            out.error = f"{type(exc).__name__}: {exc}"
    for out in outs:
        out.peak_mem_mb = _peak_mem_mb(device)
    return outs


class _SegmentTimer:
    """Seconds of training between evals. CUDA: events recorded in the stream, so starting
    a segment costs no host sync and the time is the GPU's; elsewhere: sync, then
    ``perf_counter``."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self._start: Any = None
        self.running = False

    def start(self) -> None:
        self.running = True
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            sync(self.device)
            self._start = time.perf_counter()

    def stop(self) -> float:
        self.running = False
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()  # the segment's end is a sync point anyway (the eval reads)
            return self._start.elapsed_time(end) / 1000
        sync(self.device)
        return time.perf_counter() - self._start


def eval_steps(cfg: Settings, also: Sequence[int] = ()) -> list[int]:
    """The steps after which the model is evaluated (the last step always), and ``also``."""
    every = cfg.eval_every or max(1, cfg.steps // 10)
    return sorted(set(range(every, cfg.steps + 1, every)) | {cfg.steps}
                  | {s for s in also if 0 < s <= cfg.steps})


def train(trainer: Trainer, job: Job, data: JobData, cfg: Settings,
          outs: list[RunOutcome], on_step: Callable[[int], None] | None = None,
          on_eval: Callable[[int, float], bool] | None = None,
          eval_also: Sequence[int] = (),
          on_evals: Callable[[int, dict[int, float]], set[int]] | None = None,
          on_pruned: Callable[[int, RunOutcome], None] | None = None) -> None:
    """The loop: timed steps between evals; each eval reads the running loss once (the one
    host sync of a segment), ends diverged seeds and scores the live ones on validation.
    After the last step, the test split scores each live seed's selected model (not for
    tuning trials, which ``on_eval`` or ``on_evals`` mark; see ``run_one`` and
    ``run_trials``). A member that ends early leaves the trainer (``drop``) where it can."""
    trial = on_eval is not None or on_evals is not None
    device, models = torch.device(cfg.device), trainer.models()
    live, chosen = list(range(len(outs))), {}
    for k in live:
        outs[k].evals.append((0, evaluate(job, models[k], data.val, trainer.objective)))
    warm = min(cfg.warmup_steps, cfg.steps - 1)  # untimed: allocator and kernel warm-up
    timer, running, step = _SegmentTimer(device), torch.zeros(len(outs), device=device), 0
    for end in eval_steps(cfg, eval_also):
        first = step + 1
        for step in range(first, end + 1):
            if step == warm + 1:
                timer.start()
            running += trainer.step()
            if on_step is not None:
                on_step(step)
        if timer.running:
            # a seed stack trains every seed (a diverged one too); a trial stack its live ones
            share = len(live) if hasattr(trainer, "drop") else len(outs)
            _add_time(outs, live, timer.stop(), (end - max(warm, first - 1)) * cfg.batch_size,
                      share)
        means = (running / (end - first + 1)).tolist()  # the one host sync per eval
        running.zero_()
        before = live
        live = _after_eval(job, data, trainer, models, outs, live, end, means)
        if cfg.select == "best":
            _keep_best(job, trainer, outs, live, chosen)
        if on_eval is not None and live and on_eval(end, outs[0].evals[-1][1][
                job.primary_metric]):
            outs[0].status = "pruned"
            return
        if on_evals is not None and live:
            stop = on_evals(end, {k: outs[k].evals[-1][1][job.primary_metric] for k in live})
            for k in sorted(stop & set(live)):
                outs[k].status = "pruned"
                if on_pruned is not None:
                    on_pruned(k, outs[k])
            live = [k for k in live if k not in stop]
        for k in set(before) - set(live):
            _drop(trainer, k)
        if not live:
            return
        if warm < end < cfg.steps:
            timer.start()  # after the evals, which ended with a host sync
    per_seed = trainer.loss_ms()  # once: each call times every seed of a stack
    for k in live:
        outs[k].loss_ms_per_step = per_seed[k]
        step_k, model = chosen.get(k, (cfg.steps, models[k]))
        outs[k].selected_step = step_k
        if not trial:  # a tuning trial never reads the test split
            scores = evaluate_test(job, model, data, trainer.objective)
            outs[k].test, outs[k].series = scores.metrics, scores.series


def _keep_best(job: Job, trainer: Trainer, outs: list[RunOutcome], live: list[int],
               chosen: dict[int, tuple[int, nn.Module]]) -> None:
    """``select = best``: a copy of each live seed's model when its latest validation eval
    is its best so far (ties keep the earlier one). Costs a model copy per improvement."""
    name = job.primary_metric
    for k in live:
        values = [m[name] for _, m in outs[k].evals[1:]]
        best = max(values) if job.maximize else min(values)
        if values[-1] == best and best not in values[:-1]:
            chosen[k] = (outs[k].evals[-1][0], trainer.snapshot(k))


def _drop(trainer: Trainer, k: int) -> None:
    """Member ``k`` ended (pruned, diverged): a trainer that can stop training it does."""
    drop = getattr(trainer, "drop", None)
    if drop is not None:
        drop(k)


def _add_time(outs: list[RunOutcome], live: list[int], seconds: float, samples: int,
              share: int) -> None:
    for k in live:  # the members trained in the segment share its time evenly
        outs[k].train_seconds += seconds / share
        outs[k].timed_samples += samples


def _after_eval(job, data, trainer, models, outs, live, step, means) -> list[int]:
    """Record the segment's mean loss; a non-finite one ends that seed as ``diverged``,
    the others are evaluated on the validation split. Returns the seeds still training."""
    still = []
    for k in live:
        outs[k].steps_done = step
        outs[k].train_loss.append((step, means[k]))
        if math.isfinite(means[k]):
            outs[k].evals.append((step, evaluate(job, models[k], data.val, trainer.objective)))
            still.append(k)
        else:
            outs[k].status = "diverged"
            outs[k].error = f"non-finite training loss ({means[k]}) before step {step}"
    return still


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    model.eval()
    try:
        yield
    finally:
        model.train()


def evaluate(job: Job, model: nn.Module, split: Split, objective: Objective
             ) -> dict[str, float]:
    """The job's metrics of ``model`` on ``split`` (in eval mode for the call)."""
    with _eval_mode(model):
        return job.evaluate(model, split, objective)


def evaluate_test(job: Job, model: nn.Module, data: JobData, objective: Objective
                  ) -> Evaluation:
    """The job's one test evaluation of ``model`` (in eval mode for the call)."""
    with _eval_mode(model):
        return job.evaluate_test(model, data, objective)


def loss_ms(model, objective, batches: Batches, device: torch.device, repeats: int = 20
            ) -> float:
    """Forward+backward time of the loss alone on one real batch, in ms (median)."""
    x, y = batches.next()
    with torch.no_grad():
        output = model(x).float()
    output.requires_grad_(True)
    times = []
    for i in range(repeats + 3):
        sync(device)
        t = time.perf_counter()
        objective(output, y).backward()
        output.grad = None
        sync(device)
        if i >= 3:  # warm-up calls are not counted
            times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set (Linux reports KiB); covers all runs so far
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
