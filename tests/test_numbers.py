"""The numbers a user reads, checked on hand-made inputs: ranks (both metric directions),
steps to target, curve AUC, best vs final, mean/std over seeds, the check's tolerance rule
and the report's ranking table. Each assertion is one that a wrong formula would break
(reversed ranks, the last crossing, a halved AUC, the worst eval called "best")."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from losscli.check import compare, make_baseline, tolerance
from losscli.engine import RunOutcome
from losscli.jobs import create_job
from losscli.losses import create_loss
from losscli.report import ranking
from losscli.results import (
    best_value,
    curve_auc,
    seed_stats,
    steps_to_target,
    summarize,
    variant_label,
)
from losscli.settings import Settings
from losscli.sweep import RunSpec, result_of

# --------------------------------------------------------------------- per-run numbers


def test_steps_to_target_is_the_first_crossing_on_the_eval_curve():
    curve = [(0, 0.1), (10, 0.6), (20, 0.96), (30, 0.90), (40, 0.97)]
    assert steps_to_target(curve, 0.95, maximize=True) == 20  # not 40, the last crossing
    assert steps_to_target(curve, 0.99, maximize=True) is None
    rmse = [(0, 2.0), (10, 0.8), (20, 0.45), (30, 0.6), (40, 0.4)]
    assert steps_to_target(rmse, 0.5, maximize=False) == 20
    assert steps_to_target(rmse, 0.5, maximize=True) == 0  # direction matters


def test_curve_auc_is_the_mean_height_of_the_trapezoid_curve():
    # 0 -> 1 linearly over the run: area 0.5
    assert curve_auc([(0, 0.0), (50, 0.5), (100, 1.0)], 100) == pytest.approx(0.5)
    # a constant curve: its value, whatever the number of points
    assert curve_auc([(0, 0.8), (25, 0.8), (100, 0.8)], 100) == pytest.approx(0.8)
    # hand-computed: (0.1+0.5)/2*0.5 + (0.5+0.9)/2*0.5 = 0.5
    assert curve_auc([(0, 0.1), (5, 0.5), (10, 0.9)], 10) == pytest.approx(0.5)
    # a run that diverged half-way: normalised by the fraction it covered
    assert curve_auc([(0, 0.2), (50, 0.6)], 100) == pytest.approx(0.4)
    assert math.isnan(curve_auc([(0, 0.2)], 100))


def test_best_value_follows_the_metric_direction():
    assert best_value([0.5, 0.9, 0.7], maximize=True) == 0.9
    assert best_value([0.5, 0.9, 0.7], maximize=False) == 0.5
    assert math.isnan(best_value([], maximize=True))


def _spec(task: str, seed: int = 0) -> RunSpec:
    job = create_job(task)
    cfg = Settings(steps=40, batch_size=8, eval_every=10).resolve(100, task)
    return RunSpec(job, create_loss(job.task.losses[0]), seed, cfg)


class _Data:
    source = "hand-made"


def test_a_run_row_reads_best_final_target_and_auc_from_its_eval_curve():
    # mnist: accuracy, higher is better, target 0.95
    accuracy = [0.1, 0.6, 0.96, 0.93, 0.97]
    out = RunOutcome(status="ok", evals=[(10 * i, {"accuracy": a, "f1_macro": a,
                                                   "ece": 0.5 - a / 2, "nll": 1 - a})
                                         for i, a in enumerate(accuracy)],
                     train_loss=[(10, 1.0), (40, 0.2)], train_seconds=2.0, timed_samples=400,
                     test={"accuracy": 0.955, "f1_macro": 0.95, "ece": 0.02, "nll": 0.1},
                     selected_step=40)
    row = result_of(_spec("mnist"), _Data(), out)
    assert row.val_final == 0.97 and row.val_best == 0.97 and row.test_final == 0.955
    assert row.test_metrics["ece"] == 0.02 and row.selection == "final"
    assert row.steps_to_target == 20
    assert row.curve_auc == pytest.approx(curve_auc(list(zip(range(0, 50, 10), accuracy,
                                                             strict=True)), 40))
    assert row.final_train_loss == 0.2 and row.samples_per_s == 200.0
    assert row.maximize is True


def test_best_of_a_lower_is_better_metric_is_its_minimum_and_excludes_step_0():
    rmse = [0.2, 1.5, 0.6, 0.8, 0.7]  # step 0 is not a trained model: never "best"
    out = RunOutcome(status="ok", evals=[(10 * i, {"rmse": v, "mae": v, "r2": -v})
                                         for i, v in enumerate(rmse)])
    row = result_of(_spec("reg"), _Data(), out)
    assert row.val_best == 0.6 and row.val_final == 0.7
    assert row.steps_to_target == 0 and row.maximize is False  # the curve starts at step 0


# --------------------------------------------------------------------- seeds and ranks


def _runs(values: dict[str, list[float]], metric: str = "accuracy", maximize: bool = True,
          steps: int = 100, lr: float = 1e-3) -> pd.DataFrame:
    rows = []
    for loss, xs in values.items():
        for seed, x in enumerate(xs):
            rows.append({
                "run_key": f"{loss}-{seed}-{lr}", "job": "mnist", "job_options": "{}",
                "loss": loss, "loss_key": loss, "seed": seed, "status": "ok",
                "primary_metric": metric, "maximize": maximize, "test_final": x,
                "val_final": x - 0.01, "val_best": x + 0.01,
                "steps_to_target": 10.0 * (seed + 1),
                "curve_auc": x / 2, "final_train_loss": 0.1, "train_seconds": 1.0,
                "samples_per_s": 100.0, "loss_ms_per_step": 0.1, "steps": steps,
                "eval_every": 10, "optimizer": "adam", "lr": lr, "batch_size": 64,
                "weight_decay": 0.0, "bf16": False, "device": "cpu", "threads": 1,
                "versions": "v", "test_metrics": json.dumps({metric: x})})
    return pd.DataFrame(rows)


def test_seed_stats_mean_and_sample_std():
    st = seed_stats(_runs({"a": [0.90, 0.92, 0.97]}))
    assert st["mean"] == pytest.approx(0.93)
    assert st["std"] == pytest.approx(math.sqrt(((-.03) ** 2 + (-.01) ** 2 + .04 ** 2) / 2))
    assert st["steps_to_target"] == pytest.approx(20.0) and st["reached"] == 3
    assert math.isnan(seed_stats(_runs({"a": [0.9]}))["std"])  # one seed: no spread, not 0


@pytest.mark.parametrize("maximize, order", [(True, ["b", "c", "a"]), (False, ["a", "c", "b"])])
def test_summary_ranks_by_the_metric_direction(maximize, order):
    runs = _runs({"a": [0.80, 0.82], "b": [0.95, 0.97], "c": [0.90, 0.90]},
                 metric="accuracy" if maximize else "rmse", maximize=maximize)
    summary = summarize(runs)
    assert list(summary["loss"]) == order
    assert list(summary["rank"]) == [1, 2, 3]
    first = summary.iloc[0]
    assert first["final_mean"] == pytest.approx(0.96 if maximize else 0.81)
    assert first["best_mean"] == pytest.approx(first["final_mean"] + 0.01)
    assert first["curve_auc"] == pytest.approx(first["final_mean"] / 2)


def test_summary_never_pools_runs_made_with_different_settings():
    runs = pd.concat([_runs({"ce": [0.9, 0.91]}, lr=1e-3), _runs({"ce": [0.5, 0.52]}, lr=3e-2)])
    summary = summarize(runs)
    assert len(summary) == 2 and list(summary["runs"]) == [2, 2]
    assert {round(m, 3) for m in summary["final_mean"]} == {0.905, 0.51}
    assert all("lr 0.001" in v or "lr 0.03" in v for v in summary["variant"])


def test_summary_flags_mixed_thread_counts():
    runs = _runs({"ce": [0.9, 0.91]})
    runs.loc[1, "threads"] = 2
    assert summarize(runs).iloc[0]["threads"] == "1,2"


def test_variant_label_names_every_setting_that_changes_numbers():
    row = _runs({"ce": [0.9]}).iloc[0].to_dict() | {"weight_decay": 0.01, "bf16": True,
                                                     "device": "cuda:1"}
    label = variant_label(row)
    for part in ("mnist", "100 steps", "adam lr 0.001", "batch 64", "eval 10", "wd 0.01",
                 "bf16", "cuda"):
        assert part in label


def test_report_ranking_table_order_interval_and_p():
    rank = ranking(_runs({"a": [0.80, 0.82, 0.81], "b": [0.95, 0.97, 0.96]}))
    assert list(rank["loss"]) == ["b", "a"]
    assert rank.loc[0, "mean"] == pytest.approx(0.96)
    # the 95 % t-interval over 3 seeds: t(0.975, df 2) = 4.302653
    assert rank.loc[0, "ci_high"] - rank.loc[0, "mean"] == pytest.approx(
        4.302653 * rank.loc[0, "std"] / math.sqrt(3), rel=1e-4)
    assert math.isnan(rank.loc[0, "p_holm"]) and rank.loc[1, "p_holm"] < 0.01
    assert rank.loc[1, "worse_by"] == pytest.approx(0.15) and rank.loc[1, "hedges_g"] > 5
    low = ranking(_runs({"a": [0.80, 0.82], "b": [0.95, 0.97]}, metric="rmse", maximize=False))
    assert list(low["loss"]) == ["a", "b"]


# --------------------------------------------------------------------- the check's rule


def test_tolerance_rule_on_hand_made_numbers():
    assert tolerance(0.9, 0.001) == pytest.approx(0.009)  # 1 % of the mean
    assert tolerance(0.9, 0.01) == pytest.approx(0.03)  # 3 x the seed std
    assert tolerance(0.1, 0.0) == pytest.approx(0.005)  # the floor
    assert tolerance(0.9, math.nan) == pytest.approx(0.009)  # one seed: no spread term


@pytest.mark.parametrize("maximize", [True, False])
def test_check_flags_a_drop_beyond_tolerance_in_the_metric_direction(maximize):
    metric = "accuracy" if maximize else "rmse"
    base = make_baseline(_runs({"a": [0.90, 0.90, 0.90]}, metric, maximize))
    worse, better = (0.88, 0.95) if maximize else (0.92, 0.85)
    assert compare(_runs({"a": [0.896 if maximize else 0.904] * 3}, metric, maximize),
                   base)[0].ok
    assert not compare(_runs({"a": [worse] * 3}, metric, maximize), base)[0].ok
    assert compare(_runs({"a": [better] * 3}, metric, maximize), base)[0].ok


def test_check_uses_the_baseline_spread_and_states_what_it_catches():
    from losscli.check import critical_drop, detectable

    base = make_baseline(_runs({"a": [0.90, 0.91, 0.92]}))  # std 0.01, 3 seeds
    crit = critical_drop(0.01, 3, 3)
    assert crit == pytest.approx(3.746947 * 0.01 * math.sqrt(2 / 3), rel=1e-5)
    assert compare(_runs({"a": [0.91 - crit + 0.001] * 3}), base)[0].ok
    assert not compare(_runs({"a": [0.91 - crit - 0.001] * 3}), base)[0].ok
    # a weakened loss that is also noisy does not hide behind its own spread
    assert not compare(_runs({"a": [0.55, 0.95, 0.25]}), base)[0].ok
    verdict = compare(_runs({"a": [0.91] * 3}), base)[0]
    assert verdict.ok and verdict.tol == pytest.approx(detectable(0.01, 3, 3))
    assert verdict.tol > crit


def test_holm_correction_and_no_difference_detected():
    from losscli.stats import compare, recommend

    same = {"a": [0.90, 0.91, 0.92], "b": [0.905, 0.912, 0.915], "c": [0.899, 0.913, 0.92]}
    table = compare(same, maximize=True, metric="accuracy")
    assert (table["p_holm"].dropna() >= table["p"].dropna()).all()
    pick, tied, verdict = recommend(table)
    assert set(tied) == set(same) - {pick} and verdict.startswith("no difference detected")
    apart = compare({"a": [0.90, 0.91, 0.92], "b": [0.80, 0.81, 0.79]}, True, "accuracy")
    assert recommend(apart)[:2] == ("a", []) and apart.loc[1, "significant"]
    # intervals respect the metric's range
    edge = compare({"a": [0.99, 1.0, 0.97]}, True, "accuracy")
    assert edge.loc[0, "ci_high"] <= 1.0
