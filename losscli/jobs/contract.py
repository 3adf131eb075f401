"""The job contract as checks: the standard jobs' tests run them, and so can a plugin's::

    from losscli.jobs import create_job
    from losscli.jobs.contract import check_job

    def test_my_job():
        check_job(create_job("my_job", n_train=256))  # small options keep it fast

Each check raises ``ContractError`` (an ``AssertionError``) naming the job and the rule
it breaks. What they hold a job to (see ``losscli.jobs.base.Job``):

- ``check_data``: three non-empty splits whose inputs and targets agree in length, with
  the same per-sample shapes and dtypes in every split; the same tensors when loaded
  again; a source line; what the job supplies to losses (``Job.supplies``) under the same
  keys as its probe placeholders; a model built for the data that takes a batch, on whose
  output the first default loss, and every compatible loss that needs a supplied input
  (``LossInfo.needs``: e.g. ``ldam`` with the training split's class counts), is finite.
- ``check_probe``: on the probe pair, every compatible loss gives a finite 0-d value with
  finite gradients, or refuses with a ``ValueError`` saying why (``det`` takes a
  classification and a box term together); every default loss gives a value. Losses
  that need an input get the probe's placeholders (``supplies(None)``).
- ``check_learns``: a few optimizer steps with the first default loss lower it on a fixed
  training batch.
- ``check_deterministic``: two runs with one seed give identical losses and metrics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losscli.engine import SingleTrainer, run_one
from losscli.jobs.base import Job, JobData, Split
from losscli.losses import create_loss, get_loss_info
from losscli.settings import Settings

__all__ = ["ContractError", "check_data", "check_deterministic", "check_job", "check_learns",
           "check_probe"]


class ContractError(AssertionError):
    """A job that breaks its contract: which job, which rule, what was found."""


def _require(job: Job, ok: bool, rule: str) -> None:
    if not ok:
        raise ContractError(f"job {job.name!r}: {rule}")


def _splits(data: JobData) -> dict[str, Split]:
    return {"train": data.train, "val": data.val, "test": data.test}


def check_data(job: Job) -> JobData:
    """The data rules (see the module docstring); returns the data."""
    data = job.load_data()
    _require(job, isinstance(data, JobData), f"load_data returned {type(data).__name__}")
    _require(job, isinstance(data.source, str) and data.source.strip() != "",
             "the data needs a source line saying where it came from")
    for name, split in _splits(data).items():
        _require(job, len(split) > 0, f"the {name} split is empty")
        _require(job, split.x.shape[0] == split.y.shape[0],
                 f"{name}: {split.x.shape[0]} inputs but {split.y.shape[0]} targets")
        for part in ("x", "y"):
            a, b = getattr(data.train, part), getattr(split, part)
            _require(job, a.shape[1:] == b.shape[1:] and a.dtype == b.dtype,
                     f"{name}.{part} is {b.dtype} {tuple(b.shape[1:])} per sample, train.{part} "
                     f"{a.dtype} {tuple(a.shape[1:])}")
    again = job.load_data()
    for name, split in _splits(data).items():
        other = _splits(again)[name]
        _require(job, torch.equal(split.x, other.x) and torch.equal(split.y, other.y),
                 f"the {name} split differs when loaded again: fix its seed")
    _check_model(job, data)
    return data


def _check_model(job: Job, data: JobData) -> None:
    torch.manual_seed(0)
    model = job.build_model(data)
    x, y = data.train.x[:2], data.train.y[:2]
    output = model(x)
    probe_output, _ = job.probe()
    _require(job, output.dim() == probe_output.dim(),
             f"the model's output has {output.dim()} dims, the probe's {probe_output.dim()}")
    value = job.bind(create_loss(job.task.losses[0]), data)(output, y)
    _require(job, value.dim() == 0 and bool(torch.isfinite(value)),
             f"{job.task.losses[0]} on the model's output is {value}, not a finite scalar")
    _check_supplies(job, data, output, y)


def _check_supplies(job: Job, data: JobData, output: Tensor, y: Tensor) -> None:
    """The supplied inputs: the placeholders' keys, and every loss needing one finite on the
    model's output with the values from the data (e.g. one count per class it predicts)."""
    from losscli.sweep import compatible_losses

    keys, placeholder_keys = set(job.supplies(data)), set(job.supplies(None))
    _require(job, keys == placeholder_keys,
             f"supplies(data) gives {sorted(keys)}, supplies(None) {sorted(placeholder_keys)}")
    for name in [n for n in compatible_losses(job) if get_loss_info(n).needs]:
        try:
            value = job.bind(create_loss(name), data)(output, y)
        except ValueError as exc:
            raise ContractError(f"job {job.name!r}: {name} with the inputs supplied from the "
                                f"data fails: {exc}") from exc
        _require(job, value.dim() == 0 and bool(torch.isfinite(value)),
                 f"{name} with the supplied inputs gives {value}, not a finite scalar")


