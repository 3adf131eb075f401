"""The job contract: data, model, adapter (model output → what a loss consumes), metrics.

A job never knows the CLI or the engine's loop; the engine calls it through this class.
"""

from __future__ import annotations

import json
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from losscli.losses import Family, Loss, LossInfo, LossTerm, Pred, Target
from losscli.options import Option, validate_options
from losscli.settings import Settings, layered

__all__ = ["Evaluation", "Job", "JobData", "Objective", "Option", "Split", "TaskFile",
           "eval_chunks", "hold_out", "load_task_file", "task_file_exists"]


def eval_chunks(x: Tensor) -> tuple[Tensor, ...]:
    """``x`` split for inference: 256 samples per chunk on CPU, where small chunks stay in
    cache (a 1,000-image MNIST eval: 0.07 s vs 0.14 s at 2,048), 2,048 elsewhere."""
    return x.split(256 if x.device.type == "cpu" else 2048)


@dataclass(frozen=True)
class TaskFile:
    """A parsed ``tasks/<job>.toml``: the job's budget, default losses and target."""

    budget: Settings
    losses: tuple[str, ...]
    target: float


def _tasks_dir() -> Path:
    try:
        return Path(str(resources.files("losscli.tasks")))
    except ModuleNotFoundError:  # a source checkout without an install
        return Path(__file__).resolve().parents[2] / "tasks"


def task_file_exists(name: str) -> bool:
    """Whether ``tasks/<name>.toml`` ships with losscli (a plugin job brings its own)."""
    return (_tasks_dir() / f"{name}.toml").is_file()


def load_task_file(name: str) -> TaskFile:
    path = _tasks_dir() / f"{name}.toml"
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    return TaskFile(
        budget=Settings(**doc.get("budget", {})).check(str(path)),
        losses=tuple(doc["defaults"]["losses"]),
        target=float(doc["defaults"]["target"]),
    )


@dataclass
class Split:
    """One split's inputs, targets and what its metrics need besides (e.g. boxes)."""

    x: Tensor
    y: Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True),
                     dict(self.extra))

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, idx: Tensor) -> Split:
        """Rows ``idx`` (a split whose ``extra`` is per-row must subset it itself)."""
        return Split(self.x[idx], self.y[idx], dict(self.extra))


@dataclass
class JobData:
    """One job's train / validation / test splits (on one device) and a line saying where
    they came from. Training reads ``train``; every eval during training reads ``val``;
    ``test`` is read once per run, at the end (see the README's protocol)."""

    train: Split
    val: Split
    test: Split
    source: str

    def to(self, device: torch.device | str) -> JobData:
        return JobData(self.train.to(device), self.val.to(device), self.test.to(device),
                       self.source)

    @property
    def n_train(self) -> int:
        return len(self.train)

    def sizes(self) -> str:
        return f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test"


