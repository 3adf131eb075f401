"""Several seeds of one run as one model: parameters stacked, forward and loss vmapped.

``StackedTrainer`` has the engine's trainer interface, so ``engine.train`` runs it as it
runs one seed. Element-wise optimizers (Adam, AdamW, SGD) on the stacked tensors update
each seed exactly as its own optimizer would; each seed keeps its own init and batch order.
``TrialStack`` does the same for tuning trials that differ only in the learning rate: one
seed (one init, one batch stream), a parameter group, with its own learning rate, per
member; a pruned member leaves the stack.

Whether stacking is faster is measured, not assumed: ``Calibration`` (owned by a plan's
execution, not by this module) times a few steps each way once per job and settings, and
checks per loss that vmap can batch it. Stacks train in fp32: ``torch.autocast`` inside
the vmapped function leaves the forward in float32 (measured, torch 2.14 on CPU), so
``--bf16`` runs are never stacked (``sweep`` decides).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from losscli.engine import Batches, SingleTrainer, loss_ms, make_optimizer, sync
from losscli.jobs import Job, JobData
from losscli.losses import Loss
from losscli.settings import Settings

__all__ = ["Calibration", "StackedTrainer", "TrialStack"]

# vmap's fallback for an op without a batching rule (det's scatter_) warns of "a
# performance drop"; the calibration measures the speed and decides, so the warning only
# clutters a sweep's output
warnings.filterwarnings("ignore", message="There is a performance drop because we have "
                        "not yet implemented the batching rule", category=UserWarning)


class StackedTrainer:
    """S seeds as one model (see the module docstring)."""

    def __init__(self, job: Job, data: JobData, loss: Loss, cfg: Settings,
                 seeds: Sequence[int]):
        from torch.func import functional_call, stack_module_state, vmap

        self.device, self.n = torch.device(cfg.device), len(seeds)
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(job.build_model(data).to(self.device))
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.objective = job.bind(loss, data)
        self.functional_call = functional_call

        def seed_loss(params, buffers, x, y):
            output = functional_call(self.base, (params, buffers), (x,))
            return self.objective(output.float(), y)

        self.batched_loss = vmap(seed_loss)
        self.opt = make_optimizer(cfg, self.params.values())
        self.batches = [Batches(data, cfg.batch_size, seed) for seed in seeds]

    def step(self) -> Tensor:
        xs, ys = zip(*(b.next() for b in self.batches), strict=True)
        values = self.batched_loss(self.params, self.buffers, torch.stack(xs), torch.stack(ys))
        self.opt.zero_grad(set_to_none=True)
        values.sum().backward()  # seeds share no parameter: each gets its own gradient
        self.opt.step()
        return values.detach()

    def models(self) -> list[nn.Module]:
        return [_SeedSlice(self, k) for k in range(self.n)]

    def snapshot(self, k: int) -> nn.Module:
        return _SeedSlice(self, k, frozen=True)

    def loss_ms(self) -> list[float]:
        return [loss_ms(m, self.objective, b, self.device)
                for m, b in zip(self.models(), self.batches, strict=True)]


class TrialStack:
    """Trials of one loss at different learning rates as one vmapped model.

    Every member starts from the same initial weights and reads the same batches (the
    trial seed), as ``run_one`` would give each trial. Each member's weights are leaves of
    their own, in a parameter group of their own with the member's learning rate, so the
    optimizer (Adam, AdamW, SGD, weight decay included) updates each exactly as its own
    optimizer would; each step stacks the live members' weights, vmaps the forward and
    the loss over them (the batch is shared, not copied) and backpropagates into the
    leaves. ``drop(k)``: member k stops training (pruned or diverged): the stack shrinks.
    """

    def __init__(self, job: Job, data: JobData, loss: Loss, cfgs: Sequence[Settings],
                 seed: int):
        from torch.func import functional_call, vmap

        self.device, self.n = torch.device(cfgs[0].device), len(cfgs)
        torch.manual_seed(seed)
        model = job.build_model(data).to(self.device)
        self.names = [n for n, _ in model.named_parameters()]
        self.members = [{n: p.detach().clone().requires_grad_(True)
                         for n, p in model.named_parameters()} for _ in cfgs]
        self.buffers = [{n: b.clone() for n, b in model.named_buffers()} for _ in cfgs]
        self.base = copy.deepcopy(model).to("meta")
        self.objective = job.bind(loss, data)
        self.functional_call = functional_call
        self.live = list(range(self.n))

        def member_loss(params, buffers, x, y):
            output = functional_call(self.base, (params, buffers), (x,))
            return self.objective(output.float(), y)

        self.batched_loss = vmap(member_loss, in_dims=(0, 0, None, None))
        self.opt = make_optimizer(cfgs[0], [
            {"params": list(m.values()), "lr": cfg.lr} for m, cfg in
            zip(self.members, cfgs, strict=True)])
        self.batches = Batches(data, cfgs[0].batch_size, seed)

    def step(self) -> Tensor:
        x, y = self.batches.next()
        params = {n: torch.stack([self.members[k][n] for k in self.live]) for n in self.names}
        buffers = {n: torch.stack([self.buffers[k][n] for k in self.live])
                   for n in self.buffers[0]}
        values = self.batched_loss(params, buffers, x, y)
        self.opt.zero_grad(set_to_none=True)  # a dropped member's grad stays None: no step
        values.sum().backward()  # members share no parameter: each gets its own gradient
        self.opt.step()
        out = torch.zeros(self.n, device=self.device, dtype=values.dtype)
        out[self.live] = values.detach()
        return out

    def drop(self, k: int) -> None:
        if k in self.live:
            self.live.remove(k)

    def models(self) -> list[nn.Module]:
        return [_Member(self, k) for k in range(self.n)]

    def snapshot(self, k: int) -> nn.Module:
        return _Member(self, k, frozen=True)

    def loss_ms(self) -> list[float]:
        return [loss_ms(_Member(self, k), self.objective, self.batches, self.device)
                if k in self.live else math.nan for k in range(self.n)]


class _Member(nn.Module):
    """Member k of a trial stack, as a module for evaluation."""

    def __init__(self, stack: TrialStack, k: int, frozen: bool = False):
        super().__init__()
        self.stack, self.k = stack, k
        self.frozen = ({n: p.detach().clone() for n, p in stack.members[k].items()},
                       {n: b.clone() for n, b in stack.buffers[k].items()}) if frozen else None

    def forward(self, x: Tensor) -> Tensor:
        s = self.stack
        return s.functional_call(s.base, self.frozen or (s.members[self.k], s.buffers[self.k]),
                                 (x,))


class _SeedSlice(nn.Module):
    """Seed k of a stacked model, as a module for evaluation."""

    def __init__(self, stacked: StackedTrainer, k: int, frozen: bool = False):
        super().__init__()
        self.stacked, self.k = stacked, k
        # frozen: a copy of seed k's weights now (select = best), else a live view
        self.frozen = ({n: p[k].detach().clone() for n, p in stacked.params.items()},
                       {n: b[k].clone() for n, b in stacked.buffers.items()}) if frozen else None

    def forward(self, x: Tensor) -> Tensor:
        s = self.stacked
        params, buffers = self.frozen or ({n: p[self.k] for n, p in s.params.items()},
                                          {n: b[self.k] for n, b in s.buffers.items()})
        return s.functional_call(s.base, (params, buffers), (x,))


class Calibration:
    """Whether stacking beats one seed at a time, decided once per (job data, settings,
    number of seeds) on the first loss vmap can batch: the model dominates the step, and
    calibrating every loss cost 13 % of the CI suite's wall time (py-spy). Support (can
    vmap batch this loss: no host sync, no data-dependent shapes) is checked per loss with
    one stacked step, only where the timing says stack.

    Timing: throwaway models (the real runs start afresh); after a warm-up step, three
    interleaved blocks of a few steps each way, best block of each (robust to a busy
    machine); stacked must be at least 15 % faster.
    """

    def __init__(self, steps: int = 5, blocks: int = 3, margin: float = 0.85):
        self.steps, self.blocks, self.margin = steps, blocks, margin
        self.faster: dict[tuple, bool] = {}
        self.batches: dict[tuple, bool] = {}

    def choose(self, job: Job, data: JobData, loss: Loss, cfg: Settings,
               seeds: Sequence[int]) -> bool:
        """Whether to train ``seeds`` of this job and loss stacked."""
        if len(seeds) < 2 or not job.vectorisable:
            return False
        key = (job.data_key, cfg, len(seeds))
        if key not in self.faster:
            faster = self.calibrate(job, data, loss, cfg, seeds)
            if faster is None:  # this loss cannot be batched: no verdict on the job yet
                return False
            self.faster[key] = faster
            self.batches[key + (loss.key,)] = True
        if not self.faster[key]:
            return False
        support = key + (loss.key,)
        if support not in self.batches:
            self.batches[support] = _stacked_or_none(job, data, loss, cfg, seeds) is not None
        return self.batches[support]

    def calibrate(self, job, data, loss, cfg, seeds) -> bool | None:
        """Stacked faster than one seed at a time by the margin; None if it cannot batch."""
        stacked = _stacked_or_none(job, data, loss, cfg, seeds)  # its step is the warm-up
        if stacked is None:
            return None
        single = SingleTrainer(job, data, loss, cfg, seeds[0])
        single.step()
        t_stacked, t_single = math.inf, math.inf
        for _ in range(self.blocks):
            t_stacked = min(t_stacked, self._seconds(stacked))
            t_single = min(t_single, self._seconds(single))
        return t_stacked < self.margin * t_single * len(seeds)

    def _seconds(self, trainer) -> float:
        sync(trainer.device)
        t = time.perf_counter()
        for _ in range(self.steps):
            trainer.step()
        sync(trainer.device)
        return time.perf_counter() - t


def _stacked_or_none(job, data, loss, cfg, seeds) -> StackedTrainer | None:
    """A stacked trainer after one step, or None if vmap cannot batch this job and loss."""
    try:
        stacked = StackedTrainer(job, data, loss, cfg, list(seeds))
        stacked.step()
    except Exception:  # an op vmap cannot batch, a host sync in the loss
        return None
    return stacked
