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


def _ramp_stack(calls: list, fail: dict | None = None, stored: dict | None = None):
    """``_ramp``'s trials trained together, as ``engine.run_trials`` trains a stack: every
    live trial steps at once and the halving decides at each eval which stop. ``stored``:
    lr → curve of a trial read back instead of trained (a resumed study)."""
    stored = stored or {}

    def run_stack(trials, make_halving):
        outcomes = {n: Trial(stored[p["lr"]], "pruned", stored[p["lr"]][-1][1])
                    for n, p in trials if p["lr"] in stored}
        todo = {n: p["lr"] for n, p in trials if n not in outcomes}
        halving = make_halving(list(todo), {n: t.curve for n, t in outcomes.items()})
        curves = {n: [(0, 0.0)] for n in todo}
        live = list(todo)
        for step in range(1, 28):
            for n in list(live):
                if fail and todo[n] in fail and step == fail[todo[n]][0]:
                    calls.append((todo[n], "diverged", step))
                    outcomes[n] = Trial(curves[n], "diverged", float("nan"))
                    live.remove(n)
            if step % 3:
                continue
            values = {n: todo[n] * step / 27 for n in live}
            for n, v in values.items():
                curves[n].append((step, v))
            for n in sorted(halving.decide(step, values)):
                calls.append((todo[n], "pruned", step))
                outcomes[n] = Trial(curves[n], "pruned", values[n])
                live.remove(n)
        for n in live:
            calls.append((todo[n], "ok", 27))
            outcomes[n] = Trial(curves[n], "ok", curves[n][-1][1])
        return outcomes
    return run_stack


@pytest.mark.parametrize(("maximize", "first_rung", "fail"), [
    (True, 9, None), (False, 9, None), (True, 3, None), (True, 1, None),
    (True, 9, {0.9: (2, "diverged")}), (False, 9, {0.1: (5, "diverged")})])
def test_stacked_trials_halve_as_parked_trials_do(maximize, first_rung, fail):
    """The halving a trial stack asks at each eval stops the same trials at the same rungs
    and picks the same winner as trial-by-trial halving."""
    one, together = [], []
    best = tune_group(SPACE9, 9, maximize, 27, _ramp(one, fail), first_rung)
    assert tune_group(SPACE9, 9, maximize, 27, None, first_rung,
                      run_stack=_ramp_stack(together, fail)) == best
    assert sorted(together) == sorted(one)


def test_a_resumed_trial_stack_compares_stored_trials_at_their_rungs():
    """After a kill, the trials pruned at the first rung are stored: the stack trains only
    the others, and the stored values still take part in the rung comparison (a stack
    that ignored them would keep the best third of three, not the three best of nine)."""
    first = []
    tune_group(SPACE9, 9, True, 27, None, run_stack=_ramp_stack(first))
    stored = {lr: [(0, 0.0), (3, lr * 3 / 27)] for lr in SPACE9["lr"]
              if (lr, "pruned", 3) in first}
    assert len(stored) == 6
    again = []
    assert tune_group(SPACE9, 9, True, 27, None,
                      run_stack=_ramp_stack(again, stored=stored)) == {"lr": 0.9}
    assert sorted(again) == [(0.7, "pruned", 9), (0.8, "pruned", 9), (0.9, "ok", 27)]


def _stack_cmd(out, vectorise: str) -> list[str]:
    return [sys.executable, "-m", "losscli", "train", *TINY, "--loss", "mse", "--loss", "l1",
            "--tune", "lr", "--seeds", "2", "--vectorise", vectorise, "--out", str(out)]


def test_stacked_trials_write_the_rows_and_choices_of_one_by_one_trials(tmp_path):
    """``--vectorise always``: each loss's 7 learning-rate trials train as one vmapped model.
    The same trials (run keys) stop at the same rungs with the same validation values (to
    float rounding) and the same winners as trained one by one; then kill -9 while the
    stack trains and the same command: every trial once, the same choices."""
    runs = {}
    for way in ("never", "always"):
        subprocess.run(_stack_cmd(tmp_path / way, way), check=True, capture_output=True,
                       timeout=600)
        runs[way] = pd.read_csv(tmp_path / way / "runs.csv").set_index("run_key")
    one, stack = runs["never"], runs["always"]
    assert set(one.index) == set(stack.index)
    tune = one.index[one["phase"] == "tune"]
    assert len(tune) == 14
    assert stack.loc[tune, "status"].tolist() == one.loc[tune, "status"].tolist()
    assert stack.loc[tune, "rung"].tolist() == one.loc[tune, "rung"].tolist()
    assert (stack.loc[tune, "seeds_together"] == 7).all()  # one stack of 7 per loss
    assert (one.loc[tune, "seeds_together"] == 1).all()
    pruned = tune[one.loc[tune, "status"] == "pruned"]
    assert stack.loc[pruned, "val_final"].to_numpy() == pytest.approx(
        one.loc[pruned, "val_final"].to_numpy(), rel=1e-4)
    chosen = lambda df: df[df["phase"] == "final"].groupby("loss")["tuned"].first()  # noqa: E731
    assert chosen(stack).to_dict() == chosen(one).to_dict()

    out = tmp_path / "killed"
    proc = subprocess.Popen(_stack_cmd(out, "always"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "runs.csv").exists() and len(pd.read_csv(out / "runs.csv")) >= 5:
            proc.send_signal(signal.SIGSTOP)  # the rows of a rung are there: kill now
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(pd.read_csv(out / "runs.csv"))
    assert 5 <= written < len(stack)
    subprocess.run(_stack_cmd(out, "always"), check=True, capture_output=True, timeout=600)
    got = pd.read_csv(out / "runs.csv")
    assert got["run_key"].is_unique and set(got["run_key"]) == set(stack.index)
    assert chosen(got.set_index("run_key")).to_dict() == chosen(stack).to_dict()
