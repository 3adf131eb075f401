"""Tuning through Optuna's RDB storage (--tune-storage): one shared study per tuned
(variant, loss), each grid point run once across processes, every process choosing the same
winner; a malformed URL refused before anything trains; kill -9 resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from losscli.cli import app
from losscli.errors import UsageError
from losscli.results import read_history, read_runs
from losscli.tuning import Trial, tune_group
from losscli.tuning_storage import (
    GRID,
    OWNER,
    STATUS,
    check_url,
    grid_order,
    open_storage,
    tune_shared,
)

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
runner = CliRunner()

TINY = ["--task", "reg", "--opt", "n_train=200", "--opt", "n_val=60", "--opt", "n_test=60",
        "--steps", "27", "--eval-every", "3", "--batch-size", "32", "--quiet", "--threads", "1",
        "--vectorise", "never"]
TUNED = [*TINY, "--loss", "mse", "--loss", "l1", "--tune", "lr"]
GRID_SIZE = 7  # the default lr grid

SUITE = """
name = "tuned"
seeds = 2
[[job]]
task = "reg"
losses = ["mse", "l1"]
steps = 27
eval_every = 3
batch_size = 32
options = { n_train = 200, n_val = 60, n_test = 60 }
tune = ["lr"]
"""


def _train(*args: str) -> None:
    res = runner.invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output


def _chosen(runs: pd.DataFrame) -> dict[str, str]:
    final = runs[runs["phase"] == "final"]
    assert final.groupby("loss")["tuned"].nunique().eq(1).all()  # one choice per loss
    return final.groupby("loss")["tuned"].first().to_dict()


def _all_trials(url: str) -> dict[str, list]:
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url).trials
            for s in optuna.get_all_study_summaries(url)}


def _studies(url: str) -> dict[str, list]:
    """Study name → its trials holding a grid point (a lost claim or a killed process's
    trial does not hold one)."""
    return {name: [t for t in trials if GRID in t.system_attrs and (
                t.state != optuna.trial.TrialState.FAIL or STATUS in t.system_attrs)]
            for name, trials in _all_trials(url).items()}


def _best(trials: list, maximize: bool) -> dict:
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: t.system_attrs[GRID])
    return (max if maximize else min)(done, key=lambda t: t.value).params


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory) -> pd.DataFrame:
    """The same tuned train with the in-memory study (synchronous successive halving)."""
    out = tmp_path_factory.mktemp("memory")
    _train(*TUNED, "--out", str(out))
    runs = pd.read_csv(out / "runs.csv")
    runs.attrs["root"] = out
    return runs


@pytest.fixture(scope="module")
def shared_clean(tmp_path_factory) -> pd.DataFrame:
    """The reference for a killed shared tuning: the same command, never interrupted
    (shared studies prune asynchronously, so they are compared with each other)."""
    out = tmp_path_factory.mktemp("shared")
    _train(*TUNED, "--out", str(out / "run"), "--tune-storage",
           f"sqlite:///{out / 'optuna.db'}")
    return pd.read_csv(out / "run" / "runs.csv")


def test_grid_order_is_the_in_memory_samplers():
    space = {"lr": [1e-3, 1e-2, 1e-1], "focal.gamma": [0.5, 2]}
    order = grid_order(space, 6)
    assert len(order) == 6 and len({json.dumps(p, sort_keys=True) for p in order}) == 6
    assert grid_order(space, 4) == order[:4]  # a budget takes the first points


SPACE = {"lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}


def _fake(calls: list, who: str = "", pause: float = 0.0):
    """A trial whose validation value is its lr, ramping up over 27 steps (as in
    test_tuning); ``calls`` records (who, grid position, lr, outcome)."""
    def run_trial(number, params, ask_prune):
        curve = [(0, 0.0)]
        for step in range(3, 28, 3):
            time.sleep(pause)
            value = params["lr"] * step / 27
            curve.append((step, value))
            if ask_prune(step, value):
                calls.append((who, number, params["lr"], "pruned"))
                return Trial(curve, "pruned", value)
        calls.append((who, number, params["lr"], "ok"))
        return Trial(curve, "ok", curve[-1][1])
    return run_trial


def test_shared_study_in_one_process_runs_each_point_once_and_picks_the_best(tmp_path):
    """Asynchronous halving (Optuna's pruner, as trials report): the first trials of the
    grid order run longer than in the in-memory study's synchronous rungs; the points, their
    order and the winner are the same."""
    memory, shared = [], []
    best = tune_group(SPACE, 9, True, 27, _fake(memory))
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    assert tune_shared(storage, "s", SPACE, 9, True, 27, _fake(shared)) == best == {"lr": 0.9}
    assert [c[1] for c in shared] == list(range(9))  # grid order, one after another
    assert sorted(c[1:3] for c in shared) == sorted(c[1:3] for c in memory)
    assert any(c[3] == "pruned" for c in shared)
    again = []  # a finished study: nothing runs again, the same winner
    assert tune_shared(storage, "s", SPACE, 9, True, 27, _fake(again)) == best and not again


def test_concurrent_workers_run_each_grid_point_once_and_agree(tmp_path):
    """Two workers (threads, each with its own connection) on one SQLite study."""
    url, calls, results = f"sqlite:///{tmp_path / 'o.db'}", [], {}

    def worker(who: str) -> None:
        results[who] = tune_shared(open_storage(url), "s", SPACE, 9, True, 27,
                                   _fake(calls, who, pause=0.01))

    threads = [threading.Thread(target=worker, args=(w,)) for w in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(n for _, n, _, _ in calls) == list(range(9))  # each point once
    assert {w for w, _, _, _ in calls} == {"a", "b"}  # split between the workers
    assert results["a"] == results["b"]


def test_a_trial_of_a_dead_process_is_failed_and_its_point_run_again(tmp_path):
    """A trial left RUNNING by a killed process (its PID gone) with a reported rung: the
    point runs again, once, and the pruner ignores the dead trial's rung value."""
    clean, shared = [], []
    best = tune_shared(open_storage(f"sqlite:///{tmp_path / 'clean.db'}"), "s", SPACE, 9, True,
                       27, _fake(clean))
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    order = grid_order(SPACE, 9)
    owner = {"host": socket.gethostname(), "pid": dead.pid, "thread": dead.pid,
             "pidns": os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid")
             else ""}
    left = storage.create_new_trial(study._study_id, optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=None,
        datetime_complete=None, params={}, distributions={}, user_attrs={},
        system_attrs={"fixed_params": order[0], GRID: 0, OWNER: owner,
                      "completed_rung_0": 99.0}, intermediate_values={3: 99.0}, trial_id=0))
    assert tune_shared(storage, "s", SPACE, 9, True, 27, _fake(shared)) == best
    assert sorted(n for _, n, _, _ in shared) == list(range(9))
    assert [c[1:] for c in shared] == [c[1:] for c in clean]  # as if never killed
    assert storage.get_trial(left).state == optuna.trial.TrialState.FAIL


