"""Stressors of the classification jobs (issue 13): label noise, a long-tailed training
split, and the class counts a job supplies to the losses that need them."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from folder_fixtures import write_image_folder
from typer.testing import CliRunner

from losscli.cli import app
from losscli.data.stressors import (
    FASHION_PAIRS,
    MNIST_PAIRS,
    LabelNoise,
    long_tail,
    long_tail_counts,
)
from losscli.engine import run_one
from losscli.errors import UsageError
from losscli.jobs import create_job
from losscli.losses import create_loss
from losscli.settings import Settings

runner = CliRunner()


@pytest.fixture(scope="module")
def clean():
    return create_job("mnist").load_data()


def _load(**options):
    job = create_job("mnist", **options)
    return job, job.load_data()


# --------------------------------------------------------------------------- label noise


@pytest.mark.parametrize("text, expected", [
    ("none", LabelNoise()), ("sym:0.4", LabelNoise("sym", 0.4)),
    ("asym:0", LabelNoise("asym", 0.0)), (" SYM:0.2 ", LabelNoise("sym", 0.2)),
])
def test_noise_syntax(text, expected):
    assert LabelNoise.parse(text) == expected


@pytest.mark.parametrize("text", ["sym:1", "sym:1.2", "asym:-0.1", "sym", "sym:", "pair:0.2",
                                  "sym:nan", "none:0.1", "0.4"])
def test_noise_syntax_refused(text):
    with pytest.raises(ValueError, match=r"none, sym:ETA or asym:ETA with ETA in \[0, 1\)"):
        LabelNoise.parse(text)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6, 0.8])
def test_symmetric_rate_and_uniform_other_class(rate):
    labels = torch.arange(100_000) % 10
    noisy = LabelNoise("sym", rate).apply(labels, 10, {}, seed=0)
    flipped = noisy != labels
    assert flipped.float().mean().item() == pytest.approx(rate, abs=0.006)  # 4 sigma
    # a flipped label is one of the 9 others, each about equally often
    offsets = (noisy[flipped] - labels[flipped]) % 10
    share = torch.bincount(offsets, minlength=10).float() / flipped.sum()
    assert share[0] == 0 and torch.allclose(share[1:], torch.full((9,), 1 / 9), atol=0.01)


def test_symmetric_flips_nest_across_rates():
    """The samples flipped at 0.2 are flipped, to the same class, at 0.4."""
    labels = torch.arange(5000) % 10
    low, high = (LabelNoise("sym", r).apply(labels, 10, {}, seed=3) for r in (0.2, 0.4))
    at_low = low != labels
    assert torch.equal(high[at_low], low[at_low])


@pytest.mark.parametrize("pairs", [MNIST_PAIRS, FASHION_PAIRS])
def test_asymmetric_flips_only_the_documented_pairs(pairs):
    labels = torch.arange(100_000) % 10
    noisy = LabelNoise("asym", 0.4).apply(labels, 10, pairs, seed=0)
    moved = {(a, b) for a, b in zip(labels.tolist(), noisy.tolist(), strict=True) if a != b}
    assert moved == set(pairs.items())
    for c in range(10):
        rate = (noisy[labels == c] != c).float().mean().item()
        assert rate == pytest.approx(0.4 if c in pairs else 0.0, abs=0.02)


def test_mnist_pairs_are_patrini_s():
    assert dict(MNIST_PAIRS) == {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
    assert dict(FASHION_PAIRS) == {0: 6, 6: 0, 2: 4, 5: 7}


def test_noisy_mnist_train_and_val_noisy_test_clean(clean):
    job, data = _load(label_noise="sym:0.4")
    train_rate = (data.train.y != clean.train.y).float().mean().item()
    val_rate = (data.val.y != clean.val.y).float().mean().item()
    assert train_rate == pytest.approx(0.4, abs=0.03) and val_rate == pytest.approx(0.4, abs=0.07)
    assert torch.equal(data.test.y, clean.test.y) and torch.equal(data.test.x, clean.test.x)
    assert torch.equal(data.train.x, clean.train.x)  # the same images, other labels
    assert f"label noise sym 0.40: {train_rate * 100:.1f} % of train labels flipped" in data.source
    assert "test clean" in data.source


def test_asymmetric_mnist_source_names_the_pairs(clean):
    _, data = _load(label_noise="asym:0.4")
    assert "(2->7, 3->8, 5<->6, 7->1)" in data.source
    pairs = {(a, b) for a, b in zip(clean.train.y.tolist(), data.train.y.tolist(), strict=True)
             if a != b}
    assert pairs == set(MNIST_PAIRS.items())


def test_noise_is_the_same_for_every_run_seed_and_loss(clean):
    """The labels depend on the job's options only: a fixed data seed, not the run seed."""
    (job_a, a), (job_b, b) = _load(label_noise="sym:0.4"), _load(label_noise="sym:0.4")
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.val.y, b.val.y)
    assert job_a.data_key == job_b.data_key  # one load serves every loss and seed of a plan
    assert job_a.supplies(a) == job_b.supplies(b)


