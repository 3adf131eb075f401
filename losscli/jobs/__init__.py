"""The standard jobs, by name."""

from __future__ import annotations

from typing import Any

from losscli.errors import UnknownNameError
from losscli.jobs.base import Job, JobData, Objective, Split, TaskFile, load_task_file
from losscli.jobs.classification import FashionJob, MnistJob
from losscli.jobs.denoise import DenoiseJob
from losscli.jobs.detection import DetectionJob
from losscli.jobs.imbalanced import ImbalancedJob
from losscli.jobs.regression import RegressionJob
from losscli.jobs.segmentation import SegmentationJob

__all__ = ["Job", "JobData", "Objective", "Split", "TaskFile", "create_job", "job_class", "job_names",
           "list_jobs",
           "load_task_file", "resolve_job_name"]

_JOBS: dict[str, type[Job]] = {cls.name: cls for cls in (MnistJob, FashionJob, RegressionJob,
                                                          DetectionJob, ImbalancedJob,
                                                          SegmentationJob, DenoiseJob)}


def list_jobs() -> list[type[Job]]:
    return list(_JOBS.values())


def job_names(with_aliases: bool = False) -> list[str]:
    names = list(_JOBS)
    if with_aliases:
        names += [a for cls in _JOBS.values() for a in cls.aliases]
    return names


def resolve_job_name(name: str) -> str:
    for cls in _JOBS.values():
        if name == cls.name or name in cls.aliases:
            return cls.name
    raise UnknownNameError("task", name, job_names(with_aliases=True))


def job_class(name: str) -> type[Job]:
    return _JOBS[resolve_job_name(name)]


def create_job(name: str, **options: Any) -> Job:
    return job_class(name)(**options)
