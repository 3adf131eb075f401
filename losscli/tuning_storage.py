"""Tuning from several processes or machines: one Optuna study per tuned (variant, loss) in
an RDB storage (``--tune-storage sqlite:///PATH.db`` on one machine, ``postgresql://...``
across machines).

Every process (each ``torchrun`` rank, or separate ``losscli`` commands) works through the
same grid, in the order the in-memory tuner uses (Optuna's ``GridSampler``, seed 0), and
runs each grid point exactly once across all of them:

- **Claims.** A process claims the first grid point nobody holds by creating a trial that
  names it (``losscli_grid``) in one transaction. Optuna numbers trials under a lock on the
  study, so numbers follow commit order; when two processes claim the same point at once,
  the lower number wins and the other marks its trial FAIL and claims the next point.
  (Optuna's own ``optimize`` on a shared study is not enough here: ``GridSampler``
  re-evaluates running points once the grid is exhausted, and popping enqueued trials is
  not atomic on SQLite.)
- **Pruning.** Each trial reports its validation curve to the study; Optuna's
  ``SuccessiveHalvingPruner`` compares it with the trials that reached each rung before
  it, in any process (asynchronous halving, as in ASHA, Li et al. 2020). This differs
  from the in-memory study's synchronous rungs (``losscli.tuning.tune_group``), which
  compare every trial at a rung with all the others: here the first trials of the grid
  run longer, a tuning costs more, and the winner can differ. Trials left behind by a
  killed process are hidden from the pruner.
- **Liveness.** A running trial records Optuna's heartbeat (``RDBStorage``'s
  ``heartbeat_interval``); one without a beat for ``GRACE_S`` is failed
  (``optuna.storages.fail_stale_trials``) and its point claimed again. On the same machine
  a trial whose process has died is failed at once.
- **The winner.** When every point of the grid is finished, each process reads the best
  completed trial from the storage (ties: the first in grid order), so every rank trains
  the same final runs.

A process writes the trials it ran to its own run directory (or shard); a trial whose row
is already there is replayed from it, never retrained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from losscli.errors import UsageError
from losscli.files import clip

__all__ = ["GRACE_S", "HEARTBEAT_S", "check_url", "grid_order", "open_storage", "shown_url",
           "study_name", "tune_shared"]

HEARTBEAT_S = 10  # a running trial's heartbeat period
GRACE_S = 60  # a running trial without a heartbeat for this long is failed and re-run
POLL_S = 1.0  # how often a process with nothing to claim looks at the study again
FLAG = "--tune-storage"
BACKENDS = ("sqlite", "postgresql", "mysql")
DRIVERS = {"postgresql": "pip install psycopg2-binary", "mysql": "pip install pymysql and "
           "write mysql+pymysql://..."}
# system attributes of a trial (Optuna's own: fixed_params, completed_rung_<k>)
GRID, OWNER, STATUS = "losscli_grid", "losscli_owner", "losscli_status"


# --------------------------------------------------------------------------- the URL


def shown_url(url: str) -> str:
    """``url`` with its password masked (for messages and meta.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (a malformed URL: show it clipped)
        return clip(url)


def check_url(url: str, root: Path) -> str:
    """Refuse a storage URL that cannot work, before anything trains (a UsageError, exit 2).

    SQLite needs a file path whose folder exists, or lies inside the run directory ``root``
    (created with it), and is writable; other backends need their driver installed.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    hint = ("write sqlite:///PATH.db (processes on one machine) or "
            "postgresql://USER@HOST/DB (several machines)")
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except (ArgumentError, ValueError, TypeError) as exc:
        raise UsageError(f"{FLAG} {clip(url)!r} is not a database URL ({exc}): {hint}") from None
    if backend not in BACKENDS:
        raise UsageError(f"{FLAG} {shown_url(url)!r}: unsupported database {backend!r} "
                         f"(use {', '.join(BACKENDS)}): {hint}")
    if backend == "sqlite":
        _check_sqlite(parsed.database, Path(root), url)
        return url
    try:  # imports the driver (connects to nothing)
        from sqlalchemy import create_engine

        create_engine(url).dispose()
    except Exception as exc:  # noqa: BLE001  (missing driver, bad driver name, bad query)
        how = DRIVERS.get(backend, "install its driver")
        raise UsageError(f"{FLAG} {shown_url(url)!r}: cannot use this URL ({exc}); "
                         f"{backend} needs its Python driver: {how}") from None
    return url


def _check_sqlite(database: str | None, root: Path, url: str) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        raise UsageError(f"{FLAG} {clip(url)!r}: SQLite needs a file path, e.g. "
                         "sqlite:///results/runs/NAME/optuna.db (an in-memory database is "
                         "not shared: leave --tune-storage out to tune in one process)")
    path = Path(database)
    if path.is_dir():
        raise UsageError(f"{FLAG} {clip(url)!r}: {path} is a directory, not a database file")
    parent = path.parent.absolute()
    if parent.exists():
        if not parent.is_dir():
            raise UsageError(f"{FLAG} {clip(url)!r}: {parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{FLAG} {clip(url)!r}: the folder {parent} is not writable "
                             "(SQLite writes a journal beside the database)")
        if path.exists() and not (path.is_file() and os.access(path, os.R_OK | os.W_OK)):
            raise UsageError(f"{FLAG} {clip(url)!r}: {path} is not a readable and writable file")
    elif not parent.is_relative_to(root.absolute()):
        raise UsageError(f"{FLAG} {clip(url)!r}: the folder {parent} does not exist; create "
                         f"it, or put the database inside the run directory ({root})")


def open_storage(url: str):
    """Optuna's ``RDBStorage`` for ``url`` with the heartbeat on; several processes may open
    a new database at once (creating its tables races: retried)."""
    from sqlalchemy.engine import make_url

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 120}}  # wait for the other writers' locks
    else:
        engine = {"pool_pre_ping": True}
    last: Exception | None = None
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                              heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S)
        except Exception as exc:  # noqa: BLE001  (tables created by another process meanwhile)
            last = exc
            time.sleep(0.2 + random.random() * attempt)
    raise UsageError(f"{FLAG} {shown_url(url)!r}: cannot open the database: "
                     f"{clip(str(last), 300)}")


# --------------------------------------------------------------------------- one study


def study_name(job: str, loss: str, ident: dict[str, Any]) -> str:
    """A stable, readable study name: the job, the loss and a hash of everything that
    changes the trials (the run identity of the group's first seed, the space, the budget
    and the pruner)."""
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return f"losscli:{job}:{clip(loss, 80)}:{digest[:16]}"


def grid_order(space: dict[str, list], n_trials: int) -> list[dict[str, Any]]:
    """The grid points in the order the in-memory tuner tries them (``GridSampler``, seed 0),
    the first ``n_trials`` of them."""
    from losscli.tuning import SAMPLER_SEED

    order: list[dict[str, Any]] = []

    def record(trial: optuna.Trial) -> float:
        order.append({k: trial.suggest_categorical(k, v) for k, v in space.items()})
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=SAMPLER_SEED))
    study.optimize(record, n_trials=min(n_trials, math.prod(len(v) for v in space.values())))
    return order


def tune_shared(storage, name: str, space: dict[str, list], n_trials: int, maximize: bool,
                steps: int, run_trial: Callable, wait: Callable[[str], None] | None = None,
                first_rung: int | None = None) -> dict[str, Any]:
    """``losscli.tuning.tune_group`` on the shared study ``name`` in ``storage``: run this
    process's share of the grid, wait for the others', return the best parameters (the
    same in every process)."""
    from losscli.tuning import ETA, FIRST_RUNG

    order = grid_order(space, n_trials)
    study = _study(storage, name, maximize, _LivePruner(optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(1, steps // (first_rung or FIRST_RUNG)), reduction_factor=ETA)))
    told = False
    while True:
        held = _held(_reap(study), len(order))
        free = [i for i in range(len(order)) if i not in held]
        if free:
            trial = _claim(study, free[0], order[free[0]])
            if trial is not None:
                _run(study, trial, free[0], space, run_trial)
            continue
        running = sum(not t.state.is_finished() for t in held.values())
        if not running:
            break
        if wait is not None and not told:
            wait(f"waiting for {running} trial{'s' * (running > 1)} of {name} running "
                 "in other processes")
            told = True
        time.sleep(POLL_S)
    return _best(held, maximize)


def _study(storage, name: str, maximize: bool, pruner):
    for attempt in range(6):  # two processes creating the study at once: one loads it
        try:
            # the sampler is never asked: every trial's parameters are fixed by its claim
            return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                       direction="maximize" if maximize else "minimize",
                                       sampler=optuna.samplers.RandomSampler(seed=0),
                                       pruner=pruner)
        except (optuna.exceptions.DuplicatedStudyError,
                optuna.exceptions.StorageInternalError):
            if attempt == 5:
                raise
            time.sleep(0.2 + random.random() * attempt)
    raise AssertionError("unreachable")


def _owner() -> dict[str, Any]:
    """Who runs a trial: host, PID namespace (containers sharing a host name), PID, thread."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return {"host": socket.gethostname(), "pidns": ns, "pid": os.getpid(),
            "thread": threading.get_native_id()}