def test_a_trial_without_a_heartbeat_is_failed_after_the_grace_period(tmp_path):
    """A trial of another machine (no PID to check) whose heartbeat stopped: Optuna's
    heartbeat fails it after the grace period and its point runs here."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    owner = {"host": "elsewhere", "pidns": "", "pid": 1, "thread": 1}
    left = storage.create_new_trial(study._study_id, optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=None,
        datetime_complete=None, params={}, distributions={}, user_attrs={},
        system_attrs={"fixed_params": grid_order(SPACE, 1)[0], GRID: 0, OWNER: owner},
        intermediate_values={}, trial_id=0))
    storage.record_heartbeat(left)
    calls = []
    tune_shared(storage, "s", SPACE, 9, True, 27, _fake(calls, pause=0.1))
    assert sorted(n for _, n, _, _ in calls) == list(range(9))
    assert calls[0][1] == 1  # point 0 was held at first; run once its holder went stale
    assert storage.get_trial(left).state == optuna.trial.TrialState.FAIL


def test_sqlite_study_in_one_process_runs_the_in_memory_trials(tmp_path, in_memory):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    _train(*TUNED, "--out", str(tmp_path / "run"), "--tune-storage", url)
    got = pd.read_csv(tmp_path / "run" / "runs.csv")
    # the same trials (run keys: job, settings, loss, lr, trial number), trained the same
    # way: the same validation value at the first rung (step 3) for every trial. Halving
    # differs (synchronous in memory), so how far each went and the winner may differ.
    assert len(got) == len(in_memory) == 2 * GRID_SIZE + 2
    tune_keys = set(got.loc[got["phase"] == "tune", "run_key"])
    assert tune_keys == set(in_memory.loc[in_memory["phase"] == "tune", "run_key"])

    def at_rung0(root):
        h = read_history(root)
        h = h[(h["split"] == "val") & (h["step"] == 3) & h["run_key"].isin(tune_keys)]
        return h.set_index(["run_key", "metric"])["value"].sort_index()

    mem, db = at_rung0(in_memory.attrs["root"]), at_rung0(tmp_path / "run")
    assert len(mem) >= 2 * GRID_SIZE and mem.equals(db)
    studies = _studies(url)
    assert len(studies) == 2  # one per tuned loss
    for name, trials in studies.items():
        assert sorted(t.system_attrs[GRID] for t in trials) == list(range(GRID_SIZE))
        loss = name.split(":")[2]
        assert json.loads(_chosen(got)[loss]) == _best(trials, maximize=False)  # rmse
    # the same command again trains nothing: every trial is in the study and the store
    _train(*TUNED, "--out", str(tmp_path / "run"), "--tune-storage", url)
    assert len(pd.read_csv(tmp_path / "run" / "runs.csv")) == len(got)
    assert {n: len(t) for n, t in _studies(url).items()} == dict.fromkeys(studies, GRID_SIZE)


def _cmd(out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "losscli", "train", *TUNED, "--out", str(out),
            "--tune-storage", url]


def _mid_trial(db: Path) -> bool:
    """Whether a trial is running with part of its validation curve reported, after three
    finished ones (a kill now leaves it RUNNING in the study). Read with sqlite3 directly:
    a few milliseconds, against a trial that lasts a fraction of a second."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as con:
            done = con.execute("SELECT count(*) FROM trials WHERE state IN "
                               "('COMPLETE', 'PRUNED', 'FAIL')").fetchone()[0]
            mid = con.execute("SELECT count(*) FROM trials t WHERE t.state = 'RUNNING' AND "
                              "EXISTS (SELECT 1 FROM trial_intermediate_values v "
                              "WHERE v.trial_id = t.trial_id)").fetchone()[0]
    except sqlite3.Error:  # not created yet, or being written
        return False
    return done >= 3 and mid > 0


