"""The one run path: a plan (validated before anything trains), executed into a store.

``train``, ``sweep``, ``check`` and ``baseline`` all come here: they turn their arguments
into ``JobRequest``s and call ``run`` (or ``make_plan`` for a dry run); this module plans,
resumes, writes ``meta.json``, executes and reads the results back. Execution is
resumable: a run whose key is already in the store is skipped. Runs execute in this
process, in a pool of worker processes (``workers``), or as one shard of a ``torchrun``
launch (each rank takes every world_size-th run and writes its own shard).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from losscli.engine import RunOutcome, run_one, run_seeds
from losscli.errors import Interrupted, UsageError
from losscli.files import clip
from losscli.jobs import Job, JobData, create_job
from losscli.losses import Loss, LossInfo, LossTerm, create_loss, list_losses, load_plugin
from losscli.losses.image import MissingWeightsError
from losscli.results import (
    ResultStore,
    RunResult,
    best_value,
    curve_auc,
    read_runs,
    steps_to_target,
)
from losscli.settings import Settings
from losscli.suite import JobRequest
from losscli.tuning import Tune
from losscli.vectorised import Calibration

__all__ = ["Plan", "Progress", "RunSpec", "SweepResult", "compatible_losses", "execute",
           "load_plugins", "make_plan", "run", "run_suite", "versions"]


@dataclass(frozen=True)
class RunSpec:
    job: Job
    loss: Loss
    seed: int
    cfg: Settings  # resolved: every field set
    tune: Tune | None = None  # tune this run's (variant, loss) first (see losscli.tuning)
    phase: str = "run"  # run | tune | final
    trial: int | None = None
    tuned: str = ""  # JSON of the tuned values (tune and final phases)

    @property
    def key(self) -> str:
        """Stable identity: everything that changes the numbers, hashed."""
        ident = {
            "job": self.job.name,
            "options": {k: str(v) for k, v in sorted(self.job.options.items())},
            "loss": self.loss.key,
            "seed": self.seed,
            # the device type, not its index: rank 3's cuda:3 runs the same run as cuda:0
            "cfg": {**self.cfg.identity(), "device": self.cfg.device.split(":")[0]},
        }
        if self.phase != "run":  # a trial and a final run of the same settings differ
            ident["phase"] = [self.phase, self.trial]
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """Every run, the data they train on (loaded once, on the run device) and the
    vectorised-seeds calibration shared by the plan's runs."""

    runs: list[RunSpec]
    data: dict[tuple, JobData]  # job data key → its data
    calibration: Calibration = field(default_factory=Calibration)

    def keys(self) -> list[str]:
        return [r.key for r in self.runs]

    @property
    def sources(self) -> dict[tuple, str]:
        return {k: d.source for k, d in self.data.items()}

    def jobs(self) -> list[Job]:
        return list({r.job.name: r.job for r in self.runs}.values())


class Progress(Protocol):
    """What the caller is told while a plan is made and executes (the CLI draws from it).

    ``phase``: work before training (plan checks, calibration, starting workers); ``plan``:
    the runs left to train and how many this process has in all; ``start``: runs that train
    now (several seeds when stacked); ``step``: their latest step (``key``: the first run's
    key, given when several train at once, as in a worker pool); ``done``: a finished run."""

    def phase(self, text: str) -> None: ...
    def plan(self, todo: Sequence[RunSpec], total: int) -> None: ...
    def start(self, specs: Sequence[RunSpec]) -> None: ...
    def step(self, step: int, key: str | None = None) -> None: ...
    def done(self, spec: RunSpec, result: RunResult) -> None: ...


class _Silent:
    def phase(self, text: str) -> None: ...
    def plan(self, todo: Sequence[RunSpec], total: int) -> None: ...
    def start(self, specs: Sequence[RunSpec]) -> None: ...
    def step(self, step: int, key: str | None = None) -> None: ...
    def done(self, spec: RunSpec, result: RunResult) -> None: ...