def check_probe(job: Job) -> dict[str, str]:
    """Every compatible loss on the probe pair; returns ``{loss: why it refused}``."""
    from losscli.losses.image import MissingWeightsError
    from losscli.sweep import compatible_losses

    refused = {}
    for name in compatible_losses(job):
        try:
            _probe_value(job, name)
        except MissingWeightsError as exc:  # absent weights: nothing to check here
            refused[name] = str(exc)
        except ValueError as exc:
            _require(job, str(exc).strip() != "", f"{name} refused with an empty message")
            refused[name] = str(exc)
    for spec in job.task.losses:  # composite specs and parameters included
        try:
            _probe_value(job, spec)
        except ValueError as exc:
            raise ContractError(f"job {job.name!r}: default loss {spec} fails on the probe: "
                                f"{exc}") from exc
    return refused


def _probe_value(job: Job, spec: str) -> None:
    output, target = job.probe()
    output = output.detach().clone().requires_grad_()
    value = job.bind(create_loss(spec))(output, target)
    _require(job, value.dim() == 0 and bool(torch.isfinite(value)),
             f"{spec} on the probe gives {value}, not a finite scalar")
    if all(t.info.differentiable for t in create_loss(spec).terms):
        value.backward()
        _require(job, output.grad is not None and bool(torch.isfinite(output.grad).all()),
                 f"{spec}: no finite gradient reaches the model's output")


def _tiny(job: Job, data: JobData, steps: int, batch_size: int | None) -> Settings:
    layer = Settings(steps=steps, batch_size=batch_size, eval_every=max(1, steps // 2),
                     warmup_steps=0, device="cpu")
    return job.settings(data, layer)


def check_learns(job: Job, data: JobData, *, steps: int = 20, batch_size: int | None = None,
                 seed: int = 0) -> tuple[float, float]:
    """``steps`` steps of the first default loss lower it on the first training batch;
    returns (before, after)."""
    cfg = _tiny(job, data, steps, batch_size)
    trainer = SingleTrainer(job, data, create_loss(job.task.losses[0]), cfg, seed)
    x, y = data.train.x[:cfg.batch_size], data.train.y[:cfg.batch_size]

    def loss_now() -> float:
        with torch.no_grad():
            return float(trainer.objective(trainer.model(x), y))

    before = loss_now()
    for _ in range(steps):
        trainer.step()
    after = loss_now()
    _require(job, math.isfinite(after) and after < before,
             f"{steps} steps of {job.task.losses[0]} did not lower it on a training batch "
             f"({before:.4g} -> {after:.4g})")
    return before, after


def check_deterministic(job: Job, data: JobData, *, steps: int = 4,
                        batch_size: int | None = None) -> None:
    """Two runs with seed 0 give identical training losses, validation and test metrics."""
    cfg = _tiny(job, data, steps, batch_size)
    loss = create_loss(job.task.losses[0])
    a, b = (run_one(job, data, loss, cfg, seed=0) for _ in range(2))
    _require(job, a.status == b.status == "ok", f"a run ended {a.status}: {a.error}")
    for what in ("train_loss", "evals", "test"):
        _require(job, _same(getattr(a, what), getattr(b, what)),
                 f"two runs with seed 0 differ in {what}: {getattr(a, what)} vs "
                 f"{getattr(b, what)}")


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN (a metric undefined on a tiny split)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Tensor):
        return torch.equal(a, b)
    return a == b


def check_job(job: Job, *, steps: int = 20, batch_size: int | None = None) -> None:
    """All the checks, on one load of the data."""
    data = check_data(job)
    check_probe(job)
    check_learns(job, data, steps=steps, batch_size=batch_size)
    check_deterministic(job, data, batch_size=batch_size)