# --------------------------------------------------------------------------- long tail


def test_long_tail_counts_follow_the_exponential_profile():
    assert long_tail_counts(350, 10, 10) == [350, 270, 209, 162, 125, 97, 75, 58, 45, 35]
    assert long_tail_counts(5500, 10, 100)[-1] == 55 and long_tail_counts(7, 10, 1) == [7] * 10


def test_long_tail_draws_from_each_class_with_a_fixed_seed():
    labels = torch.arange(1000) % 10
    keep = long_tail(labels, 10, 10.0, seed=0)
    assert torch.equal(keep, long_tail(labels, 10, 10.0, seed=0))
    assert torch.bincount(labels[keep]).tolist() == long_tail_counts(100, 10, 10)
    with pytest.raises(ValueError, match="leaves class 9 without images"):
        long_tail(labels, 10, 1000.0, seed=0)


@pytest.mark.parametrize("rho", [10, 100])
def test_imbalanced_mnist_train_long_tailed_val_and_test_balanced(clean, rho):
    job, data = _load(imbalance=rho)
    counts = torch.bincount(data.train.y, minlength=10).tolist()
    assert counts == sorted(counts, reverse=True) and counts[0] == 350
    # 350 * rho^-1 rounds down: 35 (exactly 10) and 3 (117 for a rho of 100)
    assert counts[0] / counts[-1] == pytest.approx(rho, rel=0.2)
    assert torch.bincount(data.val.y).tolist() == [50] * 10
    assert torch.equal(data.val.y, clean.val.y) and torch.equal(data.test.y, clean.test.y)
    assert f"imbalance {rho}: train class counts 350 (class 0) to {counts[-1]} (class 9)" \
        in data.source
    assert job.supplies(data) == {"class_counts": tuple(counts)}


def test_imbalance_then_noise(clean):
    job, data = _load(imbalance=10, label_noise="sym:0.2")
    _, tail = _load(imbalance=10)
    assert torch.equal(data.train.x, tail.train.x)  # the same subsample, noisy labels
    assert (data.train.y != tail.train.y).float().mean().item() == pytest.approx(0.2, abs=0.04)
    assert "(after imbalance)" in data.source
    # the counts are those of the labels the loss sees: after noise
    assert job.supplies(data)["class_counts"] == tuple(torch.bincount(data.train.y).tolist())


def test_fashion_long_tail_if_present():
    try:
        job = create_job("fashion", imbalance=100, label_noise="asym:0.4")
        data = job.load_data()
    except UsageError as exc:
        pytest.skip(f"fashion's data is missing: {exc}")
    tail = create_job("fashion", imbalance=100).load_data()
    assert torch.bincount(tail.train.y).tolist()[::9] == [5500, 55]
    assert "(0<->6, 2->4, 5->7)" in data.source


# --------------------------------------------------------------------------- class counts


def test_counts_reach_the_loss_and_change_the_objective():
    job, data = _load(imbalance=10)
    torch.manual_seed(0)
    model = job.build_model(data)
    x, y = data.train.x[:64], data.train.y[:64]
    output = model(x)
    la, ce = (job.bind(create_loss(s), data)(output, y) for s in ("logit_adjust", "ce"))
    counts = torch.bincount(data.train.y).float()
    by_hand = torch.nn.functional.cross_entropy(output + (counts / counts.sum()).log(), y)
    torch.testing.assert_close(la, by_hand)
    assert abs(la.item() - ce.item()) > 0.05
    # the probe's placeholder counts are uniform: logit_adjust is then plain CE
    torch.testing.assert_close(job.bind(create_loss("logit_adjust"))(output, y), ce)


