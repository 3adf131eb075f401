"""The imbalanced job: positive subsampling, prior, bias init, adapter, metrics, CLI."""

import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from losscli.cli import app
from losscli.errors import UsageError
from losscli.jobs import create_job
from losscli.jobs.imbalanced import binary_metrics, subsample_positives
from losscli.losses import Pred, Target, create_loss

runner = CliRunner()


@pytest.fixture(scope="module")
def default_data():
    job = create_job("imbalanced")
    return job, job.load_data()


def test_subsample_keeps_all_negatives_and_the_ratio():
    labels = torch.arange(1000) % 10  # 100 per digit
    keep = subsample_positives(labels, 3, 0.05, torch.Generator().manual_seed(0))
    kept = labels[keep]
    assert int((kept != 3).sum()) == 900 and int((kept == 3).sum()) == 45
    assert torch.equal(keep, keep.sort().values) and keep.unique().numel() == keep.numel()
    again = subsample_positives(labels, 3, 0.05, torch.Generator().manual_seed(0))
    other = subsample_positives(labels, 3, 0.05, torch.Generator().manual_seed(1))
    assert torch.equal(keep, again) and not torch.equal(keep, other)
    # more positives asked than exist: all of them
    assert int((labels[subsample_positives(labels, 3, 1.0, torch.Generator())] == 3).sum()) == 100


def test_default_data_has_the_same_prior_in_train_and_test(default_data):
    job, d = default_data
    assert d.train.x.shape[1:] == (1, 28, 28) and d.train.y.dtype == torch.float32
    for y in (d.train.y, d.val.y, d.test.y):
        pos, neg = int(y.sum()), int((y == 0).sum())
        assert set(y.unique().tolist()) == {0.0, 1.0}
        assert pos == round(0.02 * neg)  # 1:50 in every split
    # the embedded 5k re-split 50/50: the test half, and 70/30 train/val of the other half
    assert int((d.test.y == 0).sum()) == 2250 and int(d.test.y.sum()) == 45
    assert len(d.train) + len(d.val) < 2250 + 45 + 2250 // 2
    assert "digit 8" in d.source and "45 positive" in d.source
    assert job.prior == pytest.approx(0.02 / 1.02)


def test_digit_and_ratio_knobs():
    d = create_job("imbalanced", digit=1, pos_ratio=0.1).load_data()
    assert int(d.test.y.sum()) == 225 and "digit 1" in d.source
    ones = d.test.x[d.test.y == 1].mean(0)
    eights = create_job("imbalanced").load_data()
    assert not torch.allclose(ones, eights.test.x[eights.test.y == 1].mean(0))


@pytest.mark.parametrize("options, message", [({"digit": 10}, "digit"),
                                              ({"digit": "eight"}, "digit"),
                                              ({"pos_ratio": 0}, "pos-ratio"),
                                              ({"pos_ratio": 2}, "pos-ratio")])
def test_bad_options(options, message):
    with pytest.raises(UsageError, match=message):
        create_job("imbalanced", **options)


def test_bias_starts_at_the_prior_for_every_loss():
    job = create_job("imbalanced", pos_ratio=0.01)
    model = job.build_model(None)  # the prior comes from the options, not the data
    assert model.head[-1].bias.item() == pytest.approx(math.log(0.01), abs=1e-6)
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 28, 28)
    p = torch.sigmoid(model(x))
    assert p.shape == (2, 1) and (p < 0.05).all()


def test_adapter_logits_probs_and_targets():
    job = create_job("imbalanced")
    out = torch.tensor([[0.0], [2.0], [-1.0]])
    assert torch.equal(job.adapt_pred(out, Pred.LOGITS), torch.tensor([0.0, 2.0, -1.0]))
    assert torch.allclose(job.adapt_pred(out, Pred.PROBS), torch.sigmoid(out[:, 0]))
    y = torch.tensor([0.0, 1.0, 0.0])
    assert job.adapt_target(y, Target.BINARY, out) is y
    for spec in ("bce_logits", "bce_logits:pos_weight=50", "sigmoid_focal", "bce", "asymmetric"):
        value = job.bind(create_loss(spec))(*job.probe())
        assert value.shape == () and torch.isfinite(value)
    # bce on probabilities and bce_logits agree through the adapter
    bce, bcel = (job.bind(create_loss(s))(out, y) for s in ("bce", "bce_logits"))
    assert bce.item() == pytest.approx(bcel.item(), rel=1e-5)
    assert job.incompatibility(create_loss("ce").terms[0].info) is not None


def test_metrics_on_known_inputs():
    y = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0.0])
    perfect = binary_metrics(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.3, 0.1, 0.2, 0.4]), y)
    assert perfect == pytest.approx({"auprc": 1, "f1_best": 1, "balanced_accuracy": 1,
                                     "auroc": 1})
    # ranks: pos 0.9, neg 0.7, pos 0.6, rest below. AP = (1/1 + 2/3) / 2; best F1 at 0.6:
    # precision 2/3, recall 1 -> 0.8. At 0.5: TPR 1, TNR 5/6.
    probs = torch.tensor([0.9, 0.7, 0.6, 0.2, 0.3, 0.1, 0.2, 0.4])
    m = binary_metrics(probs, y)
    assert m["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["f1_best"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((1 + 5 / 6) / 2)
    assert m["auroc"] == pytest.approx(11 / 12)


def test_evaluate_uses_the_logit_column(default_data):
    job, d = default_data

    class Oracle(torch.nn.Module):
        """Scores the test set in order (evaluate may split it into chunks)."""

        def __init__(self, scores):
            super().__init__()
            self.scores, self.pos = scores, 0

        def forward(self, x):
            out = self.scores[self.pos:self.pos + x.shape[0]]
            self.pos += x.shape[0]
            return out.unsqueeze(1)

    m = job.evaluate(Oracle(d.test.y * 4 - 2), d.test, None)
    assert m["auprc"] == pytest.approx(1) and m["balanced_accuracy"] == pytest.approx(1)


def test_cli_trains_imbalanced_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--task", "imbalanced", "--loss", "bce_logits",
                              "--loss", "sigmoid_focal", "--pos-ratio", "0.05", "--opt",
                              "digit=0", "--steps", "12", "--batch-size", "64",
                              "--eval-every", "12", "--quiet", "--device", "cpu",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 and set(runs["status"]) == {"ok"}
    assert (runs["primary_metric"] == "auprc").all()
    assert (runs["test_final"] > 0.2).all()  # 12 steps beat the 0.05 prior on digit 0
    history = pd.read_csv(out / "history.csv")
    assert {"auprc", "f1_best", "balanced_accuracy", "auroc"} <= set(history["metric"])


@pytest.mark.parametrize("args, message", [
    (["--loss", "ce"], "losses that apply to imbalanced"),
    (["--outliers", "0.1"], "unknown option '--outliers' for task 'imbalanced'"),
    (["--pos-ratio", "-1"], "pos-ratio"),
])
def test_cli_usage_errors(args, message, tmp_path):
    res = runner.invoke(app, ["train", "--task", "imbalanced", *args, "--steps", "2",
                              "--quiet", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert message in res.output