def _dead(owner: Any) -> bool:
    """Whether a trial's owner is a process of this machine that no longer runs. A trial of
    this process counts as dead when its thread is this one (which runs no trial while it
    claims: the trial is a previous process's that had the same PID) or has ended."""
    me = _owner()
    if not isinstance(owner, dict) or os.name != "posix" or \
            (owner.get("host"), owner.get("pidns")) != (me["host"], me["pidns"]):
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == me["pid"]:
        thread = owner.get("thread")
        return thread == me["thread"] or thread not in {t.native_id for t in
                                                         threading.enumerate()}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def _live(t) -> bool:
    """Whether trial ``t`` holds its grid point: running, finished by a process (complete,
    pruned, or failed with a losscli status: diverged, error), not left behind by a killed
    one (failed without a status) nor a lost claim."""

    return t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and STATUS in t.system_attrs)


def _reap(study) -> list:
    """The study's trials, after failing the stale ones (no heartbeat for the grace period,
    or a dead owner on this machine)."""

    optuna.storages.fail_stale_trials(study)
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    dead = [t for t in trials if t.state == TrialState.RUNNING and _dead(t.system_attrs.get(OWNER))]
    for t in dead:
        _fail(study._storage, t._trial_id)
    return study._storage.get_all_trials(study._study_id, deepcopy=False) if dead else trials


