"""Shared by the per-job benchmarks (run as ``python benchmarks/NAME.py``, so this
folder is on the import path)."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from losscli.engine import Batches
from losscli.jobs import Job, JobData, create_job
from losscli.settings import Settings


def jobs_with_data(names: str, device: str) -> Iterator[tuple[Job, JobData]]:
    """Each job of the comma-separated ``names`` with its data on ``device``; a job whose
    data cannot be loaded here (e.g. fashion without its files) is skipped with a line."""
    for name in names.split(","):
        try:
            job = create_job(name)
            data = job.load_data().to(device)
        except Exception as exc:
            print(f"{name:<11}skipped: {exc}")
            continue
        yield job, data


def job_settings(job: Job, data: JobData, device: str, **given) -> Settings:
    """The job's budget (its task file) with ``given`` on top, resolved for ``data``."""
    return job.settings(data, Settings(device=device, **given))


def train_tensors(data: JobData) -> tuple[Tensor, Tensor]:
    """The training inputs and targets, found where the engine's batches take them."""
    batches = Batches(data, 1, seed=0)
    return batches.x, batches.y
