"""Equal per-loss tuning on the validation split: grids, budgets, successive halving, the
final runs on fresh seeds, and kill -9 / resume with every trial exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from losscli.errors import UsageError
from losscli.losses import create_loss
from losscli.tuning import Trial, configure, lr_grid, parse_tune, rung_of, tune_group

TINY = ["--task", "reg", "--opt", "n_train=200", "--opt", "n_val=60", "--opt", "n_test=60",
        "--steps", "27", "--eval-every", "3", "--batch-size", "32", "--quiet"]


def test_default_lr_grid_spans_three_decades_around_the_default():
    grid = lr_grid(1e-3)
    assert len(grid) == 7 and grid[3] == 1e-3
    assert grid[-1] / grid[0] == pytest.approx(1000, rel=0.01)


def test_parse_tune_forms_and_errors():
    t = parse_tune(["lr", "focal:gamma=[0.5,1,2,5]", "trials=9"])
    assert t.lr == () and t.params == {"focal": {"gamma": (0.5, 1, 2, 5)}} and t.trials == 9
    assert parse_tune(["lr=[1e-4,1e-3]"]).lr == (1e-4, 1e-3)
    assert parse_tune([]) is None
    for bad in ("lr=[-1]", "trials=0", "gamma", "focal:gamma"):
        with pytest.raises(UsageError):
            parse_tune([bad])


def test_configure_sets_term_parameters_and_keeps_the_rest():
    loss = configure(create_loss("focal:gamma=2,alpha=0.25+0.5*dice"), {"focal.gamma": 5,
                                                                        "lr": 0.1})
    assert loss.key == "focal:alpha=0.25,gamma=5+0.5*dice"


def _ramp(calls: list, fail: dict | None = None):
    """A fake trial: its validation value is its lr times step/27 (27 steps, an eval every
    3 steps); ``calls`` records (lr, outcome, last step) as each trial ends. ``fail``:
    lr → (step, exception) raised there."""
    def run_trial(number, params, ask_prune):
        curve = [(0, 0.0)]
        for step in range(1, 28):
            getattr(ask_prune, "tick", lambda: None)()
            if fail and params["lr"] in fail and step == fail[params["lr"]][0]:
                if fail[params["lr"]][1] == "diverged":
                    calls.append((params["lr"], "diverged", step))
                    return Trial(curve, "diverged", float("nan"))
                raise fail[params["lr"]][1]
            if step % 3:
                continue
            value = params["lr"] * step / 27
            curve.append((step, value))
            if ask_prune(step, value):
                calls.append((params["lr"], "pruned", step))
                return Trial(curve, "pruned", value)
        calls.append((params["lr"], "ok", 27))
        return Trial(curve, "ok", curve[-1][1])
    return run_trial


SPACE9 = {"lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}


def test_successive_halving_is_synchronous_keeps_a_third_per_rung_and_picks_the_best():
    """Rungs at 27/9 = 3 and 27/3 = 9 steps: all nine trials reach step 3, the best three
    (0.7-0.9) go on to step 9, the best of those to 27. Every trial is compared with all
    the others at its rung, never only with those that happened to run before it."""
    calls = []
    assert tune_group(SPACE9, 9, True, 27, _ramp(calls)) == {"lr": 0.9}
    assert sorted(calls) == sorted([(lr, "pruned", 3) for lr in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
                                   + [(0.7, "pruned", 9), (0.8, "pruned", 9), (0.9, "ok", 27)])
    assert [c[2] for c in calls] == [3] * 6 + [9] * 2 + [27]  # rows in rung order
    again = []
    tune_group(SPACE9, 9, True, 27, _ramp(again))
    assert again == calls  # the same order, the same choices: seeded
    lower = []  # minimising: the smallest values win
    assert tune_group(SPACE9, 9, False, 27, _ramp(lower)) == {"lr": 0.1}
    assert (0.1, "ok", 27) in lower and len([c for c in lower if c[1] == "ok"]) == 1


def test_promotion_keeps_the_best_third_at_least_one_ties_to_the_lower_trial():
    from losscli.tuning import promoted, rung_steps

    assert promoted({0: 0.5, 1: 0.9, 2: 0.1, 3: 0.7, 4: 0.8, 5: 0.2, 6: 0.3}, True) == {1, 4}
    assert promoted({0: 0.5, 1: 0.9, 2: 0.1, 3: 0.7, 4: 0.8, 5: 0.2, 6: 0.3}, False) == {2, 5}
    assert promoted({3: 0.5, 1: 0.5}, True) == {1}
    assert promoted({4: 1.0}, False) == {4}
    assert rung_steps(27) == [3, 9] and rung_steps(450) == [50, 150] and rung_steps(4) == [1, 3]


def test_a_later_first_rung_compares_later_and_one_means_a_plain_grid():
    """``--tune first_rung=3``: the first comparison at 27/3 = 9 steps (keeps 3), then the
    full budget; ``first_rung=1``: no halving, every trial trains the whole budget."""
    t = parse_tune(["lr", "first_rung=3"])
    assert t.first_rung == 3 and parse_tune(["lr"]).first_rung == 9
    with pytest.raises(UsageError, match="first_rung must be an integer"):
        parse_tune(["lr", "first_rung=0"])
    calls = []
    assert tune_group(SPACE9, 9, True, 27, _ramp(calls), first_rung=3) == {"lr": 0.9}
    assert sorted(calls) == sorted([(lr, "pruned", 9) for lr in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
                                   + [(0.7, "ok", 27), (0.8, "ok", 27), (0.9, "ok", 27)])
    assert rung_of([(0, 0), (9, 1)], 27, 3) == 0 and rung_of([(0, 0), (27, 1)], 27, 3) == 1
    calls = []
    assert tune_group(SPACE9, 9, True, 27, _ramp(calls), first_rung=1) == {"lr": 0.9}
    assert sorted(calls) == sorted((lr, "ok", 27) for lr in SPACE9["lr"])


def test_a_diverged_trial_drops_out_and_an_interrupt_stops_every_parked_trial():
    calls = []
    assert tune_group(SPACE9, 9, True, 27, _ramp(calls, {0.9: (2, "diverged")})) == {"lr": 0.8}
    assert (0.9, "diverged", 2) in calls and (0.8, "ok", 27) in calls
    assert [c[0] for c in calls if c[2] == 9] == [0.7]  # 8 at rung 0: the best 2 go on
    with pytest.raises(RuntimeError, match="boom"):  # a trial's exception reaches the caller
        tune_group(SPACE9, 9, True, 27, _ramp(calls, {0.5: (2, RuntimeError("boom"))}))
    import threading

    calls = []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the 8th trial trains to rung 0
        tune_group(SPACE9, 9, True, 27, _ramp(calls, {0.2: (2, KeyboardInterrupt())}))
    assert calls == []  # no parked trial wrote anything
    assert not [t for t in threading.enumerate() if t.name.startswith("losscli-trial-")]


def test_rung_of_counts_the_halvings_a_curve_passed():
    assert rung_of([(0, 0), (3, 1)], 27) == 0
    assert rung_of([(0, 0), (9, 1)], 27) == 1
    assert rung_of([(0, 0), (27, 1)], 27) == 2


def _cmd(out) -> list[str]:
    return [sys.executable, "-m", "losscli", "train", *TINY, "--loss", "mse", "--loss", "l1",
            "--tune", "lr", "--seeds", "2", "--vectorise", "never", "--out", str(out)]


def test_tuned_train_then_kill_9_resumes_every_trial_exactly_once(tmp_path):
    ref = tmp_path / "ref"
    shown = subprocess.run(_cmd(ref), check=True, capture_output=True, timeout=600, text=True,
                           env={**os.environ, "COLUMNS": "100"})
    want = pd.read_csv(ref / "runs.csv")
    # the table names each loss's chosen learning rate
    for lr in want.loc[want["phase"] == "final", "tuned"].map(lambda t: json.loads(t)["lr"]):
        assert f"lr={lr:g}" in shown.stdout
    assert set(want["phase"]) == {"tune", "final"}
    assert (want["phase"] == "tune").sum() == 14  # 7 lrs x 2 losses, the same budget each
    final = want[want["phase"] == "final"]
    assert len(final) == 4 and final["test_final"].notna().all()
    assert want.loc[want["phase"] == "tune", "test_final"].isna().all()  # never on test
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "runs.csv").exists() and len(pd.read_csv(out / "runs.csv")) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_cmd(out), check=True, capture_output=True, timeout=600)
    got = pd.read_csv(out / "runs.csv")
    assert got["run_key"].is_unique and set(got["run_key"]) == set(want["run_key"])
    chosen = lambda df: df[df["phase"] == "final"].groupby("loss")["tuned"].first()  # noqa: E731
    assert chosen(got).to_dict() == chosen(want).to_dict()