def _fail(storage, trial_id: int) -> None:

    try:
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another process failed it first


def _held(trials: list, size: int) -> dict[int, Any]:
    """Grid position → the trial holding it (the lowest-numbered live claim)."""
    held: dict[int, Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        i = t.system_attrs.get(GRID)
        if isinstance(i, int) and 0 <= i < size and i not in held and _live(t):
            held[i] = t
    return held


def _claim(study, position: int, params: dict[str, Any]):
    """Claim grid point ``position``: an ``optuna.Trial`` running it, or None when another
    process claimed it first."""
    storage = study._storage
    template = FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
        datetime_complete=None, params={}, distributions={}, user_attrs={},
        system_attrs={"fixed_params": params, GRID: position, OWNER: _owner()},
        intermediate_values={}, trial_id=0)
    trial_id = storage.create_new_trial(study._study_id, template_trial=template)
    storage.record_heartbeat(trial_id)
    number = storage.get_trial(trial_id).number
    for t in storage.get_all_trials(study._study_id, deepcopy=False):
        if t.number < number and t.system_attrs.get(GRID) == position and _live(t):
            _fail(storage, trial_id)  # lost the race: the earlier claim runs it
            return None
    return optuna.Trial(study, trial_id)


def _run(study, trial, position: int, space: dict[str, list], run_trial: Callable) -> None:
    """Train (or replay) one claimed trial with a heartbeat, and tell the study."""

    storage = study._storage
    params = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or HEARTBEAT_S

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # noqa: BLE001  (a busy database: the next beat retries)
                pass

    thread = threading.Thread(target=beat, name="losscli-heartbeat", daemon=True)
    thread.start()

    def ask_prune(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    try:
        outcome = run_trial(position, params, ask_prune)
        if outcome.status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif outcome.status == "ok" and math.isfinite(outcome.value):
            study.tell(trial, outcome.value)
        else:  # diverged or errored: tried, so the point is not run again
            storage.set_trial_system_attr(trial._trial_id, STATUS, outcome.status)
            study.tell(trial, state=TrialState.FAIL)
    except BaseException:  # interrupted: the point is free again at once
        _fail(storage, trial._trial_id)
        raise
    finally:
        stop.set()
        thread.join()


def _best(held: dict[int, Any], maximize: bool) -> dict[str, Any]:
    """The best completed trial's parameters (ties: the first in grid order, as in memory)."""

    best = None
    for i in sorted(held):
        t = held[i]
        if t.state == TrialState.COMPLETE and (best is None or (
                t.value > best.value if maximize else t.value < best.value)):
            best = t
    if best is None:
        raise RuntimeError("no tuning trial completed (all diverged, errored or pruned)")
    return dict(best.params)


class _LiveTrials:
    """A study as the pruner sees it: without the trials killed processes left behind."""

    def __init__(self, study):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if _live(t) or GRID not in t.system_attrs]


class _LivePruner(optuna.pruners.BasePruner):
    """``inner`` (successive halving) over the live trials only, so a study resumed after a
    kill asks the same pruning questions as one that was never interrupted."""

    def __init__(self, inner: optuna.pruners.BasePruner):
        self.inner = inner

    def prune(self, study, trial) -> bool:
        return self.inner.prune(_LiveTrials(study), trial)
