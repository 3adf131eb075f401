"""Equal tuning per loss on the validation split (Optuna), then fresh seeds for the winner.

Every loss of a job variant gets the same search: the same learning-rate grid (log-spaced
over three decades around the job's default, 7 values) and, where asked, a grid of its own
parameters (``focal:gamma=[0.5,1,2,5]``); the same number of trials; the same successive
halving (reduction factor 3, rungs at 1/9, 1/3 and the full budget, synchronous: see
:func:`tune_group`) on the validation metric. Trials never touch the test split. The
best completed trial's settings are retrained with the requested seeds
(``phase = final``) and only those runs are scored on test.

Trials are runs in the store (``phase = tune``, with ``trial`` and ``rung``), written as each
finishes. The study is rebuilt in memory from the store on every start: a stored trial is
replayed (its validation curve reported step by step, parking at the same rungs), so
after a kill -9 the same command resumes where it stopped, without redoing a finished
trial, and makes the same choices (the grid order of ``GridSampler`` with a fixed seed;
trials cut off by the kill train again from the start, to the same numbers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from losscli.errors import UsageError
from losscli.losses import Loss, create_loss
from losscli.losses.registry import format_value, parse_value

__all__ = ["LR_FACTORS", "Halving", "Tune", "lr_grid", "parse_tune", "promoted",
           "rung_steps", "tune_group"]

# the default learning-rate grid: the job's lr times 10^(-1.5 .. 1.5) in half decades
LR_FACTORS = (10 ** -1.5, 0.1, 10 ** -0.5, 1.0, 10 ** 0.5, 10.0, 10 ** 1.5)
ETA, FIRST_RUNG = 3, 9  # successive halving: reduction factor, first rung at budget / 9
SAMPLER_SEED = 0


@dataclass(frozen=True)
class Tune:
    """What to tune: the learning rate (a grid, or the default grid) and loss parameters
    (loss name → parameter → values). ``trials``: the budget per loss (default: the size
    of the largest grid, so every loss's whole grid fits). ``first_rung``: successive
    halving first compares the trials at budget / ``first_rung`` (default 9; 3 trades
    cost for less short-horizon bias; 1: every trial trains the full budget)."""

    lr: tuple[float, ...] | None = None  # () = the default grid around the job's lr
    params: dict[str, dict[str, tuple]] = field(default_factory=dict)
    trials: int | None = None
    first_rung: int = FIRST_RUNG  # the first comparison at budget / first_rung

    def grid(self, loss: Loss, default_lr: float) -> dict[str, list]:
        """The search space of ``loss``: ``lr`` and ``<term>.<param>`` axes."""
        space: dict[str, list] = {}
        if self.lr is not None:
            space["lr"] = list(self.lr or lr_grid(default_lr))
        for term in loss.terms:
            for param, values in self.params.get(term.info.name, {}).items():
                space[f"{term.info.name}.{param}"] = list(values)
        return space


def lr_grid(default: float) -> tuple[float, ...]:
    """Seven learning rates over three decades around ``default`` (3 significant digits)."""
    return tuple(float(f"{default * f:.3g}") for f in LR_FACTORS)


def parse_tune(items: Sequence[str]) -> Tune | None:
    """``--tune lr``, ``--tune lr=[1e-4,1e-3]``, ``--tune focal:gamma=[0.5,1,2]``,
    ``--tune trials=12``, ``--tune first_rung=3`` (repeatable) → a ``Tune`` (None when
    nothing is tuned)."""
    lr, params, trials, first = None, {}, None, FIRST_RUNG
    for item in items:
        head, colon, body = item.partition(":")
        key, eq, value = head.partition("=")
        if not colon and key.strip() == "lr":
            lr = _values(value, item, float) if eq else ()
        elif not colon and key.strip() == "trials" and eq:
            trials = _count(value, item)
        elif not colon and key.strip() == "first_rung" and eq:
            first = _count(value, item, "first_rung")
        elif colon and not eq:
            params.setdefault(head.strip(), {}).update(_param_grid(body, item))
        else:
            raise UsageError(f"--tune takes lr, lr=[...], trials=N, first_rung=N or "
                             f"LOSS:PARAM=[...], got {item!r}")
    return Tune(lr, params, trials, first) if lr is not None or params else None


def _count(text: str, item: str, what: str = "trials") -> int:
    value = parse_value(text.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--tune {item}: {what} must be an integer >= 1")
    return value


def _values(text: str, item: str, kind: type | None = None) -> tuple:
    value = parse_value(text.strip())
    values = tuple(value) if isinstance(value, tuple | list) else (value,)
    if not values or (kind is float and not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)):
        raise UsageError(f"--tune {item}: give a non-empty list of positive numbers")
    return tuple(float(v) for v in values) if kind is float else values


def _param_grid(body: str, item: str) -> dict[str, tuple]:
    grid = {}
    for part in _split_params(body):
        name, eq, value = part.partition("=")
        if not eq or not name.strip():
            raise UsageError(f"--tune {item}: write LOSS:PARAM=[v1,v2,...]")
        grid[name.strip()] = _values(value, item)
    return grid


def _split_params(body: str) -> list[str]:
    """``a=[1,2],b=3`` → ``["a=[1,2]", "b=3"]`` (commas inside brackets stay)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    return [*parts, body[start:]]


# --------------------------------------------------------------------------- one study


def configure(loss: Loss, params: dict[str, Any]) -> Loss:
    """``loss`` with the sampled ``<term>.<param>`` values set (lr is not a loss matter)."""
    terms = []
    for term in loss.terms:
        values = dict(term.params)
        values.update({k.split(".", 1)[1]: v for k, v in params.items()
                       if k.startswith(term.info.name + ".")})
        body = ",".join(f"{k}={format_value(v)}" for k, v in sorted(values.items()))
        text = term.info.name + (f":{body}" if body else "")
        terms.append(text if term.coef == 1.0 else f"{format_value(term.coef)}*{text}")
    return create_loss("+".join(terms)) if params else loss


@dataclass
class Trial:
    """What a study needs back from one trial's run: its validation curve and outcome."""

    curve: list[tuple[int, float]]  # (step, validation primary metric)
    status: str  # ok | diverged | pruned | error
    value: float  # the final validation value (NaN unless ok)


def rung_steps(steps: int, first_rung: int = FIRST_RUNG) -> list[int]:
    """The steps where successive halving compares trials: budget/9, budget/3 (η = 3),
    before the full budget (from budget / ``first_rung``)."""
    first, rungs = max(1, steps // first_rung), []
    while first * ETA ** len(rungs) < steps:
        rungs.append(first * ETA ** len(rungs))
    return rungs


def promoted(values: dict[int, float], maximize: bool) -> set[int]:
    """The trials a rung keeps: the best ``len // η`` (at least one) by validation value,
    ties to the lower trial number; the rule of Optuna's ``SuccessiveHalvingPruner``,
    applied once every trial has reached the rung."""
    order = sorted(values, key=lambda n: (-values[n] if maximize else values[n], n))
    return set(order[:max(1, len(values) // ETA)])


class _Stop(BaseException):
    """Tells a parked trial thread to end without writing anything (the study was
    interrupted). Not an ``Exception``: a run's error handling must not catch it."""


class _Parked:
    """One trial on its own thread, run as a coroutine: it trains only while the tuner
    waits for it, and parks at each rung until the tuner has compared every trial there."""

    def __init__(self, number: int, params: dict[str, Any], rungs: list[int],
                 run_trial: Callable[[int, dict[str, Any], Callable], Trial]):
        import threading

        self.number, self.params, self.rungs = number, params, rungs
        self.values: dict[int, float] = {}  # rung → validation value there
        self.outcome: Trial | None = None
        self.error: BaseException | None = None
        self.stop = self.prune = False
        self._go, self._back = threading.Semaphore(0), threading.Semaphore(0)

        def ask_prune(step: int, value: float) -> bool:
            return self._ask_prune(step, value)

        ask_prune.tick = self._tick  # type: ignore[attr-defined]  (called every step)
        self._thread = threading.Thread(target=self._body, args=(run_trial, ask_prune),
                                        name=f"losscli-trial-{number}", daemon=True)

    def _body(self, run_trial, ask_prune) -> None:
        self._go.acquire()
        try:
            if not self.stop:
                self.outcome = run_trial(self.number, self.params, ask_prune)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001  (re-raised by the tuner)
            self.error = exc
        finally:
            self._back.release()

    def _tick(self) -> None:
        if self.stop:
            raise _Stop

    def _ask_prune(self, step: int, value: float) -> bool:
        self._tick()
        rung = len(self.values)
        if rung >= len(self.rungs) or step < self.rungs[rung]:
            return False
        self.values[rung] = value
        self._back.release()  # parked: the tuner compares this rung
        self._go.acquire()
        self._tick()
        return self.prune

    @property
    def finished(self) -> bool:
        return self.outcome is not None or self.error is not None

    def resume(self) -> None:
        """Let the trial run until it parks at its next rung or ends."""
        if self.finished:
            return
        if self._thread.ident is None:
            self._thread.start()
        self._go.release()
        self._back.acquire()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.stop = True
        if self._thread.is_alive():
            self._go.release()  # a parked trial raises _Stop; a running one at its next step
            self._thread.join(timeout=30)


class Halving:
    """Synchronous successive halving decided in one place, for trials that train together
    (a ``TrialStack``): at each rung, the trials that reached it (trained ones reporting
    now, and stored ones from their curves) are compared with :func:`promoted`, as
    :func:`_halve` compares parked trials; the same rule, the same choices."""

    def __init__(self, rungs: list[int], maximize: bool, numbers: Sequence[int],
                 stored: dict[int, list[tuple[int, float]]]):
        self.rungs, self.maximize, self.stored = rungs, maximize, stored
        self.alive = set(numbers) | set(stored)  # promoted at every rung so far

    def decide(self, step: int, values: dict[int, float]) -> set[int]:
        """The trained trials (``values``: trial number → validation value at ``step``) to
        stop here as pruned: none between rungs; at a rung, those not promoted."""
        if step not in self.rungs:
            return set()
        there = {n: v for n, v in values.items() if n in self.alive and math.isfinite(v)}
        for n, curve in self.stored.items():
            at = dict(curve).get(step)
            if n in self.alive and at is not None and math.isfinite(at):
                there[n] = at
        self.alive = promoted(there, self.maximize) if there else set()
        return set(values) - self.alive


def tune_group(space: dict[str, list], n_trials: int, maximize: bool, steps: int,
               run_trial: Callable[[int, dict[str, Any], Callable], Trial],
               first_rung: int = FIRST_RUNG,
               run_stack: Callable[[list[tuple[int, dict[str, Any]]], Halving],
                                   dict[int, Trial]] | None = None) -> dict[str, Any]:
    """Run (or replay) ``n_trials`` trials of one (variant, loss) and return the best
    completed trial's parameters.

    ``run_trial(number, params, ask_prune)`` trains (or reads back) one trial; it calls
    ``ask_prune(step, value)`` after each validation eval and stops when that returns True
    (``ask_prune.tick()``, where it exists, is called each step). Trials are evaluated at
    :func:`rung_steps` (the caller adds those evals).

    Synchronous successive halving: every trial trains to budget/9, then the best third
    (:func:`promoted`) continues to budget/3, the best third of those to the full budget;
    the others stop there as pruned. A promoted trial continues where it stopped (its
    model stays in memory, on a parked thread), so a 7-point grid costs about 1.9 full
    runs. Optuna's own ``SuccessiveHalvingPruner`` decides asynchronously, as each trial
    reports; run one after another, its first trials always reach the full budget (29 of
    63 seg trials did). Optuna keeps the study: the grid points in ``GridSampler``'s
    seeded order (``grid_order``), each trial's curve, its state and the best trial.

    ``run_stack(trials, halving)`` (trials that differ only in the learning rate): returns
    every trial's outcome, training the ones not stored together as one vmapped model and
    asking ``halving.decide`` at each eval which of them stop; the stored ones it reads
    back and passes to the ``Halving`` it makes with ``stack_halving``. The same schedule
    and choices as trial-by-trial halving (to float rounding in the trained values).
    """
    import optuna

    from losscli.tuning_storage import grid_order

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                sampler=optuna.samplers.RandomSampler(seed=SAMPLER_SEED))
    order = grid_order(space, n_trials)
    for params in order:
        study.enqueue_trial(params)
    asked = [study.ask() for _ in order]
    rungs = rung_steps(steps, first_rung)
    params = [{k: t.suggest_categorical(k, v) for k, v in space.items()} for t in asked]
    from losscli import threads

    if run_stack is not None:
        with threads.held():
            outcomes = run_stack(list(enumerate(params)), _StackHalving(rungs, maximize))
        pruned = [False] * len(asked)
    else:
        parked = [_Parked(n, p, rungs, run_trial) for n, p in enumerate(params)]
        try:
            with threads.held():  # one thread count for every trial (they take turns)
                _halve(parked, len(rungs), maximize)
        except BaseException:
            for p in parked:
                p.cancel()
            raise
        outcomes = {p.number: p.outcome for p in parked}
        pruned = [p.prune for p in parked]
    for n, t in enumerate(asked):
        outcome = outcomes[n]
        assert outcome is not None
        for step, value in outcome.curve[1:]:
            if math.isfinite(value):
                t.report(value, step)
        if outcome.status == "pruned" or (outcome.status == "ok" and pruned[n]):
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        elif outcome.status == "ok" and math.isfinite(outcome.value):
            study.tell(t, outcome.value)
        else:  # diverged or errored
            study.tell(t, state=optuna.trial.TrialState.FAIL)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no tuning trial completed (all diverged, errored or pruned)")
    return dict(study.best_trial.params)


class _StackHalving:
    """What ``run_stack`` gets: a maker of the ``Halving`` for its trials, given the curves
    of the stored ones."""

    def __init__(self, rungs: list[int], maximize: bool):
        self.rungs, self.maximize = rungs, maximize

    def __call__(self, numbers: Sequence[int], stored: dict[int, list[tuple[int, float]]]
                 ) -> Halving:
        return Halving(self.rungs, self.maximize, numbers, stored)


def _halve(parked: list[_Parked], n_rungs: int, maximize: bool) -> None:
    live = list(parked)
    for rung in range(n_rungs):
        for p in live:
            p.resume()
        there = {p.number: p.values[rung] for p in live
                 if not p.finished and rung in p.values and math.isfinite(p.values[rung])}
        keep = promoted(there, maximize) if there else set()
        for p in live:
            if not p.finished and p.number not in keep:
                p.prune = True
                p.resume()  # it stops as pruned, writes its row and ends
        live = [p for p in live if p.number in keep]
    for p in live:
        while not p.finished:
            p.resume()


def rung_of(curve: list[tuple[int, float]], steps: int, first_rung: int = FIRST_RUNG) -> int:
    """The successive-halving rung a trial's curve reached: 0 below budget/3, ..."""
    last = curve[-1][0] if curve else 0
    first = max(1, steps // first_rung)
    rung = 0
    while last >= first * ETA ** (rung + 1):
        rung += 1
    return rung


def settings_with(cfg, params: dict[str, Any]):
    """The run settings with a sampled learning rate."""
    return replace(cfg, lr=float(params["lr"])) if "lr" in params else cfg


def describe(params: dict[str, Any]) -> str:
    return json.dumps(dict(sorted(params.items())))
