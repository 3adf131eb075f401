"""Calibration and per-class metrics (losscli.calibration), their place in the
classification jobs' test evaluation, history.csv's ``test_bins`` rows and the report's
reliability diagram."""

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from losscli.calibration import (
    balanced_accuracy,
    class_accuracies,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    worst_class_accuracy,
)
from losscli.cli import app
from losscli.report_calibration import pooled_bins, reliability_plot

# five predictions over three classes; with 15 bins of width 1/15 the top-label
# confidences fall in bin 13 (0.9, 0.9), bin 7 (0.5) and bin 9 (0.61, 0.63)
PROBS = torch.tensor([[0.90, 0.05, 0.05], [0.90, 0.05, 0.05], [0.50, 0.30, 0.20],
                      [0.61, 0.39, 0.00], [0.63, 0.37, 0.00]])
LABELS = torch.tensor([0, 1, 0, 0, 2])


def test_ece_hand_computed():
    # bin 13: accuracy 1/2, confidence 0.9; bin 7: 1 vs 0.5; bin 9: 1/2 vs 0.62
    want = 2 / 5 * 0.4 + 1 / 5 * 0.5 + 2 / 5 * 0.12
    assert expected_calibration_error(PROBS, LABELS).item() == pytest.approx(want, abs=1e-6)


def test_reliability_bins_hand_computed_and_summing_to_the_ece():
    confidence, accuracy, count = reliability_bins(PROBS, LABELS)
    assert count.tolist() == [0] * 7 + [1, 0, 2, 0, 0, 0, 2, 0]
    assert confidence[[7, 9, 13]].tolist() == pytest.approx([0.5, 0.62, 0.9])
    assert accuracy[[7, 9, 13]].tolist() == [1.0, 0.5, 0.5]
    assert confidence[count == 0].isnan().all() and accuracy[count == 0].isnan().all()
    ece = (count * (accuracy - confidence).abs()).nansum() / len(LABELS)
    assert ece.item() == pytest.approx(expected_calibration_error(PROBS, LABELS).item())