def versions() -> str:
    import torchvision

    import losscli

    return (f"losscli={losscli.__version__};torch={torch.__version__};"
            f"torchvision={torchvision.__version__};python={platform.python_version()}")


def load_plugins(plugins: Sequence[str]) -> list[str]:
    for p in plugins:
        load_plugin(p)
    return list(plugins)


# --------------------------------------------------------------------------- planning


def compatible_losses(job: Job) -> list[str]:
    return [i.name for i in list_losses() if job.incompatibility(i) is None]


def _loss_problems(job: Job, spec: str) -> tuple[Loss | None, list[str]]:
    flag = f"--loss {clip(spec)}"
    try:
        loss = create_loss(spec)
    except UsageError as exc:
        return None, [f"{flag}: {exc}"]
    problems = [f"{flag}: {term.info.name}: {why}" for term in loss.terms
                if (why := job.incompatibility(_as_given(term)))]
    if not problems:
        output, target = job.probe()
        try:  # bad parameter values (e.g. gamma=-1) fail here, not halfway through a sweep
            job.bind(loss)(output, target)
        except (ValueError, TypeError, MissingWeightsError) as exc:
            problems.append(f"{flag}: {exc}")
    return loss, problems


def _as_given(term: LossTerm) -> LossInfo:
    """``term``'s metadata less the needs its spec sets itself (``ldam:class_counts=[...]``
    trains on any job whose outputs fit)."""
    given = {k for k, _ in term.params}
    return replace(term.info, needs=term.info.needs - given) if given else term.info


def _check_request(req: JobRequest, prefix: str) -> tuple[Job | None, list[Loss], list[str]]:
    """The job and losses of one request, or the problems that stop it."""
    try:
        job = create_job(req.task, **req.options)
    except UsageError as exc:
        return None, [], [prefix + str(exc)]
    problems, losses = [], []
    for spec in dict.fromkeys(req.losses or job.task.losses):  # a repeated loss runs once
        loss, errs = _loss_problems(job, spec)
        problems += [prefix + e for e in errs]
        losses.append(loss)
    if problems:
        problems.append(f"{prefix}losses that apply to {job.name}: "
                        + ", ".join(compatible_losses(job)))
    return job, losses, problems


def make_plan(requests: Sequence[JobRequest], device: str = "cpu", bf16: bool = False
              ) -> Plan:
    """Resolve names, load the data and check every loss against its job before training.

    Settings are layered: the job's task file, then the request's (suite defaults, suite
    entry or command line), then ``device`` and ``bf16``.

    Raises:
        UsageError: naming every problem found (unknown names, incompatible pairs, bad values).
    """
    if bf16 and not device.startswith("cuda"):
        raise UsageError("--bf16 needs --device cuda")
    _check_size(requests)
    checked, problems = [], []
    for req in requests:
        prefix = f"{req.where}: " if req.where else f"[{req.task}] " if len(requests) > 1 else ""
        job, losses, found = _check_request(req, prefix)
        problems += found
        if job is not None:
            checked.append((req, job, losses))
    if problems:
        raise UsageError("\n".join(problems))
    runs, origins, data = [], [], {}
    for req, job, losses in checked:
        if job.data_key not in data:  # a data error (e.g. missing files) is a usage error too
            data[job.data_key] = job.load_data().to(device)
        cfg = job.settings(data[job.data_key], Settings(device=device, bf16=bf16)
                           .over(req.settings))
        runs += [RunSpec(job, loss, seed, cfg, tune=req.tune) for loss in losses
                 for seed in req.seeds]
        origins += [f"{req.where or job.name}: {loss.spec} seed {seed}"
                    for loss in losses for seed in req.seeds]
    _refuse_duplicates(runs, origins)
    return Plan(runs=runs, data=data)


MAX_RUNS = 10_000  # runs in one plan