def _kill_mid_trial(out: Path, url: str) -> list[int]:
    """Start a shared tuning and kill -9 it while a trial is running; the trials left
    RUNNING. The process is stopped (SIGSTOP) before the state is checked a second time,
    so the trial seen running is still running when the kill lands."""
    db = out / "optuna.db"
    proc = subprocess.Popen(_cmd(out, url), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _mid_trial(db):
            proc.send_signal(signal.SIGSTOP)
            if _mid_trial(db):
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return [t.number for trials in _all_trials(url).values() for t in trials
            if t.state == optuna.trial.TrialState.RUNNING]


def test_kill_9_during_shared_tuning_resumes_every_grid_point_once(tmp_path, shared_clean):
    # the process is stopped before the kill, so it lands mid-trial once a trial is seen
    # running; a run too quick to be seen at all gets up to five attempts, each afresh
    for attempt in range(5):
        out = tmp_path / f"run{attempt}"
        url = f"sqlite:///{out / 'optuna.db'}"
        running = _kill_mid_trial(out, url)
        if running:
            break
    assert running, "no trial was seen running, five times"
    # the killed trial is left RUNNING; its process is gone, so it is failed and re-run at
    # once (a trial of a process on another machine waits for its heartbeat's grace period)
    res = subprocess.run(_cmd(out, url), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = pd.read_csv(out / "runs.csv")
    assert got["run_key"].is_unique and set(got["run_key"]) == set(shared_clean["run_key"])
    assert _chosen(got) == _chosen(shared_clean)
    for trials in _studies(url).values():
        assert sorted(t.system_attrs[GRID] for t in trials) == list(range(GRID_SIZE))
    assert not any(t.state == optuna.trial.TrialState.RUNNING
                   for trials in _all_trials(url).values() for t in trials)


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this python")
def test_torchrun_ranks_share_the_study_and_agree(tmp_path):
    """Two ranks tune through one SQLite study: every grid point runs once across the two
    shards, both ranks train the same winner, every final run is there once."""
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    url = f"sqlite:///{out / 'optuna.db'}"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    start = time.time()
    res = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "losscli",
                          "sweep", str(suite), "--out", str(out), "--device", "cpu",
                          "--threads", "1", "--vectorise", "never", "--quiet",
                          "--tune-storage", url], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"torchrun tuned sweep: {time.time() - start:.1f} s")
    shards = {r: pd.read_csv(out / f"runs.rank{r}.csv") for r in (0, 1)}
    runs = read_runs(out)
    assert runs["run_key"].is_unique and len(runs) == sum(map(len, shards.values()))
    tune = runs[runs["phase"] == "tune"]
    # every grid point once per loss, across the shards
    assert tune.groupby("loss").size().to_dict() == {"l1": GRID_SIZE, "mse": GRID_SIZE}
    assert not tune.duplicated(["loss", "tuned"]).any()
    assert all((s["phase"] == "tune").any() for s in shards.values())  # both ranks tuned
    # both ranks trained the winner the study names; the final runs are there once
    final = runs[runs["phase"] == "final"]
    pairs = sorted(zip(final["loss"], final["seed"], strict=True))
    assert pairs == [("l1", 0), ("l1", 1), ("mse", 0), ("mse", 1)]
    for s in shards.values():
        assert set(s.loc[s["phase"] == "final", "loss"]) == {"mse", "l1"}
    chosen = _chosen(runs)
    for name, trials in _studies(url).items():
        assert sorted(t.system_attrs[GRID] for t in trials) == list(range(GRID_SIZE))
        assert json.loads(chosen[name.split(":")[2]]) == _best(trials, maximize=False)


