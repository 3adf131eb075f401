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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from losscli.errors import UsageError
from losscli.losses.registry import format_value
from losscli.settings import Settings

__all__ = ["BUDGET_KEYS", "Finding", "JobRequest", "Suite", "expand_grid", "load_suite"]

# the training settings a suite may set ([defaults] and each [[job]])
BUDGET_KEYS = ("epochs", "steps", "batch_size", "lr", "optimizer", "weight_decay", "eval_every")


@dataclass(frozen=True)
class JobRequest:
    """One job of a plan: its losses, seeds, settings (layers above the job's task file)
    and job options."""

    task: str
    losses: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    settings: Settings = Settings()
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


def _settings(doc: dict[str, Any], where: str) -> Settings:
    """A layer of training settings from a suite table (types and ranges checked)."""
    return Settings(**{k: doc[k] for k in BUDGET_KEYS if k in doc}).check(where)


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


_JOB_KEYS = {"task", "losses", "seeds", "options", "grid", *BUDGET_KEYS}
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
    defaults = _settings(doc.get("defaults", {}), f"{path} [defaults]")
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
            settings=_settings(entry, where).over(defaults),
            options=dict(entry.get("options", {})),
        ))
    findings = tuple(_finding(f, f"{path} finding {i}") for i, f in
                     enumerate(doc.get("finding", []), 1))
    if problems:
        raise UsageError("\n".join(problems))
    return Suite(name=doc.get("name", path.stem), path=path, requests=tuple(requests),
                 findings=findings, description=doc.get("description", ""))


def _finding(doc: dict[str, Any], where: str) -> Finding:
    """A ``[[finding]]``; its metric's direction is the job's (``maximize`` may confirm it)."""
    from losscli.jobs import job_class

    try:
        maximize = job_class(doc["task"]).maximizes(doc["metric"])
        if "maximize" in doc and bool(doc["maximize"]) != maximize:
            raise UsageError(f"{where}: maximize = {str(doc['maximize']).lower()} contradicts "
                             f"the {doc['task']} job, where {doc['metric']} is "
                             f"{'higher' if maximize else 'lower'}-is-better")
        return Finding(id=doc["id"], title=doc["title"], task=doc["task"], metric=doc["metric"],
                       better=tuple(doc["better"]), than=doc["than"], maximize=maximize,
                       options=dict(doc.get("options", {})), steps=doc.get("steps"))
    except KeyError as exc:
        raise UsageError(f"{where}: missing key {exc}") from None
