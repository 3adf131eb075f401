import math

import pytest
import torch
from torch import nn

from losscli.engine import run_one
from losscli.jobs import JobData, Split
from losscli.jobs.classification import MnistJob
from losscli.losses import create_loss, register_loss
from losscli.losses import registry as reg
from losscli.settings import Settings


class BlobsJob(MnistJob):
    """The mnist job's adapter and metrics on 10 separable Gaussian blobs: trains in ms."""

    def load_data(self) -> JobData:
        g = torch.Generator().manual_seed(0)
        centers = torch.randn(10, 8, generator=g) * 4
        y = torch.arange(600) % 10
        x = centers[y] + torch.randn(600, 8, generator=g)
        return JobData(Split(x[:400], y[:400]), Split(x[400:500], y[400:500]),
                       Split(x[500:], y[500:]), "blobs")

    def build_model(self, data: JobData) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10))


CFG = Settings(steps=60, batch_size=50, lr=1e-2, eval_every=20, warmup_steps=2).resolve(400, "b")


@pytest.fixture(scope="module")
def job_data():
    job = BlobsJob()
    return job, job.load_data()


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    monkeypatch.setattr(reg, "_ALIASES", dict(reg._ALIASES))


def test_loss_falls_and_model_learns(job_data):
    job, data = job_data
    out = run_one(job, data, create_loss("ce"), CFG, seed=0)
    assert out.status == "ok", out.error
    losses = [v for _, v in out.train_loss]
    assert losses[-1] < 0.5 * losses[0]
    assert out.evals[0][1]["accuracy"] < 0.5 < 0.9 < out.evals[-1][1]["accuracy"]
    assert [s for s, _ in out.evals] == [0, 20, 40, 60]
    # warm-up steps are not timed: 58 timed steps of 50 samples
    assert out.timed_samples == (60 - 2) * 50
    assert out.train_seconds > 0 and out.loss_ms_per_step > 0


def test_same_seed_same_numbers_other_seed_differs(job_data):
    job, data = job_data
    a = run_one(job, data, create_loss("focal:gamma=2"), CFG, seed=3)
    b = run_one(job, data, create_loss("focal:gamma=2"), CFG, seed=3)
    c = run_one(job, data, create_loss("focal:gamma=2"), CFG, seed=4)
    assert a.train_loss == b.train_loss and a.evals == b.evals
    assert a.train_loss != c.train_loss


def test_non_finite_loss_is_diverged_not_a_crash(job_data, scratch_registry):
    @register_loss("nan_after_10", family="classification", pred="logits", target="index",
                   description="NaN once training is under way", reference="test")
    def nan_loss(pred, target, *, reduction="mean"):
        nan_loss.calls += 1
        value = torch.nn.functional.cross_entropy(pred, target)
        return value * math.nan if nan_loss.calls > 10 else value

    nan_loss.calls = 0
    job, data = job_data
    out = run_one(job, data, create_loss("nan_after_10"), CFG, seed=0)
    assert out.status == "diverged"
    assert "non-finite" in out.error
    assert out.steps_done == 20  # stopped at the first eval after the NaN


def test_exception_is_an_error_result(job_data, scratch_registry):
    @register_loss("boom", family="classification", pred="logits", target="index",
                   description="raises", reference="test")
    def boom(pred, target, *, reduction="mean"):
        raise RuntimeError("kaboom")

    job, data = job_data
    out = run_one(job, data, create_loss("boom"), CFG, seed=0)
    assert out.status == "error" and "kaboom" in out.error


def test_binary_loss_gets_one_hot_targets_and_probabilities(job_data):
    job, data = job_data
    for spec in ("bce", "bce_logits", "nll", "0.5*ce+0.5*bce_logits"):
        out = run_one(job, data, create_loss(spec), CFG, seed=0)
        assert out.status == "ok", (spec, out.error)
        assert out.evals[-1][1]["accuracy"] > 0.9, spec


