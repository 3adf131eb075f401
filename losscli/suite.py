"""Suites: a TOML grid of jobs × losses × seeds × loss-parameter grids (``losscli sweep``).

```toml
name = "quick"                 # the default run directory: results/runs/<name>
seeds = 3                      # N (seeds 0..N-1) or a list such as [0, 1, 2]
tune_storage = "sqlite:///results/runs/quick/optuna.db"  # optional: tuning trials shared
                               # by processes (as --tune-storage, which wins over it)
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
import math
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losscli.errors import UsageError
from losscli.files import quote, read_text
from losscli.losses.registry import format_value
from losscli.settings import Settings

__all__ = ["BUDGET_KEYS", "MAX_GRID", "MAX_SEEDS", "NAME_RULE", "Finding", "JobRequest",
           "Suite", "expand_grid", "load_suite"]

# the training settings a suite may set ([defaults] and each [[job]])
BUDGET_KEYS = ("epochs", "steps", "batch_size", "lr", "optimizer", "weight_decay", "eval_every",
               "select")


@dataclass(frozen=True)
class JobRequest:
    """One job of a plan: its losses, seeds, settings (layers above the job's task file)
    and job options."""

    task: str
    losses: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    settings: Settings = Settings()
    options: dict[str, Any] = field(default_factory=dict)
    tune: Any = None  # a losscli.tuning.Tune: tune every loss equally first
    where: str = ""  # where it was asked for (``suite.toml job 2 (reg)``), for messages


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
    tune_storage: str | None = None  # an Optuna RDB URL shared by processes (--tune-storage)



# ------------------------------------------------------------------------- the schema
# Every key of a suite file is checked here, its type and its range, and every problem of
# a file is reported at once (each line names the file, the entry, the key and the rule).

MAX_SUITE_BYTES = 1 << 20
MAX_SEEDS = 1000  # seeds of one job (a count, or the length of a list)
MAX_GRID = 1000  # losses of one job: its list plus every combination of its grids
NAME_RULE = ("a name, not a path: 1-100 characters without '/', '\\', '..', control "
             "characters or a leading '.'")

_TOP_KEYS = {"name", "seeds", "description", "defaults", "job", "finding", "tune_storage"}
_JOB_KEYS = {"task", "losses", "seeds", "options", "grid", "tune", *BUDGET_KEYS}
_FINDING_KEYS = {"id", "title", "task", "metric", "better", "than", "maximize", "options",
                 "steps"}
_KIND = {bool: "a boolean", int: "an integer", float: "a number", str: "text",
         list: "an array", dict: "a table"}


def _kind(value: Any) -> str:
    return _KIND.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool, int)) or (isinstance(value, float)
                                                  and math.isfinite(value))


def _unknown(doc: dict[str, Any], allowed: set[str], where: str) -> list[str]:
    return [f"{where}: unknown key {quote(k)} (allowed: {', '.join(sorted(allowed))})"
            for k in sorted(set(doc) - allowed)]


def _get(doc: dict[str, Any], key: str, typ: type, rule: str, where: str,
         problems: list[str]) -> Any:
    """``doc[key]`` when it is a ``typ`` (None when absent or wrong: then a problem)."""
    if key not in doc:
        return None
    value = doc[key]
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    problems.append(f"{where}: {key} must be {rule}, got {_kind(value)} {quote(value)}")
    return None


def _tables(doc: dict[str, Any], key: str, where: str, problems: list[str]
            ) -> list[dict[str, Any]]:
    """An array of tables (``[[job]]``); a non-table element is a problem."""
    items = _get(doc, key, list, f"an array of tables ([[{key}]] entries)", where, problems)
    tables = []
    for i, item in enumerate(items or [], 1):
        if isinstance(item, dict):
            tables.append(item)
        else:
            problems.append(f"{where}: {key} {i} must be a table ([[{key}]] with keys), got "
                            f"{_kind(item)} {quote(item)}")
    return tables


def _texts(doc: dict[str, Any], key: str, where: str, problems: list[str]) -> list[str]:
    """A list of non-empty texts (``losses``, ``better``)."""
    items = _get(doc, key, list, "an array of texts", where, problems) or []
    bad = [x for x in items if not isinstance(x, str) or not x.strip()]
    if bad:
        problems.append(f"{where}: {key} must hold non-empty texts, got {quote(bad[0])}")
        return []
    return items


def _seeds(value: Any, where: str, problems: list[str]) -> tuple[int, ...]:
    """A count (seeds 0..N-1) or a list of distinct seeds."""
    if _is_int(value) and 1 <= value <= MAX_SEEDS:
        return tuple(range(value))
    if isinstance(value, list) and 0 < len(value) <= MAX_SEEDS and \
            all(_is_int(s) and 0 <= s < 2 ** 32 for s in value):
        repeated = [str(s) for s, n in Counter(value).items() if n > 1]
        if not repeated:
            return tuple(value)
        problems.append(f"{where}: seeds lists {', '.join(repeated[:5])} more than once "
                        "(each seed is one run: list it once)")
        return (0,)
    problems.append(f"{where}: seeds must be a count 1..{MAX_SEEDS} or a list of 1..{MAX_SEEDS}"
                    f" distinct integers in [0, 2**32), got {_kind(value)} {quote(value)}")
    return (0,)


def _settings(doc: dict[str, Any], where: str, problems: list[str]) -> Settings:
    """A layer of training settings from a suite table (each key's type and range checked)."""
    valid = {}
    for key in BUDGET_KEYS:
        if key in doc:
            try:
                Settings(**{key: doc[key]}).check(where)
                valid[key] = doc[key]
            except UsageError as exc:
                problems.append(str(exc)[:300])
    return Settings(**valid)


def _name(doc: dict[str, Any], path: Path, problems: list[str]) -> str:
    """The suite's name: the run directory results/runs/<name>, so a name, never a path."""
    name = doc.get("name", path.stem)
    if not isinstance(name, str):
        problems.append(f"{path}: name must be text ({NAME_RULE}), got {_kind(name)} "
                        f"{quote(name)}")
        return "?"
    if not (0 < len(name) <= 100 and name == name.strip() and name.isprintable()
            and not name.startswith(".") and not any(c in name for c in ("/", "\\", ".."))):
        problems.append(f"{path}: name {quote(name)} must be {NAME_RULE} (it names the run "
                        "directory results/runs/<name>; --out chooses any other place)")
    return name


def expand_grid(grid: dict[str, Any], where: str) -> list[str]:
    """``{loss = "focal", gamma = [0, 2], alpha = 0.25}`` → ``focal:gamma=0,alpha=0.25`` …
    (the number of combinations is checked before any is made)."""
    if "loss" not in grid or not isinstance(grid["loss"], str):
        raise UsageError(f"{where}: a grid needs loss = \"<name>\"")
    params = {k: v if isinstance(v, list) else [v] for k, v in grid.items() if k != "loss"}
    if any(not values for values in params.values()):
        raise UsageError(f"{where}: empty value list in grid for {grid['loss']!r}")
    if math.prod(len(v) for v in params.values()) > MAX_GRID:
        raise UsageError(f"{where}: the grid for {grid['loss']!r} has more than {MAX_GRID:,} "
                         "combinations")
    specs = []
    for combo in itertools.product(*[[(k, x) for x in v] for k, v in params.items()]):
        body = ",".join(f"{k}={format_value(tuple(v) if isinstance(v, list) else v)}"
                        for k, v in combo)
        specs.append(grid["loss"] + (f":{body}" if body else ""))
    return specs


def _grid(grid: dict[str, Any], where: str, problems: list[str]) -> list[str]:
    """The loss specs of one ``[[job.grid]]``, its size checked before it is expanded."""
    if "loss" not in grid:
        problems.append(f'{where}: a grid needs loss = "<name>"')
        return []
    loss = _get(grid, "loss", str, 'a loss name (loss = "focal")', where, problems)
    sizes = []
    for key, value in grid.items():
        values = value if isinstance(value, list) else [value]
        ok = all(_is_scalar(v) or (isinstance(v, list) and v and all(map(_is_scalar, v)))
                 for v in values)
        if key != "loss" and not (values and ok):
            problems.append(f"{where}: grid {loss!r} {key} must be a number, text or boolean "
                            f"(or a non-empty array of them), got {quote(value)}")
            return []
        sizes.append(len(values))
    combinations = math.prod(sizes)
    if combinations > MAX_GRID:
        problems.append(f"{where}: the grid for {loss!r} has {combinations:,} combinations (at "
                        f"most {MAX_GRID:,}): list fewer values or split the suite")
        return []
    return expand_grid(grid, where) if loss is not None else []


def _options(doc: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    options = _get(doc, "options", dict, "a table of job options (options = { key = value })",
                   where, problems) or {}
    bad = [k for k, v in options.items() if not _is_scalar(v)]
    for key in bad:
        problems.append(f"{where}: options.{key} must be text, a finite number or a boolean, "
                        f"got {_kind(options[key])} {quote(options[key])}")
    return {k: v for k, v in options.items() if k not in bad}


def _request(entry: dict[str, Any], i: int, path: Path, seeds: tuple[int, ...],
             defaults: Settings, problems: list[str]) -> JobRequest | None:
    """One ``[[job]]``: its task, losses (grids expanded), seeds, settings and options."""
    task = entry.get("task")
    where = f"{path} job {i}" + (f" ({task})" if isinstance(task, str) else "")
    problems += _unknown(entry, _JOB_KEYS, where)
    if "task" not in entry:
        problems.append(f'{where}: missing task = "<name>"')
        return None
    if not isinstance(task, str) or not task.strip():
        problems.append(f'{where}: task must be a job name (task = "mnist"), got '
                        f"{_kind(task)} {quote(task)}")
        return None
    losses = _texts(entry, "losses", where, problems)
    for grid in _tables(entry, "grid", where, problems):
        losses += _grid(grid, where, problems)
    if len(losses) > MAX_GRID:
        problems.append(f"{where}: {len(losses):,} losses (at most {MAX_GRID:,})")
    return JobRequest(
        task=task, losses=tuple(losses),
        seeds=_seeds(entry["seeds"], where, problems) if "seeds" in entry else seeds,
        settings=_settings(entry, where, problems).over(defaults),
        options=_options(entry, where, problems), where=where,
        tune=_tune(entry, where, problems))


def _tune(entry: dict[str, Any], where: str, problems: list[str]):
    """``tune = ["lr", "focal:gamma=[0.5,1,2]"]``: as ``train --tune``."""
    from losscli.tuning import parse_tune

    items = _texts(entry, "tune", where, problems)
    try:
        return parse_tune(items)
    except UsageError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _finding(doc: dict[str, Any], where: str, problems: list[str]) -> Finding | None:
    """A ``[[finding]]``; its metric's direction is the job's (``maximize`` may confirm it)."""
    from losscli.jobs import create_job

    before = len(problems)
    problems += _unknown(doc, _FINDING_KEYS, where)
    missing = [k for k in ("id", "title", "task", "metric", "better", "than") if k not in doc]
    if missing:
        problems.append(f"{where}: missing key {', '.join(missing)}")
    text = {k: _get(doc, k, str, "text", where, problems)
            for k in ("id", "title", "task", "metric", "than")}
    better = _texts(doc, "better", where, problems)
    given = _get(doc, "maximize", bool, "true or false", where, problems)
    options = _options(doc, where, problems)
    steps = _get(doc, "steps", int, "an integer >= 1", where, problems)
    if steps is not None and steps < 1:
        problems.append(f"{where}: steps must be an integer >= 1, got {steps}")
    if len(problems) > before:
        return None
    try:
        job = create_job(text["task"], **options)
    except UsageError as exc:
        problems.append(f"{where}: {exc}")
        return None
    if text["metric"] not in job.test_metric_names:
        problems.append(f"{where}: metric {quote(text['metric'])} is not one of {job.name}'s: "
                        + ", ".join(job.test_metric_names))
        return None
    maximize = job.maximizes(text["metric"])
    if given is not None and given != maximize:
        problems.append(f"{where}: maximize = {str(given).lower()} contradicts the "
                        f"{job.name} job, where {text['metric']} is "
                        f"{'higher' if maximize else 'lower'}-is-better")
        return None
    return Finding(id=text["id"], title=text["title"], task=text["task"], metric=text["metric"],
                   better=tuple(better), than=text["than"], maximize=maximize,
                   options=options, steps=steps)


def _parse(path: Path) -> dict[str, Any]:
    text = read_text(path, "suite file", MAX_SUITE_BYTES)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise UsageError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None


def load_suite(path: str | Path) -> Suite:
    """Parse and check a suite file: every key's type and range, every problem at once
    (names and pairs are checked later, by the plan).

    Raises:
        UsageError: one line per problem, each naming the file, the entry and the rule.
    """
    path = Path(path)
    doc = _parse(path)
    where = str(path)
    problems = _unknown(doc, _TOP_KEYS, where)
    if "budget" in doc and "job" not in doc:
        problems.append(f"{path} looks like a task file (tasks/<job>.toml); a suite lists "
                        "[[job]] entries (see tasks/quick.toml)")
    name = _name(doc, path, problems)
    description = _get(doc, "description", str, "text", where, problems) or ""
    tune_storage = _get(doc, "tune_storage", str, "a database URL (sqlite:///PATH.db)", where,
                        problems) or None
    seeds = _seeds(doc["seeds"], where, problems) if "seeds" in doc else (0,)
    defaults_doc = _get(doc, "defaults", dict, "a table ([defaults] with budget keys)",
                        where, problems) or {}
    problems += _unknown(defaults_doc, set(BUDGET_KEYS), f"{path} [defaults]")
    defaults = _settings(defaults_doc, f"{path} [defaults]", problems)
    jobs = _tables(doc, "job", where, problems)
    if "job" not in doc or (isinstance(doc["job"], list) and not doc["job"]):
        problems.append(f"{path}: no [[job]] entries")
    requests = [_request(e, i, path, seeds, defaults, problems) for i, e in enumerate(jobs, 1)]
    findings = [_finding(f, f"{path} finding {i}", problems)
                for i, f in enumerate(_tables(doc, "finding", where, problems), 1)]
    if problems:
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UsageError("\n".join(problems[:20]) + more)
    return Suite(name=name, path=path, requests=tuple(r for r in requests if r),
                 findings=tuple(f for f in findings if f), description=description,
                 tune_storage=tune_storage)
