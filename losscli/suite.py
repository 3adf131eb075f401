"""Suites: a TOML grid of jobs × losses × seeds × loss-parameter grids (``losscli sweep``).

```toml
name = "quick"                 # the default run directory: results/runs/<name>
seeds = 3                      # N (seeds 0..N-1) or a list such as [0, 1, 2]
[defaults]                     # budget overrides for every job (optional)
epochs = 2
[[job]]
task = "mnist"
losses = ["ce", "label_smoothing:epsilon=0.1"]   # omitted: the job's default losses
steps = 300                    # per-job budget overrides: epochs, steps, batch_size, lr, ...
options = { data_dir = "..." } # job options, as on the command line
[[job.grid]]                   # one loss per combination of the listed values
loss = "focal"
gamma = [0, 0.5, 1, 2, 5]
```
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from losscli.errors import UsageError
from losscli.losses.registry import format_value

__all__ = ["Finding", "JobRequest", "Overrides", "Suite", "expand_grid", "load_suite"]


@dataclass(frozen=True)
class Overrides:
    """Budget settings; ``None`` keeps the job's own default (tasks/<job>.toml)."""

    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    eval_every: int | None = None

    def merged(self, other: Overrides) -> Overrides:
        """``other``'s values win where they are set."""
        return Overrides(**{f.name: getattr(other, f.name) if getattr(other, f.name) is not None
                            else getattr(self, f.name) for f in fields(self)})


BUDGET_KEYS = {f.name for f in fields(Overrides)}


@dataclass(frozen=True)
class JobRequest:
    """One job of a plan: its losses, seeds, budget overrides and job options."""

    task: str
    losses: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    overrides: Overrides = Overrides()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """A published result a suite checks (see ``losscli report``)."""

    id: str
    title: str
    task: str
    metric: str
    better: tuple[str, ...]  # loss specs claimed to be better than `than`
    than: str
    maximize: bool
    options: dict[str, Any] = field(default_factory=dict)  # which job variant it reads
    steps: int | None = None  # which step budget it reads (None: every budget pooled)


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    requests: tuple[JobRequest, ...]
    findings: tuple[Finding, ...] = ()
    description: str = ""


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) for s in value):
        return tuple(value)
    raise UsageError(f"{where}: seeds must be a count >= 1 or a list of integers, got {value!r}")


def _overrides(doc: dict[str, Any], where: str) -> Overrides:
    values = {k: doc[k] for k in BUDGET_KEYS if k in doc}
    for k, v in values.items():
        expected = str if k == "optimizer" else (float if k in ("lr", "weight_decay") else int)
        if not isinstance(v, expected) and not (expected is float and isinstance(v, int)):
            raise UsageError(f"{where}: {k} must be {expected.__name__}, got {v!r}")
    return Overrides(**values)


def expand_grid(grid: dict[str, Any], where: str) -> list[str]:
    """``{loss = "focal", gamma = [0, 2], alpha = 0.25}`` → ``focal:alpha=0.25,gamma=0`` …"""
    if "loss" not in grid or not isinstance(grid["loss"], str):
        raise UsageError(f"{where}: a grid needs loss = \"<name>\"")
    params = {k: v for k, v in grid.items() if k != "loss"}
    axes = [[(k, x) for x in (v if isinstance(v, list) else [v])] for k, v in params.items()]
    if any(not axis for axis in axes):
        raise UsageError(f"{where}: empty value list in grid for {grid['loss']!r}")
    specs = []
    for combo in itertools.product(*axes):
        body = ",".join(f"{k}={format_value(tuple(v) if isinstance(v, list) else v)}"
                        for k, v in combo)
        specs.append(grid["loss"] + (f":{body}" if body else ""))
    return specs


_JOB_KEYS = {"task", "losses", "seeds", "options", "grid"} | BUDGET_KEYS
_TOP_KEYS = {"name", "seeds", "description", "defaults", "job", "finding"}


def load_suite(path: str | Path) -> Suite:
    """Parse and check a suite file (names and pairs are checked later, by the plan)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"suite file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    problems = [f"{path}: unknown key {k!r}" for k in sorted(set(doc) - _TOP_KEYS)]
    if not doc.get("job"):
        problems.append(f"{path}: no [[job]] entries")
    seeds = _seeds(doc.get("seeds", 1), str(path))
    defaults = _overrides(doc.get("defaults", {}), f"{path} [defaults]")
    requests = []
    for i, entry in enumerate(doc.get("job", []), 1):
        where = f"{path} job {i} ({entry.get('task', '?')})"
        problems += [f"{where}: unknown key {k!r}" for k in sorted(set(entry) - _JOB_KEYS)]
        if "task" not in entry:
            problems.append(f"{where}: missing task = \"<name>\"")
            continue
        losses = list(entry.get("losses", []))
        for g in entry.get("grid", []):
            losses += expand_grid(g, where)
        requests.append(JobRequest(
            task=entry["task"], losses=tuple(losses),
            seeds=_seeds(entry["seeds"], where) if "seeds" in entry else seeds,
            overrides=defaults.merged(_overrides(entry, where)),
            options=dict(entry.get("options", {})),
        ))
    findings = tuple(_finding(f, f"{path} finding {i}") for i, f in
                     enumerate(doc.get("finding", []), 1))
    if problems:
        raise UsageError("\n".join(problems))
    return Suite(name=doc.get("name", path.stem), path=path, requests=tuple(requests),
                 findings=findings, description=doc.get("description", ""))


def _finding(doc: dict[str, Any], where: str) -> Finding:
    try:
        return Finding(id=doc["id"], title=doc["title"], task=doc["task"], metric=doc["metric"],
                       better=tuple(doc["better"]), than=doc["than"],
                       maximize=bool(doc.get("maximize", True)),
                       options=dict(doc.get("options", {})), steps=doc.get("steps"))
    except KeyError as exc:
        raise UsageError(f"{where}: missing key {exc}") from None
