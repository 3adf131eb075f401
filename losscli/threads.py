"""torch's CPU threads on a shared machine. Imports neither torch nor anything heavy.

torch's CPU kernels run on OpenMP (the pip wheels bundle GNU libgomp), whose workers
spin-wait for new work at the end of every parallel region. When other processes hold
the cores those workers need, every region waits for the scheduler instead: a small
training loop on this project's 2-core machine ran 7-40x slower with one competing
process per core (``benchmarks/contention.py``).

What was measured and chosen (2-core VM, torch 2.14.1):

* ``OMP_WAIT_POLICY=PASSIVE`` (or a short ``GOMP_SPINCOUNT``) cures the slowdown but costs
  on an idle machine, where every parallel region must wake a sleeping worker on a halted
  CPU: 8 % of mnist's samples/s and about 60 % of reg's (a small MLP whose steps are
  many short regions). The issue's budget for the idle cost is 3 %.
* One thread cures it too; on an idle machine it is 5 % faster on reg and 38 % slower on
  mnist. So the thread count has to follow the load: :class:`ThreadGovernor` gives torch
  the CPUs that other processes leave free, looked at when each run starts
  (:func:`govern_torch_threads`). On an idle machine it leaves torch's defaults alone.

``KMP_BLOCKTIME`` is Intel OpenMP's knob; libgomp does not read it. torch already keeps
its threads within the process's CPU affinity, but not within a cgroup CPU quota
(``docker --cpus``, Kubernetes limits): the governor caps the count at
:func:`available_cpus`, which counts both. A thread count the user fixed with
``OMP_NUM_THREADS`` is kept: no governor then.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ThreadGovernor", "available_cpus", "cgroup_cpu_limit", "govern_torch_threads",
           "held", "note_start"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
Sample = tuple[float, float, float]  # (monotonic s, busy CPU s of our CPUs, our own CPU s)
_START: Sample | None = None
_GOVERNOR: ThreadGovernor | None = None
_HELD = 0  # > 0: the count is held (:func:`held`)


def note_start() -> None:
    """Sample the machine now (``import losscli`` does, before torch loads), so that the
    governor's first look, when training starts, already covers a few seconds."""
    global _START
    _START = _sample(PROC_STAT, _affinity())


def govern_torch_threads(interval: float = 0.25) -> ThreadGovernor | None:
    """Let a :class:`ThreadGovernor` set torch's thread count at the first optimizer step
    of every run (a run = a new optimizer) in this process, and once now. Installed once:
    later calls return the same governor. None, and nothing installed, when the user fixed
    the count with ``OMP_NUM_THREADS``.

    Not during a run: on CPU the thread count changes float rounding, so a run trains at
    one count, which its ``threads`` column records; a load that starts mid-run is met at
    the next run."""
    global _GOVERNOR
    if _GOVERNOR is None and "OMP_NUM_THREADS" not in os.environ:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        governor = ThreadGovernor(interval=interval, start=_START)
        last: list[weakref.ref] = []

        def at_new_optimizer(optimizer, args, kwargs) -> None:
            if _HELD:
                return
            if not last or last[0]() is not optimizer:  # otherwise well under a µs per step
                last[:] = [weakref.ref(optimizer)]
                governor()

        register_optimizer_step_pre_hook(at_new_optimizer)
        governor()
        _GOVERNOR = governor
    return _GOVERNOR


@contextmanager
def held() -> Iterator[None]:
    """Inside, the governor looks once (now) and then leaves the count alone: the trials of
    a tuning rung take turns on their threads, each with its own optimizer, and each must
    train at one count (:func:`govern_torch_threads`)."""
    global _HELD
    if _GOVERNOR is not None and not _HELD:
        _GOVERNOR()
    _HELD += 1
    try:
        yield
    finally:
        _HELD -= 1


class ThreadGovernor:
    """Keeps torch's CPU threads off the cores other processes hold, and gives them back
    when those processes stop.

    Call it from the thread that runs torch, e.g. when a run starts. If ``interval``
    seconds have passed since its last look, it reads how much CPU time the process's
    CPUs spent busy since then (``/proc/stat``) and subtracts the process's own
    (``time.process_time``, all its threads): the rest is other processes. torch then
    gets the CPUs they left, rounded, at least 1 and at most ``max_threads``. With one
    competing process per core that is one thread, so no OpenMP worker waits for a core.
    Without ``/proc/stat`` it does nothing.

    Args:
        max_threads: the count when the CPUs are free (default: torch's at the first
            look, capped at :func:`available_cpus`).
        interval: the shortest time between looks at the machine.
        set_threads: what applies a count (default ``torch.set_num_threads``).
        start: an earlier sample to measure the first look from (:func:`note_start`).
    """

    def __init__(self, max_threads: int | None = None, interval: float = 0.5,
                 set_threads: Callable[[int], None] | None = None,
                 proc_stat: Path = PROC_STAT, start: Sample | None = None):
        self.max_threads, self.interval, self._set = max_threads, interval, set_threads
        self._proc_stat, self._cpus = proc_stat, _affinity()
        self._last = start or _sample(proc_stat, self._cpus)
        self.threads: int | None = None

    def __call__(self, *_: object) -> None:
        if self._last is None or time.monotonic() - self._last[0] < self.interval:
            return
        now = _sample(self._proc_stat, self._cpus)
        if now is None:
            return
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)  # in CPUs
        self._apply(math.floor(len(self._cpus) - others + 0.5))

    def _apply(self, free: int) -> None:
        if self._set is None:
            import torch  # only here: this module must import without torch

            self._set = torch.set_num_threads
            self.max_threads = self.max_threads or min(torch.get_num_threads(),
                                                       available_cpus())
        want = max(1, min(self.max_threads or 1, free))
        if want != self.threads:
            self._set(want)
            self.threads = want


def _affinity() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _sample(proc_stat: Path, cpus: list[int]) -> Sample | None:
    try:
        lines = proc_stat.read_text().splitlines()
    except OSError:
        return None
    names, busy = {f"cpu{c}" for c in cpus}, 0
    for line in lines:
        name, *ticks = line.split()
        if name in names:  # user nice system idle iowait irq softirq steal ...
            busy += sum(int(x) for x in ticks[:3]) + sum(int(x) for x in ticks[5:7])
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded
    up: a 1.5-CPU quota is used fully only by two threads)."""
    cpus = len(_affinity()) or os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT,
                     proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors, v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None when there is none or no cgroup fs."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            limits += _walk_up(cgroup_root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                limits += _walk_up(cgroup_root / mount, path, _v1_limit)
    return min(limits, default=None)


def _walk_up(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """Limits from ``mount/path`` up to ``mount`` (a container sees its own cgroup at the
    mount root while /proc/self/cgroup may name the host's path: both are looked at)."""
    parts = [p for p in path.split("/") if p]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [x for x in map(read, dirs) if x is not None]


def _v2_limit(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(d: Path) -> float | None:
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
