"""The job contract (``losscli.jobs.contract``) over every registered job, plugins' too.

Parametrized over ``job_names()`` (the standard jobs and any entry-point plugin) and the
jobs of the plugin files in ``LOSSCLI_CONTRACT_PLUGINS`` (``os.pathsep``-separated; the
README's ``docs/examples/my_job.py`` always), so a new job is covered the moment it is
registered. Small options keep it fast on 2 CPU cores; a job without them runs with its
defaults. ``fashion`` is skipped without its data files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from folder_fixtures import write_class_csv, write_image_folder, write_mask_folder
from torch import nn

import losscli.jobs as jobs
from losscli.errors import UsageError
from losscli.jobs import JobData, Split, create_job, job_names
from losscli.jobs.contract import (
    ContractError,
    check_data,
    check_deterministic,
    check_learns,
    check_probe,
)
from losscli.losses import load_plugin
from losscli.losses.registry import restorer

EXAMPLE = str(Path(__file__).parents[1] / "docs" / "examples" / "my_job.py")
PLUGINS = [EXAMPLE, *filter(None, os.environ.get("LOSSCLI_CONTRACT_PLUGINS", "").split(
    os.pathsep))]

TINY = {  # options and a batch size per job: small data, fast steps
    "mnist": ({"val_size": 100}, 32),
    "fashion": ({"val_size": 100}, 32),
    "reg": ({"n_train": 128, "n_val": 32, "n_test": 64}, 32),
    "det": ({"max_images": 16}, 8),
    "imbalanced": ({"pos_ratio": 0.1}, 32),
    "seg": ({"image_size": 16, "n_train": 32, "n_val": 8, "n_test": 8, "num_classes": 2}, 8),
    "denoise": ({"n_train": 64, "n_val": 16, "n_test": 16, "noisy_copies": 1}, 16),
    "images": ({"image_size": 8}, 8),
    "masks": ({}, 4),
    "table": ({"target_column": "kind"}, 16),
    "my_job": ({"n_train": 256}, 64),
}
STEPS = {"imbalanced": 40}  # one positive per batch or so: a few more steps to show


def _plugin_jobs(path: str) -> list[tuple[str, str]]:
    """(plugin, job) for each job the plugin registers; the registry is left as it was."""
    restore, before = restorer(jobs._JOBS, jobs._ALIASES), set(job_names())
    modules = set(sys.modules)
    try:
        load_plugin(path)
        return [(path, name) for name in job_names() if name not in before]
    finally:
        restore()
        for name in set(sys.modules) - modules:
            del sys.modules[name]


CASES = [(None, name) for name in job_names()] + [c for p in PLUGINS for c in _plugin_jobs(p)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("user-data")
    return {"images": {"data_dir": str(write_image_folder(root / "pets"))},
            "masks": {"data_dir": str(write_mask_folder(root / "seg"))},
            "table": {"csv": str(write_class_csv(root / "t.csv"))}}


@pytest.fixture(scope="module")
def loaded():
    """Each job's data, loaded (and checked) once for the module's tests."""
    return {}


@pytest.fixture(params=CASES, ids=[name for _, name in CASES])
def case(request, folders, loaded):
    plugin, name = request.param
    if plugin:
        load_plugin(plugin)
    options, batch = TINY.get(name, ({}, None))
    job = create_job(name, **options, **folders.get(name, {}))
    if name not in loaded:
        try:
            loaded[name] = check_data(job)
        except UsageError as exc:
            if name == "fashion":
                pytest.skip(f"fashion's data is missing: {exc}")
            raise
    return job, loaded[name], batch


def test_data_shapes_agree_and_reload_identically(case):
    job, data, _ = case
    assert len(data.train) and len(data.val) and len(data.test)


def test_every_compatible_loss_on_a_probe_batch(case):
    job, _, _ = case
    refused = check_probe(job)
    assert not set(job.task.losses) & set(refused)


def test_a_few_steps_lower_the_loss(case):
    job, data, batch = case
    before, after = check_learns(job, data, steps=STEPS.get(job.name, 20), batch_size=batch)
    assert after < before


def test_same_seed_same_numbers(case):
    job, data, batch = case
    check_deterministic(job, data, batch_size=batch)


# --------------------------------------------------------------------------- the checks bite


def _broken(**overrides):
    """The example plugin's job with one method replaced."""
    load_plugin(EXAMPLE)
    return type("BrokenJob", (jobs.job_class("my_job"),), overrides)(n_train=256)


class _Constant(nn.Module):
    """Output that no parameter changes: no loss can fall."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(len(x), 2) + 0 * self.w


def test_contract_catches_unseeded_data():
    def load_data(self):
        x = torch.randn(80, 2)
        return JobData(Split(x[:64], torch.zeros(64, dtype=torch.long)),
                       Split(x[64:72], torch.zeros(8, dtype=torch.long)),
                       Split(x[72:], torch.zeros(8, dtype=torch.long)), "random")

    with pytest.raises(ContractError, match="differs when loaded again"):
        check_data(_broken(load_data=load_data))


def test_contract_catches_mismatched_splits():
    def load_data(self):
        x, y = torch.ones(16, 2), torch.zeros(16, dtype=torch.long)
        return JobData(Split(x, y), Split(x[:, :1], y), Split(x, y), "bad")

    with pytest.raises(ContractError, match=r"val\.x is torch.float32 \(1,\) per sample"):
        check_data(_broken(load_data=load_data))


def test_contract_catches_a_model_that_does_not_learn():
    job = _broken(build_model=lambda self, data: _Constant())
    with pytest.raises(ContractError, match="did not lower it"):
        check_learns(job, job.load_data(), steps=3)
