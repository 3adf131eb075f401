"""The job registry: names → ``Job`` classes, the standard ones and plugins' own.

A plugin registers a job the way it registers a loss: ``@register_job`` on a ``Job``
subclass in a ``--plugin FILE|MODULE`` or in a package's entry point of the group
``losscli.jobs`` (the loader is the one losses use, so one plugin may register both). A
name or alias that is taken is refused unless ``replace=True``; a class that does not
fulfil the contract is refused when it registers, not when it trains. ``docs/examples/
my_job.py`` is a complete small job.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from losscli.errors import UnknownNameError
from losscli.jobs.base import (
    Evaluation,
    Job,
    JobData,
    Objective,
    Option,
    Split,
    TaskFile,
    load_task_file,
    task_file_exists,
)
from losscli.jobs.classification import FashionJob, MnistJob
from losscli.jobs.denoise import DenoiseJob
from losscli.jobs.detection import DetectionJob
from losscli.jobs.folders import ImagesJob, MasksJob, TableJob
from losscli.jobs.imbalanced import ImbalancedJob
from losscli.jobs.regression import RegressionJob
from losscli.jobs.segmentation import SegmentationJob
from losscli.losses.registry import (
    guard_registry,
    load_entry_point_plugins,
    loading_plugin,
    restorer,
)

__all__ = ["BUILTIN", "Evaluation", "Job", "JobData", "Objective", "Option", "Split",
           "TaskFile", "create_job", "job_class", "job_names", "job_source", "list_jobs",
           "load_task_file", "register_job", "resolve_job_name"]

BUILTIN = "losscli"  # the source of the jobs that ship with losscli
# what every job class declares (see ``Job``); a property counts
_REQUIRED = ("description", "model_name", "metrics", "primary_metric", "families", "preds",
             "targets")


@dataclass(frozen=True)
class _Entry:
    cls: type[Job]
    source: str  # BUILTIN, the plugin it came from, or the module that registered it


_JOBS: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}


guard_registry(lambda: restorer(_JOBS, _ALIASES))  # a failed plugin's jobs go again


def _check_class(cls: Any) -> None:
    """Refuse a class that cannot work as a job, naming what is missing."""
    if not (inspect.isclass(cls) and issubclass(cls, Job)):
        raise TypeError(f"register_job takes a subclass of losscli.jobs.Job, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or any(c.isspace() or c in ",=:" for c in name):
        raise TypeError(f"{cls.__name__}: name must be a non-empty text without spaces, "
                        f"commas, ':' or '=', got {name!r}")
    missing = [a for a in _REQUIRED if not hasattr(cls, a)]
    missing += sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"job {name!r}: {cls.__name__} must define {', '.join(missing)} "
                        "(see losscli.jobs.Job)")
    if cls.load_task is Job.load_task and not task_file_exists(name):
        raise TypeError(f"job {name!r}: define load_task() returning a TaskFile (budget, "
                        f"default losses, target), or ship tasks/{name}.toml")
    names = [o.name for o in cls.option_specs]
    if len(set(names)) != len(names):
        raise TypeError(f"job {name!r}: option names repeat: {', '.join(names)}")


def _source(cls: type[Job]) -> str:
    if cls.__module__.startswith("losscli."):
        return BUILTIN
    origin = loading_plugin()
    return f"plugin {origin}" if origin else f"module {cls.__module__}"


@overload
def register_job(cls: type[Job], *, replace: bool = False) -> type[Job]: ...
@overload
def register_job(cls: None = None, *, replace: bool = False
                 ) -> Callable[[type[Job]], type[Job]]: ...


def register_job(cls: type[Job] | None = None, *, replace: bool = False) -> Any:
    """Class decorator registering a ``Job`` subclass under its ``name`` and ``aliases``
    (``@register_job`` or ``@register_job(replace=True)``).

    Raises:
        TypeError: not a Job subclass, a missing attribute or method, no task file.
        ValueError: a name or alias that is taken (unless ``replace=True``).
    """
    if cls is None:
        return lambda c: register_job(c, replace=replace)
    _check_class(cls)
    for key in (cls.name, *cls.aliases):
        owner = _ALIASES.get(key, key if key in _JOBS else None)
        if owner is not None and not (replace and owner == cls.name):
            raise ValueError(f"job name {key!r} is already registered (by "
                             f"{_JOBS[owner].source}); pass replace=True to override it "
                             "deliberately")
    _JOBS[cls.name] = _Entry(cls, _source(cls))
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


for _cls in (MnistJob, FashionJob, RegressionJob, DetectionJob, ImbalancedJob,
             SegmentationJob, DenoiseJob, ImagesJob, MasksJob, TableJob):
    register_job(_cls)


def list_jobs() -> list[type[Job]]:
    """Every registered job: the standard ones, then plugins' in the order they came."""
    load_entry_point_plugins()
    return [e.cls for e in _JOBS.values()]


def job_names(with_aliases: bool = False) -> list[str]:
    names = [cls.name for cls in list_jobs()]
    return names + list(_ALIASES) if with_aliases else names


def resolve_job_name(name: str) -> str:
    load_entry_point_plugins()
    key = _ALIASES.get(name, name)
    if key not in _JOBS:
        raise UnknownNameError("task", name, job_names(with_aliases=True))
    return key


def job_class(name: str) -> type[Job]:
    return _JOBS[resolve_job_name(name)].cls


def job_source(name: str) -> str:
    """Where job ``name`` came from: ``losscli``, ``plugin my_job.py``, ``plugin entry
    point NAME = 'pkg:fn'`` or ``module NAME`` (registered by a plain import)."""
    return _JOBS[resolve_job_name(name)].source


def create_job(name: str, **options: Any) -> Job:
    return job_class(name)(**options)