def test_vectorised_seeds_match_sequential_after_50_steps(job_data):
    from losscli.engine import run_seeds

    job, data = job_data
    cfg = Settings(steps=50, batch_size=50, lr=1e-2, eval_every=25, warmup_steps=2).resolve(
        400, "blobs")
    for spec in ("ce", "focal:gamma=2", "0.5*ce+bce_logits"):
        seq = run_seeds(job, data, create_loss(spec), cfg, [0, 1, 2])
        vec = run_seeds(job, data, create_loss(spec), cfg, [0, 1, 2], vectorised=True)
        for k in range(3):
            assert vec[k].status == seq[k].status == "ok", vec[k].error
            for (s1, a), (s2, b) in zip(seq[k].train_loss, vec[k].train_loss, strict=True):
                assert s1 == s2 and a == pytest.approx(b, abs=1e-5, rel=1e-5)
            for (_, a), (_, b) in zip(seq[k].evals, vec[k].evals, strict=True):
                assert a == pytest.approx(b, abs=1e-5)
        assert seq[0].train_loss != seq[1].train_loss  # seeds differ from each other


def test_vectorised_divergence_is_a_result(job_data, scratch_registry):
    from losscli.engine import run_seeds

    @register_loss("nan_later", family="classification", pred="logits", target="index",
                   description="NaN once training is under way", reference="test")
    def nan_later(pred, target, *, reduction="mean"):
        nan_later.calls += 1  # vmap calls the function once per step for all seeds
        value = torch.nn.functional.cross_entropy(pred, target)
        return value * math.nan if nan_later.calls > 10 else value

    nan_later.calls = 0
    job, data = job_data
    outs = run_seeds(job, data, create_loss("nan_later"), CFG, [0, 1], vectorised=True)
    assert [o.status for o in outs] == ["diverged", "diverged"]
    assert all(o.steps_done == 20 for o in outs)


def test_calibration_falls_back_when_vmap_cannot_batch(job_data, scratch_registry):
    from losscli.vectorised import Calibration

    @register_loss("host_sync", family="classification", pred="logits", target="index",
                   description="reads a value on the host", reference="test")
    def host_sync(pred, target, *, reduction="mean"):
        value = torch.nn.functional.cross_entropy(pred, target)
        return value * 2 if value.item() > 100 else value  # .item() cannot be vmapped

    job, data = job_data
    assert not Calibration().choose(job, data, create_loss("host_sync"), CFG, [0, 1])


def test_calibration_once_per_job_and_loss_support_per_loss(job_data, scratch_registry):
    from losscli.vectorised import Calibration

    calls = []

    class Counted(Calibration):
        def calibrate(self, job, data, loss, cfg, seeds):
            calls.append(loss.key)
            return True  # "vectorised is faster" for this job

    @register_loss("host_sync2", family="classification", pred="logits", target="index",
                   description="reads a value on the host", reference="test")
    def host_sync2(pred, target, *, reduction="mean"):
        value = torch.nn.functional.cross_entropy(pred, target)
        return value * 2 if value.item() > 100 else value

    job, data = job_data
    cal = Counted()
    assert cal.choose(job, data, create_loss("ce"), CFG, [0, 1])
    assert cal.choose(job, data, create_loss("focal:gamma=2"), CFG, [0, 1])
    assert not cal.choose(job, data, create_loss("host_sync2"), CFG, [0, 1])
    assert calls == ["ce"]  # one timing per job and settings; support checked per loss
    assert not Counted().faster  # the cache belongs to its owner, not to the module


@pytest.mark.parametrize("seeds", [1, 2, 3])
def test_loss_timed_once_per_seed_not_per_seed_squared(job_data, monkeypatch, seeds):
    """Regression: each live seed asked the trainer for every seed's loss time (S² calls)."""
    import losscli.engine as engine
    import losscli.vectorised as vectorised
    from losscli.engine import run_seeds

    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return 1.0

    monkeypatch.setattr(engine, "loss_ms", counting)
    monkeypatch.setattr(vectorised, "loss_ms", counting)
    job, data = job_data
    outs = run_seeds(job, data, create_loss("ce"), CFG, list(range(seeds)),
                     vectorised=seeds > 1)
    assert all(o.status == "ok" and o.loss_ms_per_step == 1.0 for o in outs)
    assert len(calls) == seeds


def test_the_test_split_is_read_once_after_the_last_step(job_data):
    """Protocol: evals during training score validation; the test split scores the selected
    model once, after training (no code path reads it earlier)."""
    job, data = job_data
    seen = []

    class Watching(BlobsJob):
        def evaluate(self, model, split, objective):
            seen.append(("test" if split is data.test else "val" if split is data.val
                         else "?", steps[-1] if steps else 0))
            return super().evaluate(model, split, objective)

    steps: list[int] = []
    out = run_one(Watching(), data, create_loss("ce"), CFG, seed=0, on_step=steps.append)
    assert [s for s, _ in seen] == ["val"] * 4 + ["test"]
    assert seen[-1][1] == CFG.steps and out.selected_step == CFG.steps
    assert out.test["accuracy"] > 0.9 and out.test != out.evals[-1][1]


