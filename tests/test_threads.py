"""losscli.threads: the CPUs available, and the governor that gives torch the free ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from losscli import threads


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_available_cpus_follows_affinity(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert threads.available_cpus(tmp_path, tmp_path / "no-cgroup") == 3


@pytest.mark.parametrize(("files", "limit"), [
    ({"proc": "0::/job\n", "fs/job/cpu.max": "150000 100000\n"}, 1.5),
    ({"proc": "0::/a/b\n", "fs/a/cpu.max": "max 100000\n", "fs/a/b/cpu.max": "max 100000\n"},
     None),
    # the tightest of the cgroup and its ancestors; a container sees its own at the root
    ({"proc": "0::/a/b\n", "fs/a/cpu.max": "100000 100000\n",
      "fs/a/b/cpu.max": "300000 100000\n"}, 1.0),
    ({"proc": "0::/host/path\n", "fs/cpu.max": "200000 100000\n"}, 2.0),
    # cgroup v1: cfs quota / period; -1 is no quota
    ({"proc": "2:cpuacct:/\n1:cpu:/\n0::/\n", "fs/cpu/cpu.cfs_quota_us": "50000\n",
      "fs/cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"proc": "3:cpu,cpuacct:/x\n", "fs/cpu,cpuacct/x/cpu.cfs_quota_us": "-1\n",
      "fs/cpu,cpuacct/x/cpu.cfs_period_us": "100000\n"}, None),
])
def test_cgroup_cpu_limit(tmp_path, files, limit) -> None:
    _write(tmp_path, files)
    assert threads.cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc") == limit


def test_quota_caps_affinity_rounded_up(monkeypatch, tmp_path) -> None:
    _write(tmp_path, {"proc": "0::/\n", "fs/cpu.max": "150000 100000\n"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert threads.available_cpus(tmp_path / "fs", tmp_path / "proc") == 2


class _Clock:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def monotonic(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu


def _stat(path: Path, busy_s: float) -> None:
    """Two CPUs that together spent ``busy_s`` seconds busy (as user time), at 100 ticks/s."""
    half = round(busy_s * 50)
    path.write_text(f"cpu  {2 * half} 0 0 0 0 0 0 0 0 0\n"
                    f"cpu0 {half} 0 0 1000 0 0 0 0 0 0\ncpu1 {half} 0 0 1000 0 0 0 0 0 0\n")


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A 2-CPU machine whose /proc/stat and clocks the test drives."""
    clock, stat = _Clock(), tmp_path / "stat"
    monkeypatch.setattr(threads, "time", clock)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    _stat(stat, 0)
    return clock, stat


def test_governor_gives_torch_the_cpus_others_leave(machine) -> None:
    clock, stat = machine
    applied: list[int] = []
    gov = threads.ThreadGovernor(max_threads=2, set_threads=applied.append, proc_stat=stat)
    # 1 s: both CPUs busy, half of it this process: another process holds a core
    clock.wall, clock.cpu = 1.0, 1.0
    _stat(stat, 2.0)
    gov()
    assert applied == [1]
    clock.wall = 1.2  # within the interval: no look at the machine
    _stat(stat, 4.0)
    gov()
    assert applied == [1]
    clock.wall, clock.cpu = 2.0, 2.0  # the other process keeps its core: no change
    gov()
    clock.wall, clock.cpu = 3.0, 3.0  # then it stops: both CPUs free again
    _stat(stat, 5.0)
    gov()
    assert applied == [1, 2] and gov.threads == 2


def test_governor_leaves_an_idle_machine_alone(machine) -> None:
    clock, stat = machine
    applied: list[int] = []
    gov = threads.ThreadGovernor(max_threads=2, set_threads=applied.append, proc_stat=stat)
    clock.wall, clock.cpu = 1.0, 1.9  # this process alone, on both CPUs (and a bit of noise)
    _stat(stat, 2.0)
    gov()
    assert applied == [2]


def test_governor_without_proc_stat_does_nothing(tmp_path) -> None:
    applied: list[int] = []
    gov = threads.ThreadGovernor(max_threads=2, interval=0, set_threads=applied.append,
                                 proc_stat=tmp_path / "missing")
    gov()
    assert applied == []


@pytest.fixture
def hooks(monkeypatch) -> tuple[list, list]:
    """(the hooks govern_torch_threads() installs, instead of into torch's global ones;
    one entry per look the governor takes at the machine)."""
    import torch.optim.optimizer as optim

    installed: list = []
    looks: list[int] = []
    monkeypatch.setattr(optim, "register_optimizer_step_pre_hook", installed.append)
    monkeypatch.setattr(threads, "_GOVERNOR", None)
    monkeypatch.setattr(threads.ThreadGovernor, "__call__", lambda self: looks.append(1))
    return installed, looks


def test_govern_keeps_a_user_thread_count(hooks, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.govern_torch_threads() is None and hooks == ([], [])


def test_govern_looks_when_each_run_starts(hooks, monkeypatch) -> None:
    """Once when installed, then at the first step of each new optimizer (a run): the
    thread count never changes in the middle of a run."""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    installed, looks = hooks
    gov = threads.govern_torch_threads()
    assert isinstance(gov, threads.ThreadGovernor) and len(installed) == 1
    assert threads.govern_torch_threads() is gov and len(installed) == 1  # installed once
    hook = installed[0]
    assert looks == [1]
    run1 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    run2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for opt in (run1, run1, run1, run2, run2):
        hook(opt, (), {})
    assert len(looks) == 3


def test_held_looks_once_then_leaves_the_count_while_trials_take_turns(hooks, monkeypatch
                                                                      ) -> None:
    """The trials of a tuning rung alternate optimizers on parked threads: inside
    ``held()`` the governor looks once, at the start, and not at each switch."""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    installed, looks = hooks
    threads.govern_torch_threads()
    hook = installed[0]
    a, b = (torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1) for _ in range(2))
    with threads.held():
        assert len(looks) == 2  # installed, then once on entering
        for opt in (a, b, a, b):
            hook(opt, (), {})
        with threads.held():  # nested: no second look
            hook(a, (), {})
        assert len(looks) == 2
    hook(b, (), {})  # released: the next new optimizer is looked at again
    assert len(looks) == 3


def test_governor_caps_torch_at_the_available_cpus(machine, monkeypatch) -> None:
    import torch

    clock, stat = machine
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)  # e.g. a 1-CPU cgroup quota
    applied: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", applied.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    gov = threads.ThreadGovernor(proc_stat=stat)
    clock.wall, clock.cpu = 1.0, 1.0
    _stat(stat, 1.0)  # only this process
    gov()
    assert applied == [1]


def test_import_losscli_does_not_import_torch() -> None:
    """``losscli --help`` stays instant: the thread module is torch-free."""
    code = "import sys, losscli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
