"""No job's training step makes a GPU wait on the host, with any of its default losses.

The sync operators (``.item()``, boolean-mask indexing, ...) show up in a CPU profile just
as they would on CUDA, so this runs everywhere.
"""

from __future__ import annotations

import pytest
import torch

from losscli.jobs import create_job
from losscli.losses import create_loss, register_loss
from losscli.losses.image import MissingWeightsError
from losscli.profiling import profile_steps
from losscli.settings import Settings

JOBS = ("mnist", "reg", "imbalanced", "seg", "denoise", "det")  # fashion: mnist's step


def _cfg(job, data, batch_size: int | None = None) -> Settings:
    return job.settings(data, Settings(steps=2, batch_size=batch_size))


@pytest.mark.parametrize("task", JOBS)
def test_training_step_has_no_host_sync(task):
    job = create_job(task)
    data = job.load_data()
    for spec in job.task.losses:
        loss = create_loss(spec)
        try:
            p = profile_steps(job, data, loss, _cfg(job, data, 16), steps=2, warmup=1)
        except MissingWeightsError:  # lpips/dists without their downloaded weights
            continue
        assert p.syncs == {}, f"{task} {spec}: host syncs per step {p.syncs}"
        assert p.ms_per_step > 0 and p.top


def test_the_check_sees_a_host_sync():
    @register_loss("syncs", family="classification", pred="logits", target="index",
                   description="reads values on the host", reference="test")
    def syncs(pred, target, *, reduction="mean"):
        value = torch.nn.functional.cross_entropy(pred, target)
        picked = pred[pred > 0]  # boolean-mask indexing: nonzero
        return value + 0 * picked.sum() + 0 * float(value)  # .item()

    job = create_job("mnist")
    data = job.load_data()
    p = profile_steps(job, data, create_loss("syncs"), _cfg(job, data, 16), steps=2, warmup=1)
    assert p.syncs.get("aten::nonzero", 0) >= 1
    assert p.syncs.get("aten::_local_scalar_dense", 0) >= 1