def test_select_best_scores_the_best_validation_checkpoint(job_data, scratch_registry):
    """With select=best, the test split scores the weights of the best validation eval."""
    job, data = job_data

    @register_loss("worse_later", family="classification", pred="logits", target="index",
                   description="learns, then unlearns", reference="test")
    def worse_later(pred, target, *, reduction="mean"):
        worse_later.calls += 1
        sign = 1.0 if worse_later.calls <= 20 else -1.0  # gradient ascent after step 20
        return sign * torch.nn.functional.cross_entropy(pred, target)

    worse_later.calls = 0
    cfg = Settings(steps=60, batch_size=50, lr=1e-2, eval_every=20, warmup_steps=2,
                   select="best").resolve(400, "b")
    out = run_one(job, data, create_loss("worse_later"), cfg, seed=0)
    accs = [m["accuracy"] for _, m in out.evals]
    assert out.selected_step == 20 and accs[1] == max(accs[1:])
    assert out.test["accuracy"] > 0.8  # the step-20 model, not the unlearned final one


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_trial_stack_trains_each_member_at_its_own_learning_rate(job_data, optimizer):
    """Trials at three learning rates trained as one vmapped model reach what ``run_one``
    gives each on its own (same seed): the per-member learning rate (and weight decay) is
    really applied; one shared rate would make the members identical."""
    from dataclasses import replace

    from losscli.engine import run_trials

    job, data = job_data
    base = replace(CFG, steps=40, eval_every=10, optimizer=optimizer, weight_decay=1e-3)
    cfgs = [replace(base, lr=lr) for lr in (1e-3, 1e-2, 5e-2)]
    loss = create_loss("focal:gamma=2")
    asked = []
    stack = run_trials(job, data, loss, cfgs, 0,
                       lambda step, values: asked.append((step, sorted(values))) or set())
    assert asked == [(s, [0, 1, 2]) for s in (10, 20, 30, 40)]
    for cfg, got in zip(cfgs, stack, strict=True):
        one = run_one(job, data, loss, cfg, seed=0, on_eval=lambda step, value: False)
        assert got.status == one.status == "ok", got.error
        assert got.test == one.test == {}  # trials never read the test split
        for (s1, a), (s2, b) in zip(one.evals, got.evals, strict=True):
            assert s1 == s2 and a == pytest.approx(b, abs=1e-5)
        for (_, a), (_, b) in zip(one.train_loss, got.train_loss, strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert stack[0].evals[-1] != stack[2].evals[-1]


def test_a_pruned_member_leaves_the_stack_at_once(job_data):
    from losscli.engine import run_trials

    job, data = job_data
    cfgs = [CFG.__class__(**{**CFG.__dict__, "lr": lr}) for lr in (1e-3, 1e-2, 3e-2)]
    ended, asked = [], []

    def on_evals(step, values):
        asked.append((step, sorted(values)))
        return {0} if step == 20 else ({2} if step == 40 else set())

    outs = run_trials(job, data, create_loss("ce"), cfgs, 0, on_evals,
                      lambda k, out: ended.append((k, out.status, out.steps_done)))
    assert asked == [(20, [0, 1, 2]), (40, [1, 2]), (60, [1])]
    assert ended == [(0, "pruned", 20), (2, "pruned", 40)]
    assert [o.status for o in outs] == ["pruned", "ok", "pruned"]
    assert [o.steps_done for o in outs] == [20, 60, 40]
    assert math.isnan(outs[0].loss_ms_per_step) and outs[1].loss_ms_per_step > 0


def test_bf16_runs_are_never_stacked():
    """A vmapped forward does not autocast: --bf16 seeds and trials train one at a time,
    even with --vectorise always (stacking would train them in fp32 under a bf16 label)."""
    from types import SimpleNamespace

    from losscli.settings import Settings as S
    from losscli.sweep import _stack, _stack_trials

    for bf16, want in ((True, False), (False, True)):
        spec = SimpleNamespace(cfg=S(bf16=bf16))
        assert _stack(None, [spec, spec], None, "always", None) is want
        assert _stack_trials(None, spec, {"lr": [1e-3, 1e-2]}, 2, "always", None) is want