def _check_size(requests: Sequence[JobRequest]) -> None:
    """Refuse a plan too large to be meant, before anything is built for it."""
    total = sum(max(1, len(set(r.losses))) * len(r.seeds) for r in requests)
    if total > MAX_RUNS:
        raise UsageError(f"the plan has {total:,} runs (jobs x losses x seeds; at most "
                         f"{MAX_RUNS:,}): list fewer, or split it into several suites")


def _refuse_duplicates(runs: Sequence[RunSpec], origins: Sequence[str]) -> None:
    """Two entries planning one run (the same run key: job, options, settings, loss and
    seed) would train it twice and write it twice: refused, naming both."""
    first: dict[str, str] = {}
    clashes = []
    for spec, origin in zip(runs, origins, strict=True):
        if spec.key in first:
            clashes.append(f"{origin} is the same run as {first[spec.key]}")
        else:
            first[spec.key] = origin
    if clashes:
        more = f"\n... and {len(clashes) - 10} more" if len(clashes) > 10 else ""
        raise UsageError("duplicate runs (same job, options, settings, loss and seed; remove "
                         "one of each pair):\n" + "\n".join(clashes[:10]) + more)


# --------------------------------------------------------------------------- results


def result_of(spec: RunSpec, data: JobData, out: RunOutcome, together: int = 1,
              rung: int | None = None) -> RunResult:
    """A finished run as its runs.csv row: validation numbers from the eval curve, test
    numbers from the one test evaluation."""
    job, name = spec.job, spec.job.primary_metric
    later = out.evals[1:] or out.evals  # "best" is over the evals after step 0
    finals = later[-1][1] if later else {}
    val_curve = [(s, m[name]) for s, m in out.evals]
    reached = steps_to_target(val_curve, job.task.target, job.maximize)
    cfg = spec.cfg
    return RunResult(
        run_key=spec.key, job=job.name, job_options=job.options_json, loss=spec.loss.spec,
        loss_key=spec.loss.key, seed=spec.seed, device=cfg.device, status=out.status,
        error=out.error, primary_metric=name, maximize=job.maximize,
        val_best=best_value([m[name] for _, m in later], job.maximize) if later else math.nan,
        val_final=finals.get(name, math.nan), test_final=out.test.get(name, math.nan),
        selection=cfg.select, selected_step=out.selected_step,
        target=job.task.target, steps_to_target=reached if out.status == "ok" else None,
        curve_auc=curve_auc(val_curve, cfg.steps),
        final_train_loss=out.train_loss[-1][1] if out.train_loss else math.nan,
        steps=cfg.steps, eval_every=cfg.eval_every, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay, bf16=cfg.bf16, threads=torch.get_num_threads(),
        train_seconds=round(out.train_seconds, 4),
        samples_per_s=out.timed_samples / out.train_seconds if out.train_seconds else math.nan,
        loss_ms_per_step=out.loss_ms_per_step, peak_mem_mb=round(out.peak_mem_mb, 1),
        seeds_together=together, phase=spec.phase, trial=spec.trial, rung=rung,
        tuned=spec.tuned, val_metrics=finals,
        test_metrics=out.test,
        data_source=data.source, versions=versions(),
        finished_at=datetime.now(timezone.utc).isoformat())


def history_of(out: RunOutcome) -> list[tuple[int, str, str, float]]:
    """A run's history.csv rows (step, split, metric, value): the training loss, the
    validation evals, the test evaluation at the selected step, and the per-run series
    (e.g. split ``test_bins``, step = bin index)."""
    rows = [(s, "train", "loss", v) for s, v in out.train_loss]
    rows += [(s, "val", k, v) for s, m in out.evals for k, v in m.items()]
    rows += [(out.selected_step, "test", k, v) for k, v in out.test.items()]
    series = [(i, split, k, v) for split, columns in out.series.items()
              for k, values in columns.items() for i, v in enumerate(values)]
    return sorted(rows, key=lambda r: r[0]) + series


# --------------------------------------------------------------------------- execution


