"""Where a training step's time goes, and whether it waits on the host.

``profile_steps`` runs the engine's own training step under ``torch.profiler`` and returns
the time per step, the operators that took it, and every operator that forces a
device-to-host sync on a GPU (``.item()``, ``bool(tensor)``, boolean-mask indexing,
``nonzero``, ``unique``). On CPU those operators are cheap, but their presence in the step is
what costs a GPU its pipelining, so the check is meaningful on any device: the test suite
asserts there are none in any job's step with its default losses.

    python benchmarks/step_profile.py --jobs seg,det --steps 10
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from losscli.engine import SingleTrainer, sync
from losscli.jobs import Job, JobData
from losscli.losses import Loss
from losscli.settings import Settings

__all__ = ["SYNC_OPS", "StepProfile", "profile_steps"]

# aten operators that read a device value on the host (a CPU-GPU sync on CUDA)
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",  # .item(), float(t), int(t), bool(t), if t: ...
    "aten::is_nonzero",
    "aten::nonzero",  # boolean-mask indexing, torch.where(cond) with one argument
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
    "aten::equal",
})


@dataclass
class StepProfile:
    ms_per_step: float  # wall time, profiler on (its overhead included)
    syncs: dict[str, int]  # sync operator -> calls per step (outside the optimizer's step)
    top: list[tuple[str, float, int]]  # (operator, self ms per step, calls per step)
    aten_share: float  # self time of all operators / wall time: the rest is Python


def _in_optimizer_step(event) -> bool:
    """Inside ``Optimizer.step``: torch's Adam reads its step count with ``.item()``, but
    that count lives on the CPU (unless capturable or fused), so no device is waited on.
    Inside ``aten::_assert_async`` too: on CPU it reads its flag at once, on CUDA it is a
    device-side assert that never waits (dice_ce checks its labels that way)."""
    while event is not None:
        if event.name.startswith("Optimizer.step") or event.name == "aten::_assert_async":
            return True
        event = event.cpu_parent
    return False


def profile_steps(job: Job, data: JobData, loss: Loss, cfg: Settings, steps: int = 5,
                  warmup: int = 3, top: int = 8) -> StepProfile:
    """Profile ``steps`` training steps of a fresh model (after ``warmup`` untimed ones)."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(cfg.device)
    trainer = SingleTrainer(job, data, loss, cfg, 0)
    for _ in range(warmup):
        trainer.step()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        sync(device)
        wall = time.perf_counter() - t
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    syncs: dict[str, int] = {}
    for e in prof.events():
        if e.name in SYNC_OPS and not _in_optimizer_step(e):
            syncs[e.name] = syncs.get(e.name, 0) + 1
    syncs = {k: math.ceil(v / steps) for k, v in syncs.items()}
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    self_us = sum(e.self_cpu_time_total for e in events)
    return StepProfile(
        ms_per_step=1000 * wall / steps,
        syncs=syncs,
        top=[(e.key, e.self_cpu_time_total / 1000 / steps, e.count // steps)
             for e in ranked[:top]],
        aten_share=self_us / 1e6 / wall,
    )