def test_counts_in_the_spec_win_over_the_supplied_ones():
    job, data = _load(imbalance=10)
    output, y = torch.randn(8, 10), torch.arange(8)
    given = [1.0] * 10
    spec = "ldam:class_counts=[" + ",".join("1" for _ in given) + "]"
    from losscli.losses.longtail import ldam_loss

    torch.testing.assert_close(job.bind(create_loss(spec), data)(output, y),
                               ldam_loss(output, y, class_counts=given))


def test_logit_adjust_trains_on_the_long_tail_and_differs_from_ce():
    job, data = _load(imbalance=10)
    cfg = job.settings(data, Settings(steps=5, batch_size=32, eval_every=5, warmup_steps=0,
                                      device="cpu"))
    la, ce = (run_one(job, data, create_loss(s), cfg, seed=0) for s in ("logit_adjust", "ce"))
    assert la.status == ce.status == "ok", (la.error, ce.error)
    assert la.train_loss != ce.train_loss


def test_folder_images_job_supplies_the_counts_of_its_classes(tmp_path):
    root = write_image_folder(tmp_path / "pets", per_class=10, classes=("cat", "dog", "owl"))
    job = create_job("images", data_dir=str(root), image_size=8)
    data = job.load_data()
    counts = job.supplies(data)["class_counts"]
    assert len(counts) == 3 and counts == tuple(torch.bincount(data.train.y).tolist())
    output = job.build_model(data)(data.train.x[:4])
    assert torch.isfinite(job.bind(create_loss("ldam"), data)(output, data.train.y[:4]))


@pytest.mark.parametrize("task, loss, missing", [
    ("seg", "ldam", "needs class_counts, which seg does not supply"),
    ("det", "logit_adjust", "needs class_counts, which det does not supply"),
    ("reg", "logit_adjust", "it also needs class_counts, which reg does not supply"),
    ("imbalanced", "cb_ce", "it also needs class_counts"),
])
def test_jobs_without_counts_refuse_the_losses_that_need_them(task, loss, missing):
    from losscli.losses import get_loss_info

    assert missing in create_job(task).incompatibility(get_loss_info(loss))


# --------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize("args, expected", [
    (["--task", "mnist", "--label-noise", "sym:1.2", "--loss", "ce"],
     "--label-noise (option label_noise of mnist) must be none, sym:ETA or asym:ETA with ETA "
     "in [0, 1) (e.g. sym:0.4), got 'sym:1.2'"),
    (["--task", "mnist", "--label-noise", "flip", "--loss", "ce"], "label_noise"),
    (["--task", "mnist", "--imbalance", "0.5", "--loss", "ce"],
     "--imbalance (option imbalance of mnist) must be a number >= 1, got '0.5'"),
    (["--task", "mnist", "--imbalance", "1000", "--loss", "ce"],
     "leaves class 9 without images"),
    (["--task", "reg", "--loss", "logit_adjust"],
     "--loss logit_adjust: logit_adjust: classification losses do not apply to reg; it also "
     "needs class_counts"),
    (["--task", "seg", "--loss", "balanced_softmax"],
     "balanced_softmax: needs class_counts, which seg does not supply (give it in the spec: "
     "'balanced_softmax:class_counts=[...]')"),
])
def test_refusals_exit_2(args, expected, tmp_path):
    res = runner.invoke(app, ["train", *args, "--steps", "2", "--out", str(tmp_path / "never"),
                              "--quiet"])
    assert res.exit_code == 2, res.output
    assert expected in " ".join(res.output.split())
    assert "Traceback" not in res.output and not (tmp_path / "never").exists()


def test_stressed_mnist_through_the_cli(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--task", "mnist", "--imbalance", "10", "--label-noise",
                              "asym:0.2", "--loss", "ce", "--loss", "logit_adjust", "--seeds",
                              "2", "--steps", "5", "--batch-size", "32", "--eval-every", "5",
                              "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    assert json.loads(runs["job_options"][0]) == {"imbalance": "10.0", "label_noise": "asym:0.2"}
    source = json.loads((out / "meta.json").read_text())["data_sources"]["mnist"]
    assert "imbalance 10" in source and "label noise asym 0.20" in source
    # explicit counts in the spec also train where the job supplies none
    res = runner.invoke(app, ["train", "--task", "seg", "--loss", "ldam:class_counts=[9,1,1,1]",
                              "--steps", "2", "--out", str(tmp_path / "seg"), "--quiet"])
    assert res.exit_code == 0, res.output