def test_a_suite_names_its_storage_and_the_flag_wins(tmp_path):
    from losscli.suite import load_suite

    suite = tmp_path / "s.toml"
    suite.write_text('tune_storage = "sqlite:///x.db"\n' + SUITE)
    assert load_suite(suite).tune_storage == "sqlite:///x.db"
    suite.write_text("tune_storage = 3\n" + SUITE)
    with pytest.raises(UsageError, match="tune_storage must be a database URL"):
        load_suite(suite)


@pytest.mark.parametrize("url, message", [
    ("not a url", "is not a database URL"),
    ("redis://localhost/0", "unsupported database 'redis'"),
    ("sqlite://", "SQLite needs a file path"),
    ("sqlite:///:memory:", "SQLite needs a file path"),
    ("sqlite:////no/such/folder/optuna.db", "does not exist"),
])
def test_a_bad_storage_url_exits_2_before_training(tmp_path, url, message):
    res = runner.invoke(app, ["train", *TUNED, "--out", str(tmp_path / "run"),
                              "--tune-storage", url])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not (tmp_path / "run" / "runs.csv").exists()  # nothing trained


def test_storage_url_rules(tmp_path):
    root = tmp_path / "run"
    assert check_url(f"sqlite:///{root / 'sub' / 'o.db'}", root)  # made with the run dir
    assert check_url(f"sqlite:///{tmp_path / 'o.db'}", root)  # an existing folder
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        check_url(f"sqlite:///{tmp_path / 'dir.db'}", root)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="not writable"):
            check_url(f"sqlite:///{locked / 'o.db'}", root)
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="psycopg2-binary"):
            check_url("postgresql://user@localhost/optuna", root)
    suite = tmp_path / "s.toml"
    suite.write_text('tune_storage = "mysql+nosuchdriver://h/db"\n' + SUITE)
    res = runner.invoke(app, ["sweep", str(suite), "--dry-run", "--out", str(root)])
    assert res.exit_code == 2 and "cannot use this URL" in " ".join(res.output.split())
