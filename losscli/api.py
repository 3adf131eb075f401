"""The Python API, for notebooks and scripts: compare losses on a job, read run directories.

``compare`` is ``losscli train`` without a terminal: the same plan, result store and
summary (``losscli.sweep.run``, then ``losscli.results.summarize``), so a run directory
written by one is read, resumed and reported by the other. Errors are the ones the CLI
turns into exit 2: a ``UsageError`` (a ``ValueError``) naming the problem.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["compare", "load_runs"]


def compare(
    task: str,
    losses: str | Sequence[str] | None = None,
    *,
    seeds: int | Sequence[int] = 1,
    steps: int | None = None,
    tune: str | Sequence[str] | None = None,
    tune_storage: str | None = None,
    options: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    plugins: Sequence[str] = (),
    **settings: Any,
) -> pd.DataFrame:
    """Train ``task`` with each loss for each seed; the summary, as ``losscli train``.

    Args:
        task: a job name or alias (``losscli list tasks``); a plugin's job once
            ``plugins`` has loaded it.
        losses: loss specs (``"ce"``, ``"focal:gamma=2"``, ``"dice+0.5*ce"``); a text is
            one spec; None: the job's default set.
        seeds: how many seeds (``0 .. seeds-1``), or the seeds themselves.
        steps: optimizer steps per run; None: the job's budget (its task file).
        tune: what to tune first on the validation split, as ``--tune`` takes it
            (``"lr"``, ``["lr", "focal:gamma=[1,2,5]"]``); None: nothing.
        tune_storage: a database URL whose Optuna studies the tuning trials share with
            other processes, as ``--tune-storage`` (``"sqlite:///runs/optuna.db"``).
        options: job options by name (``{"outliers": 0.1}``), as ``--opt NAME=VALUE``.
        out: the run directory, kept (runs already in it are not trained again); None: a
            temporary directory, removed before this returns.
        device: ``cpu``, ``cuda``, ``mps`` or ``auto``.
        plugins: ``.py`` files or module names registering losses or jobs.
        **settings: other budget settings: ``epochs``, ``batch_size``, ``lr``,
            ``optimizer``, ``weight_decay``, ``eval_every``, ``select`` (``final`` |
            ``best``).

    Returns:
        One row per (job variant, loss), ranked by the job's primary metric on the test
        split (``rank``, ``loss``, ``final_mean`` and ``final_std`` over seeds,
        ``<metric>_mean`` for every metric, ``steps_to_target``, ``train_seconds``, ...);
        a run that errored is counted in ``errors``, as the CLI reports it.

    Raises:
        UsageError: an unknown job, loss, option or setting, or a loss that does not
            apply to the job (before anything trains).
    """
    from losscli.engine import resolve_device
    from losscli.results import summarize
    from losscli.sweep import load_plugins, run

    load_plugins(plugins)  # before the job's name is looked up: it may be a plugin's
    request = _request(task, losses, seeds, steps, tune, options, settings)
    device = str(resolve_device(device))
    if out is not None:
        return summarize(run([request], Path(out), device=device, plugins=plugins,
                             tune_storage=tune_storage).runs)
    with tempfile.TemporaryDirectory(prefix="losscli-") as tmp:
        return summarize(run([request], Path(tmp), device=device, plugins=plugins,
                             tune_storage=tune_storage).runs)


def _request(task, losses, seeds, steps, tune, options, settings):
    """The one ``JobRequest`` of a ``compare``, checked by the rules suites follow."""
    from losscli.errors import UsageError
    from losscli.jobs import job_class
    from losscli.settings import Settings
    from losscli.suite import BUDGET_KEYS, JobRequest, _seeds
    from losscli.tuning import parse_tune

    unknown = sorted(set(settings) - set(BUDGET_KEYS))
    if unknown:
        raise UsageError(f"compare: unknown setting {', '.join(unknown)}; the settings are "
                         f"{', '.join(BUDGET_KEYS)}")
    problems: list[str] = []
    seed_list = _seeds(seeds if isinstance(seeds, int) else list(seeds), "compare", problems)
    if problems:
        raise UsageError("\n".join(problems))
    cls = job_class(task)
    return JobRequest(
        task=cls.name, losses=(losses,) if isinstance(losses, str) else tuple(losses or ()),
        seeds=seed_list, settings=Settings(steps=steps, **settings).check("compare"),
        options=dict(options or {}),
        tune=parse_tune([tune] if isinstance(tune, str) else list(tune or [])))


def load_runs(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run directory's runs (``runs.csv``, all shards, one row per run) and their
    history (``history.csv``: step, split, metric, value per row; finished runs only).

    Raises:
        UsageError: a directory that does not exist or holds no runs, or a file in it
            that is not a runs or history file.
    """
    from losscli.results import read_history, read_run_dir

    root = Path(run_dir)
    return read_run_dir(root), read_history(root)