def test_reliability_bins_put_a_confidence_of_one_in_the_last_bin():
    _, _, count = reliability_bins(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert count.tolist() == [0] * 14 + [2]


def test_classwise_ece_hand_computed():
    # one-vs-rest per class: bins of that class's probability against "label is it"
    class0 = 2 / 5 * abs(0.5 - 0.9) + 1 / 5 * abs(1 - 0.5) + 2 / 5 * abs(0.5 - 0.62)
    class1 = 2 / 5 * abs(0.5 - 0.05) + 1 / 5 * 0.3 + 2 / 5 * 0.38  # bins 0, 4, 5
    class2 = 4 / 5 * abs(0.25 - 0.025) + 1 / 5 * 0.2  # bins 0 (0.05, 0.05, 0, 0) and 3
    got = classwise_calibration_error(PROBS, LABELS).item()
    assert got == pytest.approx((class0 + class1 + class2) / 3, abs=1e-6)


def test_calibration_errors_of_a_calibrated_prediction_are_zero():
    probs = torch.tensor([[0.5, 0.5]] * 4)
    labels = torch.tensor([0, 1, 0, 1])  # predicted class 0 at 0.5: right half the time
    assert expected_calibration_error(probs, labels).item() == pytest.approx(0.0)
    assert classwise_calibration_error(probs, labels).item() == pytest.approx(0.0)


def _logits_with_labels(n: int = 20000, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from their softmax: calibrated at temperature 1."""
    gen = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(n, k, generator=gen)
    labels = torch.multinomial(logits.softmax(1), 1, generator=gen).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("t0", [2.5, 0.5])
def test_temperature_scaling_recovers_a_known_temperature_and_lowers_nll(t0):
    logits, labels = _logits_with_labels()
    skewed = logits * t0  # over-confident (t0 > 1) or under-confident (t0 < 1)
    t = fit_temperature(skewed, labels)
    assert t == pytest.approx(t0, rel=0.03)
    assert fit_temperature(skewed, labels) == t  # deterministic
    before, after = F.cross_entropy(skewed, labels), F.cross_entropy(skewed / t, labels)
    assert after < before - 0.01
    ece_before = expected_calibration_error(skewed.softmax(1), labels)
    assert expected_calibration_error((skewed / t).softmax(1), labels) < ece_before / 3


def test_fit_temperature_limits():
    separable = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    # every prediction right: the NLL falls as T -> 0, so the search ends by its lower
    # bound (where the NLL, below 1e-16, is flat in float64)
    assert 0.1 <= fit_temperature(separable, torch.tensor([0, 1]), bounds=(0.1, 10)) < 0.15
    assert math.isnan(fit_temperature(torch.tensor([[math.inf, 0.0]]), torch.tensor([0])))
    assert math.isnan(fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="0 < low < high"):
        fit_temperature(separable, torch.tensor([0, 1]), bounds=(2.0, 1.0))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"scores must be \[N, K\]"):
        expected_calibration_error(torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must be \[N\] = \[5\]"):
        classwise_calibration_error(PROBS, LABELS[:3])
    with pytest.raises(ValueError, match="n_bins must be >= 1, got 0"):
        reliability_bins(PROBS, LABELS, n_bins=0)


# an imbalanced toy: class 0 has 6 samples (5 right), class 1 three (1 right), class 2 one
# (right); class 3 has none but is predicted once
TARGET = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
PRED = torch.tensor([0, 0, 0, 0, 0, 3, 1, 0, 0, 2])


def test_balanced_and_worst_class_accuracy_hand_computed():
    recall = class_accuracies(PRED, TARGET, num_classes=4)
    assert recall[:3].tolist() == pytest.approx([5 / 6, 1 / 3, 1.0]) and recall[3].isnan()
    assert balanced_accuracy(PRED, TARGET, num_classes=4).item() == \
        pytest.approx((5 / 6 + 1 / 3 + 1) / 3)  # plain accuracy: 0.7
    assert worst_class_accuracy(PRED, TARGET, num_classes=4).item() == pytest.approx(1 / 3)
    logits = F.one_hot(PRED, 4).float()  # class scores give the same as class indices
    assert balanced_accuracy(logits, TARGET, num_classes=4) == \
        balanced_accuracy(PRED, TARGET, num_classes=4)


def test_balanced_accuracy_matches_sklearn_and_torchmetrics_macro():
    from torchmetrics.functional.classification import multiclass_accuracy

    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    with pytest.warns(UserWarning, match="not in y_true"):  # class 3: sklearn skips it too
        want = sklearn_metrics.balanced_accuracy_score(TARGET.numpy(), PRED.numpy())
    assert balanced_accuracy(PRED, TARGET, num_classes=4).item() == pytest.approx(want)
    # torchmetrics' macro average counts the predicted class 3 as a class of accuracy 0
    macro = multiclass_accuracy(PRED, TARGET, num_classes=4, average="macro").item()
    assert macro == pytest.approx((5 / 6 + 1 / 3 + 1 + 0) / 4)
    pred = torch.where(PRED == 3, 2, PRED)  # every predicted class occurs: they agree
    assert balanced_accuracy(pred, TARGET, num_classes=3).item() == pytest.approx(
        multiclass_accuracy(pred, TARGET, num_classes=3, average="macro").item())


def test_the_temperature_comes_from_validation_only():
    """Protocol: relabelling the test split leaves T alone; relabelling validation moves it."""
    from test_engine import BlobsJob

    from losscli.engine import evaluate_test
    from losscli.jobs import JobData, Split

    job = BlobsJob()
    data = job.load_data()
    torch.manual_seed(0)
    model = job.build_model(data)
    got = evaluate_test(job, model, data, None)
    flipped = Split(data.test.x, data.test.y.roll(1))
    same = evaluate_test(job, model, JobData(data.train, data.val, flipped, "x"), None)
    moved = evaluate_test(job, model, JobData(data.train, Split(data.val.x, data.val.y.roll(1)),
                                              data.test, "x"), None)
    assert same.metrics["temperature"] == got.metrics["temperature"]
    assert same.metrics["accuracy"] != got.metrics["accuracy"]
    assert moved.metrics["temperature"] != got.metrics["temperature"]
    assert list(got.metrics)[-2:] == ["ece_ts", "temperature"]
    assert sum(got.series["test_bins"]["count"]) == len(data.test)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration") / "run"
    res = CliRunner().invoke(app, ["train", "--task", "mnist", "--loss", "ce", "--loss",
                                   "focal:gamma=2", "--seeds", "1", "--steps", "10",
                                   "--batch-size", "64", "--eval-every", "5", "--device",
                                   "cpu", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


NEW = ("balanced_accuracy", "worst_class_accuracy", "ece_classwise", "ece_ts", "temperature")


def test_an_mnist_run_stores_the_new_metrics_and_its_bins(mnist_run):
    runs = pd.read_csv(mnist_run / "runs.csv")
    for cell in runs["test_metrics"]:
        metrics = json.loads(cell)
        assert set(NEW) <= set(metrics) and metrics["temperature"] > 0
        assert 0 <= metrics["worst_class_accuracy"] <= metrics["balanced_accuracy"] <= 1
    for cell in runs["val_metrics"]:  # validation has the per-eval metrics, not T's
        assert {"balanced_accuracy", "ece_classwise"} <= set(json.loads(cell))
        assert "temperature" not in json.loads(cell)
    history = pd.read_csv(mnist_run / "history.csv")
    bins = history[history["split"] == "test_bins"]
    assert len(bins) == len(runs) * 15 * 3
    assert set(bins["metric"]) == {"confidence", "accuracy", "count"}
    assert sorted(set(bins["step"])) == list(range(15))
    counts = bins[bins["metric"] == "count"].groupby("run_key")["value"].sum()
    assert (counts == 1000).all()  # mnist's test split


def test_show_and_report_of_a_run_with_bins(mnist_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["show", str(mnist_run), "--columns", "ece_ts,temperature"])
    assert res.exit_code == 0, res.output
    assert "ece_ts" in res.output
    res = runner.invoke(app, ["report", str(mnist_run), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    figure = tmp_path / "rep" / "v0-reliability.png"
    assert figure.stat().st_size > 5000
    assert "v0-reliability.png" in (tmp_path / "rep" / "report.md").read_text()


def test_pooled_bins_weight_by_count_and_the_plot_skips_runs_without_bins(tmp_path):
    rows = [("a", 0, "confidence", 0.2), ("a", 0, "accuracy", 0.0), ("a", 0, "count", 1),
            ("a", 1, "confidence", math.nan), ("a", 1, "accuracy", math.nan),
            ("a", 1, "count", 0),
            ("b", 0, "confidence", 0.4), ("b", 0, "accuracy", 1.0), ("b", 0, "count", 3),
            ("b", 1, "confidence", 0.9), ("b", 1, "accuracy", 1.0), ("b", 1, "count", 2)]
    history = pd.DataFrame(rows, columns=["run_key", "step", "metric", "value"]) \
        .assign(split="test_bins")
    pooled = pooled_bins(history, ["a", "b"])
    assert pooled.loc[0, "confidence"] == pytest.approx((0.2 + 3 * 0.4) / 4)
    assert pooled.loc[0, "accuracy"] == pytest.approx(0.75)
    assert pooled.loc[1, "accuracy"] == 1.0 and pooled["count"].tolist() == [2.0, 1.0]
    runs = pd.DataFrame({"run_key": ["r"], "status": ["ok"], "loss": ["mse"],
                         "loss_key": ["mse"], "test_metrics": ["{}"]})
    assert reliability_plot("reg", runs, history, tmp_path / "x.png") is None
