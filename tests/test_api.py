"""The Python API: ``losscli.compare`` and ``losscli.load_runs``, and the README's example
(``docs/examples/compare.py``) run as written."""

from __future__ import annotations

import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

import losscli
from losscli.errors import UsageError

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "compare.py"
PLUGIN = Path(__file__).parents[1] / "docs" / "examples" / "my_job.py"


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "loss", "final_mean", "final_std", "mae_mean",
                                "r2_mean"]
    ranked = [line.split()[1] for line in lines[1:4]]
    assert sorted(ranked) == ["huber", "l1", "mse"] and ranked[-1] == "mse"  # outliers hurt mse
    assert lines[4].split() == ["seed", "0", "1"]
    assert any(line.split()[:2] == ["train", "loss"] for line in lines)
    assert (tmp_path / "runs" / "reg-api" / "runs.csv").is_file()


def test_import_losscli_does_not_import_torch():
    code = "import sys, losscli; losscli.compare, losscli.load_runs; " \
           "assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compare_matches_the_store_and_a_temporary_directory_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    summary = losscli.compare("regression", "l1", seeds=[3, 5], steps=20,
                              options={"n_train": 128, "n_val": 32, "n_test": 64})
    assert list(tmp_path.iterdir()) == []  # out=None: removed
    row = summary.iloc[0]
    assert row["job"] == "reg" and row["loss"] == "l1" and row["seeds"] == "3,5"
    assert row["ok"] == 2 and 0 < row["final_mean"] < 10

    out = tmp_path / "kept"
    again = losscli.compare("reg", ["l1"], seeds=[3, 5], steps=20, out=out,
                            options={"n_train": 128, "n_val": 32, "n_test": 64})
    pd.testing.assert_frame_equal(summary.drop(columns=["train_seconds", "samples_per_s",
                                                        "loss_ms_per_step"]),
                                  again.drop(columns=["train_seconds", "samples_per_s",
                                                      "loss_ms_per_step"]))
    runs, history = losscli.load_runs(out)
    assert len(runs) == 2 and set(history["run_key"]) == set(runs["run_key"])
    assert runs["test_final"].mean() == pytest.approx(row["final_mean"])


def test_compare_settings_tune_and_plugins(tmp_path):
    summary = losscli.compare("my_job", ["ce"], steps=30, batch_size=32, lr=3e-3,
                              plugins=[str(PLUGIN)], tune="lr=[1e-3,1e-2]",
                              options={"n_train": 256}, out=tmp_path / "t")
    assert summary["job"].tolist() == ["my_job"] and "lr" in summary["tuned"].iloc[0]
    runs, _ = losscli.load_runs(tmp_path / "t")
    assert {"tune", "final"} <= set(runs["phase"]) and (runs["batch_size"] == 32).all()


@pytest.mark.parametrize("call, message", [
    (lambda: losscli.compare("regresion", "l1"), "unknown task 'regresion'"),
    (lambda: losscli.compare("reg", "dice"), "dice"),
    (lambda: losscli.compare("reg", "l1", seeds=0), "seeds must be a count"),
    (lambda: losscli.compare("reg", "l1", learning_rate=1), "unknown setting learning_rate"),
    (lambda: losscli.compare("reg", "l1", steps=0), "steps must be"),
    (lambda: losscli.compare("reg", "l1", options={"outlier": 0.1}), "did you mean 'outliers'"),
    (lambda: losscli.load_runs("/nonexistent/run"), "does not exist"),
])
def test_api_errors_are_usage_errors(call, message):
    with pytest.raises(UsageError, match=message):
        call()
