"""Shared by the per-job benchmarks (run as ``python benchmarks/NAME.py``, so this
folder is on the import path)."""

from __future__ import annotations

from collections.abc import Iterator

from losscli.jobs import Job, JobData, create_job
from losscli.sweep import job_data


def jobs_with_data(names: str, device: str) -> Iterator[tuple[Job, JobData]]:
    """Each job of the comma-separated ``names`` with its data on ``device``; a job whose
    data cannot be loaded here (e.g. fashion without its files) is skipped with a line."""
    for name in names.split(","):
        try:
            job = create_job(name)
            data = job_data(job, device)
        except Exception as exc:
            print(f"{name:<11}skipped: {exc}")
            continue
        yield job, data
