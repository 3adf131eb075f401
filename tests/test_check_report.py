import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from typer.testing import CliRunner

from losscli.check import compare, make_baseline
from losscli.cli import app
from losscli.report import evaluate_finding
from losscli.suite import Finding

runner = CliRunner()

SUITE = """
name = "tiny-check"
seeds = 2
[[job]]
task = "mnist"
losses = ["ce", "focal:gamma=2"]
steps = 24
batch_size = 64
eval_every = 8
optimizer = "sgd"   # SGD, unlike Adam, is not invariant to the loss's scale
lr = {lr}
"""

WEAK_CE = '''
import torch.nn.functional as F
from losscli.losses import register_loss

@register_loss("ce", family="classification", pred="logits", target="index",
               description="ce scaled by 0.01 (a deliberately weakened loss)",
               reference="test", replace=True)
def weak_ce(pred, target, *, reduction="mean"):
    return 0.01 * F.cross_entropy(pred, target, reduction=reduction)
'''


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    suite = root / "suite.toml"
    suite.write_text(SUITE.format(lr=0.05))
    res = runner.invoke(app, ["baseline", "--suite", str(suite), "--out",
                              str(root / "baseline.csv"), "--quiet"])
    assert res.exit_code == 0, res.output
    return root, suite


def test_unchanged_code_passes(baseline_run, tmp_path):
    root, suite = baseline_run
    junit = tmp_path / "junit.xml"
    res = runner.invoke(app, ["check", "--suite", str(suite), "--baseline",
                              str(root / "baseline.csv"), "--junit", str(junit), "--quiet"])
    assert res.exit_code == 0, res.output
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert len(cases) == 2 and not ET.parse(junit).getroot().findall(".//failure")


def test_weakened_loss_fails_with_a_readable_table(baseline_run, tmp_path):
    root, suite = baseline_run
    plugin = tmp_path / "weak.py"
    plugin.write_text(WEAK_CE)
    junit = tmp_path / "junit.xml"
    res = runner.invoke(app, ["check", "--suite", str(suite), "--baseline",
                              str(root / "baseline.csv"), "--plugin", str(plugin),
                              "--junit", str(junit), "--quiet"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "REGRESSION" in text and "quality" in text
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 1  # ce regressed, focal did not


def test_zero_learning_rate_fails(baseline_run, tmp_path):
    root, _ = baseline_run
    frozen = tmp_path / "frozen.toml"
    frozen.write_text(SUITE.format(lr=0.05).replace("lr = 0.05", "lr = 0.0"))
    res = runner.invoke(app, ["check", "--suite", str(frozen), "--baseline",
                              str(root / "baseline.csv"), "--quiet"])
    # lr is part of the variant: no current runs match the baseline's rows, a regression
    assert res.exit_code == 1, res.output


def _runs(values: dict[str, list[float]], metric="rmse", options="{}", steps=100) -> pd.DataFrame:
    rows = []
    for loss, xs in values.items():
        for seed, x in enumerate(xs):
            rows.append({"run_key": f"{loss}-{seed}", "job": "mnist", "job_options": options,
                         "loss": loss, "loss_key": loss, "seed": seed, "status": "ok",
                         "primary_metric": metric, "test_final": x, "val_best": x,
                         "val_final": x,
                         "steps_to_target": 50.0, "steps": steps, "eval_every": 10,
                         "versions": "v", "test_metrics": json.dumps({metric: x}),
                         "maximize": metric != "rmse", "optimizer": "adam", "lr": 1e-3,
                         "batch_size": 64, "weight_decay": 0.0, "bf16": False,
                         "device": "cpu", "threads": 1})
    return pd.DataFrame(rows)


def test_tolerance_rule_uses_seed_spread():
    base = make_baseline(_runs({"a": [0.90, 0.92, 0.94]}, "accuracy"))
    assert compare(_runs({"a": [0.89, 0.91, 0.93]}, "accuracy"), base)[0].ok  # within 3 std
    bad = compare(_runs({"a": [0.70, 0.71, 0.72]}, "accuracy"), base)[0]
    assert not bad.ok and "quality" in bad.problems[0]
    slow = _runs({"a": [0.90, 0.92, 0.94]}, "accuracy").assign(steps_to_target=90.0)
    assert "convergence" in compare(slow, base)[0].problems[0]
    assert not compare(_runs({"b": [0.9, 0.9]}, "accuracy"), base)[0].ok  # missing row


@pytest.mark.parametrize(
    "values, verdict",
    [
        ({"mse": [1.0, 1.1, 0.9], "l1": [0.5, 0.55, 0.45]}, "reproduced"),
        ({"mse": [0.5, 0.55, 0.45], "l1": [1.0, 1.1, 0.9]}, "not reproduced"),
        ({"mse": [1.0, 0.5, 0.9], "l1": [0.9, 0.6, 0.85]}, "inconclusive"),
        ({"mse": [1.0], "l1": [0.5]}, "no data"),
    ],
)
def test_finding_verdicts(values, verdict):
    finding = Finding(id="f", title="t", task="mnist", metric="rmse", better=("l1",),
                      than="mse", maximize=False)
    assert evaluate_finding(finding, _runs(values)).verdict == verdict


def test_report_writes_markdown_png_and_self_contained_html(baseline_run, tmp_path):
    root, suite = baseline_run
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["sweep", str(suite), "--out", str(run_dir), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| 1 | " in md and "95 % CI" in md and "focal:gamma=2" in md
    pngs = list((tmp_path / "rep").glob("*.png"))  # curves, quality vs time, reliability
    assert len(pngs) == 3 and all(p.stat().st_size > 5000 for p in pngs)
    assert (tmp_path / "rep" / "v0-reliability.png").exists()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page


def test_report_of_nothing_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no runs.csv" in res.output


def test_fewer_seeds_reaching_the_target_is_judged_by_a_binomial_test():
    from losscli.check import fewer_reached_p

    assert fewer_reached_p(4, 4, 3, 4) > 0.01  # one seed fewer: rounding, not a regression
    assert fewer_reached_p(4, 4, 0, 4) == pytest.approx((1 / 6) ** 4)  # none: flagged
    assert fewer_reached_p(4, 4, 0, 4) < 0.01
    assert fewer_reached_p(2, 4, 4, 4) == 1.0  # more seeds reaching is never a regression
    base = make_baseline(_runs({"a": [0.90, 0.92, 0.94, 0.93]}, "accuracy"))
    none = _runs({"a": [0.90, 0.92, 0.94, 0.93]}, "accuracy").assign(steps_to_target=None)
    assert any("convergence" in p for p in compare(none, base)[0].problems)
    one_fewer = _runs({"a": [0.90, 0.92, 0.94, 0.93]}, "accuracy")
    one_fewer.loc[0, "steps_to_target"] = None
    assert compare(one_fewer, base)[0].ok


def test_a_finding_matches_options_written_as_the_job_types_them():
    """``imbalance = 10`` in a suite's finding selects runs whose job stored 10.0."""
    runs = _runs({"mse": [1.0, 1.1, 0.9], "l1": [0.5, 0.55, 0.45]},
                 options=json.dumps({"imbalance": "10.0"}))
    finding = Finding(id="f", title="t", task="mnist", metric="rmse", better=("l1",),
                      than="mse", maximize=False, options={"imbalance": 10})
    assert evaluate_finding(finding, runs).verdict == "reproduced"
