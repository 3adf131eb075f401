"""Equal tuning per loss on the validation split (Optuna), then fresh seeds for the winner.

Every loss of a job variant gets the same search: the same learning-rate grid (log-spaced
over three decades around the job's default, 7 values) and, where asked, a grid of its own
parameters (``focal:gamma=[0.5,1,2,5]``); the same number of trials; the same successive
halving (Optuna's ``SuccessiveHalvingPruner``, reduction factor 3, first rung at 1/9 of the
budget, so rungs at 1/9, 1/3 and the full budget) on the validation metric. Trials never
touch the test split. The best completed trial's settings are retrained with the
requested seeds (``phase = final``) and only those runs are scored on test.

Trials are runs in the store (``phase = tune``, with ``trial`` and ``rung``), written as each
finishes. The study is rebuilt in memory from the store on every start: a stored trial is
replayed into Optuna (its validation curve reported step by step, with the same pruning
questions asked), so after a kill -9 the same command resumes where it stopped, without
redoing a finished trial, and makes the same choices (``GridSampler`` with a fixed seed).
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

__all__ = ["LR_FACTORS", "Tune", "lr_grid", "parse_tune", "tune_group"]

# the default learning-rate grid: the job's lr times 10^(-1.5 .. 1.5) in half decades
LR_FACTORS = (10 ** -1.5, 0.1, 10 ** -0.5, 1.0, 10 ** 0.5, 10.0, 10 ** 1.5)
ETA, FIRST_RUNG = 3, 9  # successive halving: reduction factor, first rung at budget / 9
SAMPLER_SEED = 0


@dataclass(frozen=True)
class Tune:
    """What to tune: the learning rate (a grid, or the default grid) and loss parameters
    (loss name → parameter → values). ``trials``: the budget per loss (default: the size
    of the largest grid, so every loss's whole grid fits)."""

    lr: tuple[float, ...] | None = None  # () = the default grid around the job's lr
    params: dict[str, dict[str, tuple]] = field(default_factory=dict)
    trials: int | None = None

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
    ``--tune trials=12`` (repeatable) → a ``Tune`` (None when nothing is tuned)."""
    lr, params, trials = None, {}, None
    for item in items:
        head, colon, body = item.partition(":")
        key, eq, value = head.partition("=")
        if not colon and key.strip() == "lr":
            lr = _values(value, item, float) if eq else ()
        elif not colon and key.strip() == "trials" and eq:
            trials = _count(value, item)
        elif colon and not eq:
            params.setdefault(head.strip(), {}).update(_param_grid(body, item))
        else:
            raise UsageError(f"--tune takes lr, lr=[...], trials=N or LOSS:PARAM=[...], got "
                             f"{item!r}")
    return Tune(lr, params, trials) if lr is not None or params else None


def _count(text: str, item: str) -> int:
    value = parse_value(text.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--tune {item}: trials must be an integer >= 1")
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


def tune_group(space: dict[str, list], n_trials: int, maximize: bool, steps: int,
               run_trial: Callable[[int, dict[str, Any], Callable], Trial]) -> dict[str, Any]:
    """Run (or replay) ``n_trials`` trials of one (variant, loss) and return the best
    completed trial's parameters.

    ``run_trial(number, params, ask_prune)`` trains (or reads back) one trial; it calls
    ``ask_prune(step, value)`` after each validation eval and stops when that returns
    True. Pruning is Optuna's successive halving; sampling is Optuna's seeded grid.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if maximize else "minimize",
        sampler=optuna.samplers.GridSampler(space, seed=SAMPLER_SEED),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, steps // FIRST_RUNG), reduction_factor=ETA))
    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_categorical(k, v) for k, v in space.items()}

        def ask_prune(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        outcome = run_trial(trial.number, params, ask_prune)
        if outcome.status == "pruned":
            raise optuna.TrialPruned()
        return outcome.value if outcome.status == "ok" else math.nan  # NaN: a failed trial

    study.optimize(objective, n_trials=min(n_trials, math.prod(len(v) for v in space.values())),
                   catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no tuning trial completed (all diverged, errored or pruned)")
    return dict(study.best_trial.params)


def rung_of(curve: list[tuple[int, float]], steps: int) -> int:
    """The successive-halving rung a trial's curve reached: 0 below budget/3, ..."""
    last = curve[-1][0] if curve else 0
    first = max(1, steps // FIRST_RUNG)
    rung = 0
    while last >= first * ETA ** (rung + 1):
        rung += 1
    return rung


def settings_with(cfg, params: dict[str, Any]):
    """The run settings with a sampled learning rate."""
    return replace(cfg, lr=float(params["lr"])) if "lr" in params else cfg


def describe(params: dict[str, Any]) -> str:
    return json.dumps(dict(sorted(params.items())))
