"""Training settings: one type from the task file and the command line to the optimizer.

A ``Settings`` with ``None`` fields is a *layer*; layers stack explicitly, lowest first::

    DEFAULTS → tasks/<job>.toml [budget] → suite [defaults] → suite [[job]] → command line

``layered(*layers)`` merges them (a later layer's set fields win; a layer that sets
``steps`` or ``epochs`` replaces both of the layers below, so ``--epochs 2`` beats a task
file's ``steps = 600``), and ``resolve(n_train)`` turns the result into the concrete
settings a run trains with (steps and the eval interval worked out from the data size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from losscli.errors import UsageError

__all__ = ["DEFAULTS", "OPTIMIZERS", "SELECTIONS", "Settings", "layered"]

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class Settings:
    """Every training setting that changes a run's numbers (besides job, loss and seed)."""

    epochs: float | None = None
    steps: int | None = None  # wins over epochs within one layer
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    eval_every: int | None = None  # steps; default: every epoch, or ten evals per run
    warmup_steps: int | None = None  # untimed steps at the start of a run
    select: str | None = None  # which model the test split scores: final | best (on val)
    device: str | None = None
    bf16: bool | None = None

    def over(self, lower: Settings) -> Settings:
        """This layer on top of ``lower``."""
        values = {f.name: getattr(lower, f.name) for f in fields(self)}
        mine = {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}
        if "steps" in mine or "epochs" in mine:  # a budget replaces the budget below
            values["steps"] = values["epochs"] = None
        return Settings(**{**values, **mine})

    def check(self, where: str) -> Settings:
        """Types and ranges of the set fields (a UsageError names ``where`` and the rule)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not _valid(f.name, value):
                raise UsageError(f"{where}: {f.name} must be {_RULES[f.name]}, got {value!r}")
        return self

    def resolve(self, n_train: int, job: str) -> Settings:
        """Concrete settings for ``n_train`` training samples (every field set)."""
        s = layered(DEFAULTS, self)
        if s.batch_size > n_train:
            raise UsageError(f"batch size {s.batch_size} exceeds the {n_train} training "
                             f"samples of {job}")
        per_epoch = n_train // s.batch_size
        steps = s.steps or max(1, round((s.epochs or 1) * per_epoch))
        eval_every = s.eval_every or (per_epoch if steps >= per_epoch else 0)
        return replace(s, steps=steps, epochs=round(steps / per_epoch, 3), eval_every=eval_every)

    def identity(self) -> dict[str, Any]:
        """What a run key hashes: the resolved settings (epochs follow from steps)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "epochs"}

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


def layered(*layers: Settings) -> Settings:
    """Layers merged, the lowest first."""
    result = Settings()
    for layer in layers:
        result = layer.over(result)
    return result


SELECTIONS = ("final", "best")
DEFAULTS = Settings(batch_size=128, lr=1e-3, optimizer="adam", weight_decay=0.0,
                    eval_every=0, warmup_steps=5, select="final", device="cpu", bf16=False)

_RULES = {
    "epochs": "a number > 0", "steps": "an integer >= 1", "batch_size": "an integer >= 1",
    "lr": "a finite number >= 0", "optimizer": f"one of {', '.join(OPTIMIZERS)}",
    "weight_decay": "a finite number >= 0", "eval_every": "an integer >= 1",
    "warmup_steps": "an integer >= 0", "device": "a device name", "bf16": "true or false",
    "select": "final or best",
}


def _valid(name: str, v: Any) -> bool:
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if name in ("steps", "batch_size", "eval_every"):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1
    if name == "warmup_steps":
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if name == "epochs":
        return number and math.isfinite(v) and v > 0
    if name in ("lr", "weight_decay"):
        return number and math.isfinite(v) and v >= 0
    if name == "optimizer":
        return v in OPTIMIZERS
    if name == "select":
        return v in SELECTIONS
    if name == "bf16":
        return isinstance(v, bool)
    return isinstance(v, str) and bool(v)
