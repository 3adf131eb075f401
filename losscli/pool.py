"""The worker pool of ``sweep --workers N``: spawned processes each train one run at a
time; the parent writes every row.

A worker that dies (killed, out of memory) makes its run an ``error`` row, which a resume
retries, and is replaced: the sweep goes on. Workers die with the parent: on Linux the
kernel kills them when it dies, even by kill -9 (``PR_SET_PDEATHSIG``, armed before a
worker imports torch: this module imports nothing heavy); elsewhere the parent's closed
pipe ends them after their current run. Ctrl-C reaches the parent only in effect (workers
ignore SIGINT), which stops the pool and kills them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from losscli.jobs import JobData
    from losscli.results import ResultStore, RunResult
    from losscli.sweep import Plan, Progress, RunSpec

__all__ = ["die_with_parent", "execute_pool", "run_spec"]

_DATA: dict[tuple, JobData] = {}  # in a worker: the data of each job, loaded once


def run_spec(spec: RunSpec, on_step: Callable[[int], None] | None = None
             ) -> tuple[RunResult, list]:
    """One run → its row and history rows (what a worker does)."""
    from losscli.engine import run_one
    from losscli.sweep import history_of, result_of

    key = (spec.job.data_key, spec.cfg.device)
    if key not in _DATA:
        _DATA[key] = spec.job.load_data().to(spec.cfg.device)
    data = _DATA[key]
    out = run_one(spec.job, data, spec.loss, spec.cfg, spec.seed, on_step)
    return result_of(spec, data, out), history_of(out)


def _step_messages(conn: Any, spec: RunSpec) -> Callable[[int], None]:
    """A worker's ``on_step``: ``("step", n)`` to the parent about 100 times a run."""
    every = max(1, spec.cfg.steps // 100)

    def report(step: int) -> None:
        if step % every == 0 or step == spec.cfg.steps:
            conn.send(("step", step))
    return report


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies
    (PR_SET_PDEATHSIG); exit at once if the parent died before that was armed."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PDEATHSIG
        except (OSError, AttributeError, ctypes.ArgumentError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _worker_main(conn: Any, threads: int, plugins: tuple[str, ...], parent: int) -> None:
    """A worker: trains each run it is sent and replies, until its pipe closes."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    try:
        import torch

        from losscli.sweep import load_plugins

        torch.set_num_threads(threads)
        load_plugins(plugins)
        broken = ""
    except Exception as exc:  # the parent loaded the same plugins: reported per run
        broken = f"worker start-up failed: {type(exc).__name__}: {exc}"
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("error", broken) if broken else \
                ("ok", run_spec(spec, _step_messages(conn, spec)))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


class _Worker:
    """One worker process, its pipe, and the run it is training (``spec``; None: idle)."""

    def __init__(self, ctx: Any, threads: int, plugins: tuple[str, ...]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, daemon=True,
                                args=(child, threads, plugins, os.getpid()))
        self.proc.start()
        child.close()
        self.spec: RunSpec | None = None

    def give(self, spec: RunSpec) -> None:
        self.spec = spec
        try:
            self.conn.send(spec)
        except OSError:  # it died while idle: reply() reports it
            pass

    def reply(self, progress: Progress) -> tuple[str, Any] | None:
        """``("ok", (row, history))``, ``("error", why)`` when the run raised, ``("died",
        why)`` when the process died, or None while it trains (its steps go to
        ``progress``)."""
        try:
            while self.conn.poll():
                message = self.conn.recv()
                if message[0] != "step":
                    return message
                progress.step(message[1], self.spec.key if self.spec else None)
        except (EOFError, OSError):
            pass
        else:
            if self.proc.is_alive():
                return None
        self.proc.join(5)
        code = self.proc.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else \
            f"exit code {code}"
        return "died", f"the worker process died ({how}) while training this run"

    def stop(self) -> None:
        self.conn.close()
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


def execute_pool(plan: Plan, todo: list[RunSpec], store: ResultStore, workers: int,
                 plugins: Sequence[str], progress: Progress) -> None:
    """Train ``todo`` on ``workers`` spawned processes (CPU threads divided among them),
    writing each row as its run finishes; the workers are killed however this ends."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = list(todo)
    progress.phase(f"starting {workers} worker processes (each loads torch and its data)")
    pool = [_Worker(ctx, threads, tuple(plugins)) for _ in range(min(workers, len(todo)))]
    try:
        while queue or any(w.spec for w in pool):
            for w in pool:
                if w.spec is None and queue:
                    progress.start(queue[:1])
                    w.give(queue.pop(0))
            busy = [w for w in pool if w.spec is not None]
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for i, w in enumerate(pool):
                reply = w.reply(progress) if w.spec is not None else None
                if reply is None:
                    continue
                _write(plan, store, progress, w.spec, reply)
                w.spec = None
                if reply[0] == "died":
                    w.stop()
                    pool[i] = _Worker(ctx, threads, tuple(plugins))
    finally:
        for w in pool:
            w.stop()


def _write(plan: Plan, store: ResultStore, progress: Progress, spec: RunSpec,
           reply: tuple[str, Any]) -> None:
    """A worker's reply as rows: its row and history, or an ``error`` row saying why."""
    from losscli.engine import RunOutcome
    from losscli.sweep import result_of

    kind, value = reply
    if kind == "ok":
        result, history = value
    else:
        out = RunOutcome(status="error", error=value)
        result, history = result_of(spec, plan.data[spec.job.data_key], out), []
    store.append(result, history)
    progress.done(spec, result)