def _seed_groups(runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Runs that differ only in the seed, in plan order."""
    groups: dict[tuple, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault((r.job.data_key, r.job.options_json, r.loss.key, r.cfg), []).append(r)
    return list(groups.values())


def shard(runs: list[RunSpec], rank: int, world_size: int) -> list[RunSpec]:
    """This rank's share of the plan: every world_size-th run, in plan order."""
    return runs[rank::world_size]


def _stack(plan: Plan, group: list[RunSpec], data: JobData, vectorise: str,
           progress: Progress) -> bool:
    """Whether the seeds of ``group`` train as one vmapped model (see ``vectorised``)."""
    first = group[0]
    if len(group) < 2 or vectorise == "never" or first.cfg.bf16:
        return False  # bf16: a vmapped forward does not autocast, so one seed at a time
    if vectorise == "always":
        return True
    progress.phase(f"calibrating {first.job.name}: stack {len(group)} seeds?")
    return plan.calibration.choose(
        first.job, data, first.loss, first.cfg, [s.seed for s in group])


def _run_group(plan: Plan, group: list[RunSpec], store: ResultStore, vectorise: str,
               progress: Progress) -> None:
    """The seeds of one (job, loss, settings): stacked when allowed and faster (each row
    written when the stack finishes), else one by one (each row written as its run
    finishes)."""
    first = group[0]
    data = plan.data[first.job.data_key]
    if _stack(plan, group, data, vectorise, progress):
        progress.start(group)
        outs = run_seeds(first.job, data, first.loss, first.cfg, [s.seed for s in group],
                         vectorised=True, on_step=progress.step)
        for spec, out in zip(group, outs, strict=True):
            _write(store, progress, spec, result_of(spec, data, out, len(group)), out)
        return
    for spec in group:
        progress.start([spec])
        out = run_one(spec.job, data, spec.loss, spec.cfg, spec.seed, progress.step)
        _write(store, progress, spec, result_of(spec, data, out), out)


def _write(store: ResultStore, progress: Progress, spec: RunSpec, result: RunResult,
           out: RunOutcome) -> None:
    store.append(result, history_of(out))
    progress.done(spec, result)


def execute(plan: Plan, store: ResultStore, *, runs: Sequence[RunSpec] | None = None,
            workers: int = 1, plugins: Sequence[str] = (), vectorise: str = "auto",
            progress: Progress | None = None) -> None:
    """Run every run of ``runs`` (default: the plan's) not in ``store`` yet; append each
    as it finishes."""
    progress = progress or _Silent()
    done = store.finished_keys()
    todo = [r for r in (plan.runs if runs is None else runs) if r.key not in done]
    if workers > 1 and len(todo) > 1:
        from losscli.pool import execute_pool

        execute_pool(plan, todo, store, workers, plugins, progress)
        return
    for group in _seed_groups(todo):
        _run_group(plan, group, store, vectorise, progress)


# --------------------------------------------------------------------------- tuning


def tune_plan(plan: Plan, store: ResultStore, progress: Progress | None = None,
              storage: Any = None, vectorise: str = "auto") -> Plan:
    """The plan with each tuned (variant, loss) replaced by its winner's final runs, after
    running (or replaying from ``store``) its trials; see ``losscli.tuning``. ``storage``:
    an Optuna RDB storage shared with other processes (``losscli.tuning_storage``).
    ``vectorise``: whether the learning-rate trials of a loss may train as one vmapped
    model (``auto``: where the plan's calibration finds stacking faster, as for seeds)."""
    from dataclasses import replace

    from losscli import tuning
    from losscli.results import read_history

    progress = progress or _Silent()
    stored = read_runs(store.root).set_index("run_key")
    history = read_history(store.root)
    budgets = _trial_budgets(plan)
    runs = []
    for group in _seed_groups(plan.runs):
        first = group[0]
        if first.tune is None:
            runs += group
            continue
        space = first.tune.grid(first.loss, first.cfg.lr)
        progress.phase(f"tuning {first.job.name} {first.loss.spec}: "
                       f"{budgets[_variant_of(first)]} trials on validation")
        def trial(n, p, ask, first=first):
            return _trial(plan, store, first, n, p, ask, stored, history, progress)

        def stack(trials, halving, first=first):
            return _trial_stack(plan, store, first, trials, halving, stored, history,
                                progress)

        budget = budgets[_variant_of(first)]
        if storage is None:
            stacked = _stack_trials(plan, first, space, budget, vectorise, progress)
            params = tuning.tune_group(space, budget, first.job.maximize, first.cfg.steps,
                                       trial, first.tune.first_rung,
                                       run_stack=stack if stacked else None)
        else:
            params = _tune_shared(storage, first, space, budgets[_variant_of(first)], trial,
                                  progress)
        loss, cfg = tuning.configure(first.loss, params), tuning.settings_with(first.cfg, params)
        runs += [replace(s, loss=loss, cfg=cfg, phase="final", tuned=tuning.describe(params))
                 for s in group]
    return replace(plan, runs=runs)


def _tune_shared(storage, first: RunSpec, space, budget: int, trial, progress: Progress):
    """One (variant, loss) tuned on a study shared with other processes: named by the
    group's run identity, its space, its budget and the pruner's settings."""
    from losscli import tuning, tuning_storage

    name = tuning_storage.study_name(first.job.name, first.loss.key, {
        "run": first.key, "space": space, "trials": budget,
        "pruner": [tuning.ETA, first.tune.first_rung]})
    return tuning_storage.tune_shared(storage, name, space, budget, first.job.maximize,
                                      first.cfg.steps, trial, progress.phase,
                                      first.tune.first_rung)


def _stack_trials(plan: Plan, first: RunSpec, space: dict[str, list], budget: int,
                  vectorise: str, progress: Progress) -> bool:
    """Whether the trials of ``first``'s loss train as one vmapped model: only learning
    rates are searched (a loss parameter changes the loss itself), and the calibration
    finds a stack of that many members faster, as it decides for seeds."""
    if vectorise == "never" or set(space) != {"lr"} or budget < 2 or first.cfg.bf16:
        return False
    if vectorise == "always":
        return True
    progress.phase(f"calibrating {first.job.name}: stack {budget} trials?")
    return plan.calibration.choose(first.job, plan.data[first.job.data_key], first.loss,
                                   first.cfg, list(range(budget)))


def _trial_stack(plan, store, first, trials, make_halving, stored, history, progress):
    """The trials of one loss (``trials``: number, params): the stored ones read back, the
    others trained together (``engine.run_trials``), halving deciding at each rung; each
    row written as its trial ends (a pruned one at its rung)."""
    from dataclasses import replace

    from losscli import tuning
    from losscli.engine import run_trials

    name, steps, first_rung = first.job.primary_metric, first.cfg.steps, first.tune.first_rung
    specs = {n: replace(first, loss=tuning.configure(first.loss, p),
                        cfg=tuning.settings_with(first.cfg, p), phase="tune", trial=n,
                        tuned=tuning.describe(p), tune=None) for n, p in trials}
    outcomes: dict[int, tuning.Trial] = {}
    for n, spec in specs.items():
        if spec.key in stored.index and stored.loc[spec.key, "status"] != "error":
            curve = _stored_curve(history, spec.key, name)
            outcomes[n] = tuning.Trial(curve, stored.loc[spec.key, "status"],
                                       float(stored.loc[spec.key, "val_final"]))
    todo = [n for n in specs if n not in outcomes]
    halving = make_halving(todo, {n: t.curve for n, t in outcomes.items()})
    if not todo:
        return outcomes
    data = plan.data[first.job.data_key]

    def finish(k: int, out) -> None:
        spec = specs[todo[k]]
        curve = [(s, m[name]) for s, m in out.evals]
        result = result_of(spec, data, out, len(todo),
                           rung=tuning.rung_of(curve, steps, first_rung))
        _write(store, progress, spec, result, out)
        outcomes[todo[k]] = tuning.Trial(curve, out.status, result.val_final)

    progress.start([specs[n] for n in todo])
    outs = run_trials(first.job, data, first.loss, [specs[n].cfg for n in todo], first.seed,
                      lambda step, values: {todo.index(n) for n in halving.decide(
                          step, {todo[k]: v for k, v in values.items()})},
                      finish, progress.step,
                      eval_also=tuning.rung_steps(steps, first_rung))
    for k, out in enumerate(outs):
        if todo[k] not in outcomes:  # completed, diverged or errored: written now
            finish(k, out)
    return outcomes


def _stored_curve(history, key: str, metric: str) -> list[tuple[int, float]]:
    """A stored trial's validation curve of ``metric``, (step, value) in step order."""
    h = history[(history["run_key"] == key) & (history["split"] == "val")
                & (history["metric"] == metric)].sort_values("step")
    return list(zip(h["step"].astype(int), h["value"].astype(float), strict=True))


def _variant_of(spec: RunSpec) -> tuple:
    return (spec.job.data_key, spec.cfg)


def _trial_budgets(plan: Plan) -> dict[tuple, int]:
    """Trials per loss in each variant: the same for every loss (the largest grid)."""
    budgets: dict[tuple, int] = {}
    for r in plan.runs:
        if r.tune is not None:
            size = r.tune.trials or math.prod(len(v) for v in
                                              r.tune.grid(r.loss, r.cfg.lr).values())
            budgets[_variant_of(r)] = max(budgets.get(_variant_of(r), 0), size)
    return budgets


def _trial(plan, store, first, number, params, ask_prune, stored, history, progress):
    """One trial: replayed from the store when it finished before, else trained."""
    from dataclasses import replace

    from losscli import tuning

    spec = replace(first, loss=tuning.configure(first.loss, params),
                   cfg=tuning.settings_with(first.cfg, params), phase="tune", trial=number,
                   tuned=tuning.describe(params), tune=None)
    name = first.job.primary_metric
    if spec.key in stored.index and stored.loc[spec.key, "status"] != "error":
        curve = _stored_curve(history, spec.key, name)
        for step, value in curve[1:]:  # the same pruning questions, in the same order
            if ask_prune(step, value):
                break
        row = stored.loc[spec.key]
        return tuning.Trial(curve, row["status"], float(row["val_final"]))
    data = plan.data[first.job.data_key]
    progress.start([spec])
    tick = getattr(ask_prune, "tick", None)  # the tuner's per-step check (an interrupt)

    def on_step(step: int, key: str = spec.key) -> None:
        if tick is not None:
            tick()
        progress.step(step, key)  # by key: the trials of a rung take turns

    out = run_one(spec.job, data, spec.loss, spec.cfg, spec.seed, on_step, ask_prune,
                  eval_also=tuning.rung_steps(spec.cfg.steps, first.tune.first_rung))
    curve = [(s, m[name]) for s, m in out.evals]
    result = result_of(spec, data, out, rung=tuning.rung_of(curve, spec.cfg.steps,
                                                            first.tune.first_rung))
    _write(store, progress, spec, result, out)
    return tuning.Trial(curve, out.status, result.val_final)


# --------------------------------------------------------------------------- the run path


@dataclass
class SweepResult:
    plan: Plan
    runs: Any  # pandas.DataFrame of the plan's runs (read back from the store)
    root: Path


def run(requests: Sequence[JobRequest], root: Path, *, device: str = "cpu",
        bf16: bool = False, workers: int = 1, plugins: Sequence[str] = (),
        vectorise: str = "auto", progress: Callable[[], Any] | None = None,
        meta: dict[str, Any] | None = None, tune_storage: str | None = None
        ) -> SweepResult | None:
    """Plan, resume and execute; on rank 0 return the plan, its runs and the run directory.

    ``progress()`` makes a context manager that yields a ``Progress``: it is told of the
    plan checks first, then of the runs.
    Under torchrun each rank runs its share and writes its own shard; ranks other than 0
    return None. ``tune_storage``: a database URL whose Optuna studies the tuning trials
    share with other processes (every rank under torchrun); see ``losscli.tuning_storage``.
    """
    rank, world, device = _distributed(device)
    if tune_storage:
        from losscli import tuning_storage

        tuning_storage.check_url(tune_storage, Path(root))
        meta = {**(meta or {}), "tune_storage": tuning_storage.shown_url(tune_storage)}
    with (progress or _no_progress)() as bars:
        bars.phase("checking the plan, loading data")
        plan = make_plan(requests, device, bf16)
        store = ResultStore(root, shard=f"rank{rank}" if world > 1 else None)
        with store.locked(), _resumable(store.root):  # one writer per file; Ctrl-C names root
            if any(r.tune is not None for r in plan.runs):  # trials are rows too: locked
                if world > 1 and not tune_storage:
                    raise UsageError("tuning under torchrun needs --tune-storage, a database "
                                     "the ranks share (sqlite:///RUN_DIR/optuna.db on one "
                                     "machine, postgresql://USER@HOST/DB across machines)")
                plan = tune_plan(plan, store, bars, tuning_storage.open_storage(tune_storage)
                                 if tune_storage else None, vectorise=vectorise)
            mine = shard(plan.runs, rank, world)
            done = store.finished_keys()
            if rank == 0:
                store.write_meta(run_meta(plan, device, world_size=world, workers=workers,
                                          **(meta or {})))
            bars.plan([r for r in mine if r.key not in done], len(mine))
            execute(plan, store, runs=mine, workers=workers, plugins=plugins,
                    vectorise=vectorise, progress=bars)
    _barrier(world)
    if rank != 0:
        return None
    runs = read_runs(store.root)
    return SweepResult(plan, runs[runs["run_key"].isin(plan.keys())], store.root)


@contextmanager
def _resumable(root: Path) -> Iterator[None]:
    """An interrupt (Ctrl-C; SIGTERM through the CLI) while runs train becomes
    ``Interrupted`` naming the run directory, which the same command resumes."""
    try:
        yield
    except KeyboardInterrupt as exc:
        raise Interrupted(getattr(exc, "signum", signal.SIGINT), root) from None


def run_suite(suite_file: Path, out_dir: Path | None = None, **kwargs: Any
              ) -> SweepResult | None:
    """``run`` for a suite file; the run directory defaults to results/runs/<suite name>."""
    from losscli.suite import load_suite

    suite = load_suite(suite_file)
    root = out_dir or Path("results") / "runs" / suite.name
    if kwargs.get("tune_storage") is None:  # --tune-storage wins over the suite's
        kwargs["tune_storage"] = suite.tune_storage
    return run(suite.requests, root, meta={"suite": str(suite_file)}, **kwargs)


class _no_progress:  # noqa: N801  (used like a function that makes a context manager)
    def __enter__(self) -> Progress:
        return _Silent()

    def __exit__(self, *exc) -> None:
        return None


def run_meta(plan: Plan, device: str, **extra: Any) -> dict[str, Any]:
    """meta.json: the command line, versions, device, git commit, what was planned."""
    return {
        "command": shlex.join(["losscli", *sys.argv[1:]]),
        "jobs": sorted({r.job.name for r in plan.runs}),
        "job_options": {r.job.name: r.job.options for r in plan.runs},
        "data_sources": {k[0]: v for k, v in plan.sources.items()},
        "losses": sorted({r.loss.spec for r in plan.runs}),
        "seeds": sorted({r.seed for r in plan.runs}),
        "planned_runs": len(plan.runs),
        "config": {r.job.name: r.cfg.identity() for r in plan.runs},
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "git_commit": _git_commit(),
        "started_at": datetime.now(timezone.utc).isoformat(),
        **extra,
    }


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


def _distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; gloo on CPU, NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # ranks finish their shards at different times: wait long at the final barrier
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=24))
    return dist.get_rank(), world, "cuda" if cuda else device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
