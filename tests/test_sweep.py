import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from losscli.cli import app
from losscli.errors import UsageError
from losscli.results import ResultStore, RunResult, read_history, read_runs
from losscli.suite import expand_grid, load_suite

runner = CliRunner()

SUITE = """
name = "tiny"
seeds = 2
[defaults]
steps = 12
batch_size = 64
eval_every = 6
[[job]]
task = "mnist"
losses = ["ce"]
[[job.grid]]
loss = "focal"
gamma = [0.5, 2]
"""


def write_suite(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_grid_expansion():
    assert expand_grid({"loss": "focal", "gamma": [0, 2], "alpha": 0.25}, "t") == [
        "focal:gamma=0,alpha=0.25", "focal:gamma=2,alpha=0.25"]
    assert expand_grid({"loss": "ce"}, "t") == ["ce"]


def test_suite_file_problems_are_all_named(tmp_path):
    path = write_suite(tmp_path, 'colour = "red"\n[[job]]\nlosses = ["ce"]\n'
                                 '[[job]]\ntask = "mnist"\nepochz = 3\n')
    with pytest.raises(UsageError) as info:
        load_suite(path)
    msg = str(info.value)
    assert "unknown key 'colour'" in msg and "missing task" in msg and "'epochz'" in msg


def test_plan_problems_exit_2_before_training(tmp_path):
    path = write_suite(tmp_path, '[[job]]\ntask = "mnsit"\n[[job]]\ntask = "mnist"\n'
                                 'losses = ["mse", "focal:gama=1"]\n')
    res = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "did you mean 'mnist'" in text and "mse" in text and "'gamma'" in text
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_plan(tmp_path):
    res = runner.invoke(app, ["sweep", str(write_suite(tmp_path)), "--dry-run", "--out",
                              str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "6 runs" in res.output and "focal:gamma=0.5" in res.output
    assert not (tmp_path / "run").exists()


def test_sweep_then_resume_skips_finished(tmp_path):
    suite, out = write_suite(tmp_path), tmp_path / "run"
    args = ["sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    runs = read_runs(out)
    assert len(runs) == 6 and runs["run_key"].is_unique and set(runs["status"]) == {"ok"}
    before = (out / "runs.csv").read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "resuming: 6 of 6" in res.output
    assert (out / "runs.csv").read_text() == before  # nothing re-run, nothing duplicated


def blank_row(**given) -> dict:
    """A RunResult's fields, each an empty value of its type, updated with ``given``."""
    empty = {"int": 0, "float": math.nan, "bool": False, "dict[str, float]": {}}
    return {f.name: empty.get(str(f.type), "") for f in fields(RunResult)} | given


def test_partial_trailing_lines_are_repaired(tmp_path):
    store = ResultStore(tmp_path)
    row = blank_row(run_key="a", status="ok", finished_at="1")
    store.append(RunResult(**row), [(1, "test", "accuracy", 0.5)])
    with open(store.runs_path, "a") as f:  # a writer killed mid-line
        f.write("b,mnist,{},ce")
    with open(store.history_path, "a") as f:
        f.write("b,1,te")
    assert list(read_runs(tmp_path)["run_key"]) == ["a"]
    store.append(RunResult(**row | {"run_key": "c"}), [(1, "test", "accuracy", 0.7)])
    assert list(read_runs(tmp_path)["run_key"]) == ["a", "c"]
    assert list(read_history(tmp_path)["run_key"]) == ["a", "c"]
    assert pd.read_csv(store.runs_path).shape[0] == 2  # the file itself parses


def _losscli(*args: str) -> list[str]:
    return [sys.executable, "-m", "losscli", *args]


def test_kill_9_then_resume_completes_exactly_once(tmp_path):
    suite, out = write_suite(tmp_path), tmp_path / "run"
    cmd = _losscli("sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "runs.csv").exists() and len(read_runs(out)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_runs(out))
    assert 2 <= partial <= 6
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    runs = read_runs(out)
    assert len(runs) == 6 and runs["run_key"].is_unique
    raw = pd.read_csv(out / "runs.csv")
    assert raw["run_key"].is_unique  # no duplicate rows on disk either
    hist = read_history(out)
    assert set(hist["run_key"]) == set(runs["run_key"])
    assert not hist.duplicated(["run_key", "step", "split", "metric"]).any()


def _metrics(out: Path) -> dict:
    runs = read_runs(out)
    return {k: json.loads(m) for k, m in zip(runs["run_key"], runs["test_metrics"],
                                             strict=True)}


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this python")
def test_torchrun_two_ranks_match_one_process(tmp_path):
    suite = write_suite(tmp_path)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    subprocess.run(_losscli("sweep", str(suite), "--out", str(single), "--device", "cpu",
                            "--threads", "1", "--vectorise", "never", "--quiet"), check=True,
                   capture_output=True,
                   timeout=600)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    res = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "losscli",
                          "sweep", str(suite), "--out", str(sharded), "--device", "cpu",
                          "--threads", "1", "--vectorise", "never", "--quiet"],
                         capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in sharded.glob("runs*.csv")) == ["runs.rank0.csv",
                                                                 "runs.rank1.csv"]
    assert _metrics(single) == _metrics(sharded)  # same keys, same numbers (same threads)


def test_worker_pool_runs_every_key(tmp_path):
    suite = write_suite(tmp_path)
    single, pooled = tmp_path / "single", tmp_path / "pooled"
    for out, extra in ((single, ["--threads", "1", "--vectorise", "never"]),
                       (pooled, ["--workers", "2"])):
        res = runner.invoke(app, ["sweep", str(suite), "--out", str(out), "--device", "cpu",
                                  "--quiet", *extra])
        assert res.exit_code == 0, res.output
    # two workers on two cores get one thread each: the same numbers as one thread
    assert _metrics(single) == _metrics(pooled)