def hold_out(n: int, n_val: int, seed: int, labels: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
    """Seeded (train, validation) indices of ``range(n)``, both sorted; with ``labels``,
    stratified: each class gives its share of ``n_val`` (rounded)."""
    gen = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=gen)
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    val = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        k = round(n_val * len(members) / n)
        val.append(members[torch.randperm(len(members), generator=gen)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().squeeze(1), val_idx


@dataclass(frozen=True)
class Objective:
    """A loss spec bound to a job: the training objective, and how the job reads the
    outputs of a model trained with it (``scores``: e.g. ``sigmoid`` or ``softmax`` class
    scores for detection). ``Job.bind`` makes it; ``Job.evaluate`` receives it."""

    fn: Callable[[Tensor, Tensor], Tensor]
    scores: str = "default"

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        return self.fn(output, target)


@dataclass
class Evaluation:
    """What the one test evaluation gives (``Job.evaluate_test``): the metrics (runs.csv's
    ``test_metrics``) and per-run series stored as history.csv rows: ``{split: {metric:
    values}}``, each value a row with that split and metric and its index as the step
    (e.g. ``{"test_bins": {"accuracy": [...], ...}}``, the reliability-diagram bins)."""

    metrics: dict[str, float]
    series: dict[str, dict[str, list[float]]] = field(default_factory=dict)


class Job(ABC):
    """One standard training job. Subclasses fill in the class attributes and hooks.

    A job is immutable after ``__init__``: its options are validated there, and every
    later phase (data, model, objective, metrics) depends on them and on its arguments
    only, never on what an earlier phase left behind.
    """

    name: str
    aliases: tuple[str, ...] = ()
    description: str
    model_name: str
    metrics: tuple[str, ...]
    primary_metric: str
    lower_is_better: frozenset[str] = frozenset()  # metrics where less is better
    test_only_metrics: tuple[str, ...] = ()  # given by evaluate_test only, after metrics
    families: frozenset[Family]
    preds: frozenset[Pred]  # the kinds the adapter can produce from the model's output
    targets: frozenset[Target]
    option_specs: Sequence[Option] = ()  # the job's options, declared once
    # May several seeds train as one torch.func.vmap-ed model? (no BatchNorm running stats,
    # no data-dependent shapes); the engine still calibrates and falls back when slower.
    vectorisable: bool = True

    def __init__(self, **options: Any):
        """``options``: values for ``option_specs`` (strings or typed); ``None`` = default."""
        self.options = validate_options(self.option_specs, options, self.name)
        self.task = self.load_task()
        self.check_options()

    def option(self, name: str) -> Any:
        """The value of option ``name``: as given, else its declared default."""
        if name in self.options:
            return self.options[name]
        return next(o.default for o in self.option_specs if o.name == name)

    def check_options(self) -> None:  # noqa: B027  (a hook: most jobs have no such rule)
        """Rules that tie several options together (override; raise UsageError)."""

    def settings(self, data: JobData, layer: Settings | None = None) -> Settings:
        """The job's budget (task file) with ``layer`` on top, resolved for ``data``.

        The task file's batch size is capped at the number of training samples (a user's
        small folder or table, or ``stackloss``'s 13 training rows); one that ``layer``
        sets is kept, and refused when it exceeds them."""
        layer = layer or Settings()
        budget = self.task.budget
        if layer.batch_size is None and (budget.batch_size or 0) > data.n_train:
            budget = replace(budget, batch_size=data.n_train)
        return layered(budget, layer).resolve(data.n_train, self.name)

    def load_task(self) -> TaskFile:
        """Budget, default losses and target: ``tasks/<name>.toml``."""
        return load_task_file(self.name)

    @property
    def maximize(self) -> bool:
        """Whether a higher primary metric is better."""
        return self.maximizes(self.primary_metric)

    @classmethod
    def maximizes(cls, metric: str) -> bool:
        """Whether a higher ``metric`` is better: the one place this is decided."""
        return metric not in cls.lower_is_better

    @property
    def test_metric_names(self) -> tuple[str, ...]:
        """Every metric of a run's test evaluation: ``metrics``, then ``test_only_metrics``
        (what findings, table columns and ``list tasks`` may name)."""
        return (*self.metrics, *self.test_only_metrics)

    # -- hooks ---------------------------------------------------------------------
    @abstractmethod
    def load_data(self) -> JobData:
        """Resolve and load the data (CPU tensors). Raise UsageError when none is found."""

    @abstractmethod
    def build_model(self, data: JobData) -> nn.Module:
        """A fresh model for ``data`` (its shapes may depend on it)."""

    @abstractmethod
    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor: ...

    @abstractmethod
    def adapt_target(self, target: Tensor, kind: Target, output: Tensor) -> Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, split: Split, objective: Objective
                 ) -> dict[str, float]:
        """Metrics of ``model`` on ``split``: one host sync per call, not per batch."""

    def evaluate_test(self, model: nn.Module, data: JobData, objective: Objective
                      ) -> Evaluation:
        """The one evaluation of the test split, after training: ``evaluate`` on it, plus
        what a job derives with the validation split's help (``test_only_metrics``, e.g.
        metrics after temperature scaling fitted on validation) and per-run series.
        Called once per run, the model in eval mode."""
        return Evaluation(self.evaluate(model, data.test, objective))

    @abstractmethod
    def probe(self) -> tuple[Tensor, Tensor]:
        """A tiny (model output, target) pair shaped like the real ones, for plan checks."""

    # -- shared --------------------------------------------------------------------
    @property
    def data_key(self) -> tuple:
        """Identifies the loaded data, so it is loaded once per process."""
        return (self.name, tuple(sorted(self.options.items())))

    @property
    def options_json(self) -> str:
        """The job options as stored in runs.csv's ``job_options`` column."""
        return json.dumps({k: str(v) for k, v in sorted(self.options.items())})

    def incompatibility(self, info: LossInfo) -> str | None:
        """Why ``info`` cannot train this job, or None when it can."""
        if info.family not in self.families:
            why = f"{info.family} losses do not apply to {self.name}"
        elif info.pred not in self.preds or info.target not in self.targets:
            why = f"{self.name} cannot give {info.pred} predictions with {info.target} targets"
        else:
            return self.unmet_needs(info)
        unmet = self.unmet_needs(info, hint=False)
        return why + (f"; it also {unmet}" if unmet else "")

    def unmet_needs(self, info: LossInfo, hint: bool = True) -> str | None:
        """The inputs ``info`` needs (``LossInfo.needs``) that this job does not supply, in
        words (``hint``: with how to give them by hand), or None. A job overriding
        ``incompatibility`` calls this too."""
        missing = sorted(info.needs - self.supplies(None).keys())
        if not missing:
            return None
        why = f"needs {', '.join(missing)}, which {self.name} does not supply"
        example = ",".join(f"{m}=[...]" for m in missing)
        return why + (f" (give it in the spec: '{info.name}:{example}')" if hint else "")

    def supplies(self, data: JobData | None) -> dict[str, Any]:
        """What the job passes to losses that declare a need (``LossInfo.needs``), each
        under the keyword of that name, computed from ``data``'s training split (after any
        noise or subsampling the job applies). With ``None``: placeholder values shaped
        like ``probe()``'s (plan checks run before the data loads), under the same keys.
        The default supplies nothing; classification jobs supply ``class_counts``."""
        return {}

    def bind(self, loss: Loss, data: JobData | None = None) -> Objective:
        """The training objective: each term gets the output/target kinds it declares, and
        the inputs it needs from ``supplies(data)`` (those its spec does not set itself).

        ``data``: the data the objective trains on; ``None`` binds ``supplies``'s
        placeholders, for ``probe()`` pairs (plan checks, tests), never for training."""
        supplied = self.supplies(data)
        terms = [(t.coef, t, t.info.pred, t.info.target, _needed(t, supplied))
                 for t in loss.terms]

        def objective(output: Tensor, target: Tensor) -> Tensor:
            preds: dict[Pred, Tensor] = {}
            tgts: dict[Target, Tensor] = {}
            total = None
            for coef, term, pk, tk, needed in terms:
                if pk not in preds:
                    preds[pk] = self.adapt_pred(output, pk)
                if tk not in tgts:
                    tgts[tk] = self.adapt_target(target, tk, output)
                value = term(preds[pk], tgts[tk], **needed)
                value = value if coef == 1.0 else coef * value
                total = value if total is None else total + value
            return total

        return Objective(objective)


def _needed(term: LossTerm, supplied: dict[str, Any]) -> dict[str, Any]:
    """The supplied inputs ``term`` needs, minus those its spec gives
    (``ldam:class_counts=[...]`` keeps its own)."""
    given = {k for k, _ in term.params}
    return {k: supplied[k] for k in term.info.needs - given if k in supplied}
