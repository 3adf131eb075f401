"""What a person or a program reads: tables at 80 and 160 columns, help text, JSON/CSV,
``show``/``diff``, the not-converged flag, the progress display and the README's job table.

Most tests draw hand-made summaries with rich's ``Console(width=..., record=True)``; one
module-scoped run trains the issue's 80-column example once and the CLI tests read it."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from losscli.cli import app
from losscli.render import Spec, fmt_num, per_seed_view, records, summary_view, verdict_views
from losscli.results import still_improving, summarize, unconverged, with_convergence

ROOT = Path(__file__).parents[1]
runner = CliRunner()
LOSSES = ["ce", "focal:gamma=2", "label_smoothing:epsilon=0.1"]


def draw(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable, crop=False)
    return console.export_text()


def _runs(values: dict[str, list[float]], metric: str = "accuracy", maximize: bool = True
          ) -> pd.DataFrame:
    rows = []
    for loss, xs in values.items():
        for seed, x in enumerate(xs):
            rows.append({
                "run_key": f"{loss}-{seed}", "job": "mnist", "job_options": "{}", "loss": loss,
                "loss_key": loss, "seed": seed, "status": "ok", "primary_metric": metric,
                "maximize": maximize, "test_final": x, "val_final": x - 0.002,
                "val_best": x + 0.001, "phase": "run", "tuned": "",
                "steps_to_target": 1250.0, "curve_auc": x / 2, "final_train_loss": 0.1234,
                "train_seconds": 1234.5, "samples_per_s": 12345.6, "loss_ms_per_step": 0.123,
                "steps": 2000, "eval_every": 250, "optimizer": "adam", "lr": 1e-3,
                "batch_size": 64, "weight_decay": 0.0, "bf16": False, "device": "cpu",
                "threads": 1, "target": 0.95, "data_source": "embedded MNIST 5k subset",
                "versions": "v", "test_metrics": json.dumps(
                    {metric: x, "f1_macro": x - 0.01, "ece": 0.0123, "nll": 0.3456})})
    return pd.DataFrame(rows)


def _view(runs, columns=None, history=None):
    summary = summarize(runs)
    if history is not None:
        summary = with_convergence(summary, runs, history)
    return summary_view(summary, title="mnist: accuracy", metric="accuracy", target=0.95,
                        columns=columns)


# --------------------------------------------------------------------- tables


def test_spec_wraps_only_after_colon_comma_or_plus():
    text = draw(Spec("label_smoothing:epsilon=0.1+0.5*focal:gamma=2,alpha=0.25"), 20)
    assert text.splitlines() == ["label_smoothing:", "epsilon=0.1+", "0.5*focal:gamma=2,",
                                 "alpha=0.25"]


def test_summary_at_80_columns_keeps_primary_columns_whole():
    runs = _runs({loss: [0.9712, 0.9654] for loss in LOSSES})
    text = draw(_view(runs), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for expected in ("0.9683 ± 0.0041", "1,250 (2/2)", "1,234", "label_smoothing:"):
        assert expected in text  # mean ± std, steps to target, cost: all whole
    assert "epsilon=0.1" in text and "label_smoothing:epsi\n" not in text
    assert "samples/s" not in text  # extras only where they fit


def test_summary_at_160_columns_adds_the_other_columns():
    runs = _runs({loss: [0.9712, 0.9654] for loss in LOSSES})
    text = draw(_view(runs), 160)
    assert "label_smoothing:epsilon=0.1" in text  # one line
    for header in ("val", "best val", "AUC", "ece", "f1_macro", "nll", "samples/s"):
        assert header in text
    assert "12,346" in text and "…" not in text


def test_wide_and_columns_choose_the_extras():
    runs = _runs({"ce": [0.97, 0.96]})
    wide = draw(_view(runs, columns=("all",)), 80)
    assert "samples/s" in wide and "…" not in wide  # drawn whole, wider than 80
    chosen = draw(_view(runs, columns=("ece",)), 80)
    assert "ece" in chosen and "AUC" not in chosen and "nll" not in chosen
    assert _view(runs, columns=("ece", "bogus")).unknown_columns() == ["bogus"]


def test_one_seed_shows_a_dash_for_its_spread():
    text = draw(_view(_runs({"ce": [0.9712]})), 80)
    assert "0.9712 ± –" in text and "nan" not in text.lower()
    assert fmt_num(math.nan) == "–"


def test_failed_runs_promote_the_runs_column():
    runs = _runs({"ce": [0.97, 0.96], "focal": [0.95, 0.94]})
    runs.loc[3, "status"] = "diverged"
    text = draw(_view(runs), 80)
    assert "1 diverged" in text


def test_per_seed_view_has_a_row_per_run():
    from losscli.results import per_run

    runs = _runs({"ce": [0.9712, 0.9654], "focal": [0.95, 0.94]})
    rows = per_run(runs)
    assert list(zip(rows["loss"], rows["seed"], strict=True)) == [
        ("ce", 0), ("ce", 1), ("focal", 0), ("focal", 1)]
    text = draw(per_seed_view(rows, title="t", metric="accuracy", target=0.95), 80)
    assert "0.9654" in text and "0.9712" in text and "…" not in text


def test_verdict_tables_fit_80_columns():
    from losscli.check import compare, make_baseline

    base = _runs({loss: [0.97, 0.96, 0.965] for loss in LOSSES})
    worse = base.assign(test_final=base["test_final"] - 0.2)
    text = "".join(draw(v, 80) for v in verdict_views(compare(worse, make_baseline(base)),
                                                       "check"))
    assert "REGRESSION" in text and "-0.2000" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_json_records_hold_numbers_and_lists():
    summary = summarize(_runs({"ce": [0.9712]}))
    rec = records(summary)[0]
    assert rec["final_std"] is None and rec["reached_target"] == 1
    assert rec["seeds"] == [0] and rec["threads"] == [1]
    assert isinstance(rec["final_mean"], float) and isinstance(rec["runs"], int)
    json.dumps(rec)


# --------------------------------------------------------------------- convergence


@pytest.mark.parametrize("values, maximize, expected", [
    ([0.1, 0.5, 0.6, 0.7, 0.8], True, True),  # each of the last 3 evals better
    ([0.1, 0.5, 0.9, 0.9, 0.91], True, False),  # a flat step
    ([0.1, 0.8, 0.9, 0.95, 0.9500001], True, False),  # gains below the threshold
    ([0.9, 0.8, 0.7, 0.6], False, True),  # lower is better, still falling
    ([0.9, 0.8, 0.7, 0.6], True, False),
    ([0.5, 0.6, 0.7], True, False),  # too few evals to say
    ([0.5, 0.6, float("nan"), 0.7, 0.8], True, False),
])
def test_still_improving(values, maximize, expected):
    assert still_improving(values, maximize) is expected


def _history(curves: dict[str, list[float]], split: str = "test") -> pd.DataFrame:
    rows = [(key, 10 * i, split, "accuracy", v) for key, vs in curves.items()
            for i, v in enumerate(vs)]
    rows += [(key, 10, "train", "loss", 1.0) for key in curves]
    return pd.DataFrame(rows, columns=["run_key", "step", "split", "metric", "value"])


def test_not_converged_is_flagged_per_loss_and_noted_under_the_table():
    runs = _runs({"ce": [0.9, 0.9], "focal": [0.9, 0.9]})
    history = _history({"ce-0": [0.1, 0.8, 0.9, 0.9], "ce-1": [0.1, 0.8, 0.9, 0.9],
                        "focal-0": [0.1, 0.7, 0.8, 0.9], "focal-1": [0.1, 0.8, 0.9, 0.9]})
    assert unconverged(runs, history) == {"focal-0"}
    summary = with_convergence(summarize(runs), runs, history)
    assert dict(zip(summary["loss"], summary["converged"], strict=True)) == {
        "ce": True, "focal": False}
    text = draw(_view(runs, history=history), 80)
    assert "not converged: focal" in " ".join(text.split())


def test_validation_curve_wins_over_test_when_recorded():
    runs = _runs({"ce": [0.9]})
    history = pd.concat([_history({"ce-0": [0.1, 0.5, 0.6, 0.7]}, "test"),
                         _history({"ce-0": [0.1, 0.7, 0.7, 0.7]}, "val")])
    assert unconverged(runs, history) == set()


# --------------------------------------------------------------------- help


def _commands(group=None, path=()):
    group = group or get_command(app)
    for name, cmd in getattr(group, "commands", {}).items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=" ".join)
def test_help_reads_well(path):
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    for bad in ("<bool>", "<list[", "{", "}"):
        assert bad not in res.output, (bad, res.output)
    cmd = dict(_commands())[path]
    for param in cmd.params:
        assert param.help, f"{' '.join(path)} {param.name} has no help"


def test_help_details():
    res = runner.invoke(app, ["report", "--help"], env={"COLUMNS": "120"})
    assert "[[finding]]" in res.output
    res = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "100"})
    assert "Usage: root sweep [OPTIONS] SUITE.toml" in " ".join(res.output.split()) or \
        "sweep [OPTIONS] SUITE.toml" in res.output
    # a docstring's hard wraps are joined: the first sentence reads on one line
    assert "Each finished run is appended to the run directory at once, so a sweep killed" \
        in res.output
    train = get_command(app).commands["train"]
    names = {p.name for p in train.params}
    assert {"threads", "per_seed", "wide", "columns"} <= names
    for cmd in ("sweep", "check", "baseline"):
        assert "threads" in {p.name for p in get_command(app).commands[cmd].params}


def test_task_help_lists_every_job():
    from losscli.cli.help import TASKS
    from losscli.jobs import list_jobs

    assert TASKS.split(", ") == [cls.name for cls in list_jobs()]


def test_version_and_completion():
    import losscli

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"losscli {losscli.__version__}"
    res = runner.invoke(app, ["--show-completion"], env={"SHELL": "/bin/bash"})
    assert res.exit_code == 0 and "complete" in res.output and "losscli" in res.output


def test_list_commands_are_compact_by_default():
    res = runner.invoke(app, ["list", "tasks"], env={"COLUMNS": "80"})
    assert res.exit_code == 0 and len(res.output.splitlines()) < 60
    assert "dataset-fashion-mnist" in res.output  # a word whole, never folded
    res = runner.invoke(app, ["list", "tasks", "--details"], env={"COLUMNS": "80"})
    assert "losses that apply" in res.output and "--pixel-noise" in res.output
    res = runner.invoke(app, ["list", "losses"], env={"COLUMNS": "80"})
    assert res.exit_code == 0 and len(res.output.splitlines()) < 200
    assert "reference" not in res.output
    res = runner.invoke(app, ["list", "losses", "--details", "--task", "reg"])
    assert "reference" in res.output and "huber" in res.output


# --------------------------------------------------------------------- the CLI on a real run


@pytest.fixture(scope="module")
def run80(tmp_path_factory):
    """The issue's example at COLUMNS=80, as a user runs it (a subprocess, piped)."""
    out = tmp_path_factory.mktemp("run80") / "run"
    cmd = [sys.executable, "-m", "losscli", "train", "--task", "mnist",
           *[a for loss in LOSSES for a in ("--loss", loss)], "--steps", "50",
           "--out", str(out), "--threads", "1"]
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    return res, out


def test_train_at_80_columns_prints_every_number_readable(run80):
    res, out = run80
    text = res.stdout
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    runs = pd.read_csv(out / "runs.csv")
    for value in runs["test_final"]:
        assert f"{value:.4f} ± –" in text  # one seed each: its value, whole
    for loss in ("ce", "focal:gamma=2", "label_smoothing:"):
        assert loss in text
    assert f"results: {out}" in res.stderr


def test_show_reprints_the_table_and_formats(run80):
    _, out = run80
    table = runner.invoke(app, ["show", str(out)], env={"COLUMNS": "80"})
    assert table.exit_code == 0 and "focal:gamma=2" in table.output
    as_json = json.loads(runner.invoke(app, ["show", str(out), "--format", "json"]).stdout)
    assert {r["loss"] for r in as_json} == set(LOSSES)
    assert all(isinstance(r["final_mean"], float) and r["final_std"] is None
               for r in as_json)
    per_seed = runner.invoke(app, ["show", str(out), "--per-seed", "--format", "csv"]).stdout
    rows = pd.read_csv(pd.io.common.StringIO(per_seed))
    assert len(rows) == 3 and {"seed", "final", "converged", "accuracy"} <= set(rows.columns)
    missing = runner.invoke(app, ["show", str(out / "nope")])
    assert missing.exit_code == 2 and "not a directory" in missing.output


def test_unknown_column_is_a_usage_error_naming_the_valid_ones(run80):
    _, out = run80
    res = runner.invoke(app, ["show", str(out), "--columns", "ece,bogus"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "'bogus'" in text and "valid:" in text
    for name in ("best", "auc", "ece", "nll", "samples_s", "loss_ms", "all"):
        assert name in text.split("valid:")[1]
    near = runner.invoke(app, ["show", str(out), "--columns", "samples"])
    assert near.exit_code == 2 and "did you mean 'samples_s'" in near.output
    assert runner.invoke(app, ["show", str(out), "--columns", "ece,nll"]).exit_code == 0


def test_unknown_column_stops_train_before_it_trains(tmp_path):
    res = runner.invoke(app, ["train", "--task", "mnist", "--steps", "1", "--out",
                              str(tmp_path / "run"), "--columns", "miou", "--threads", "1"])
    assert res.exit_code == 2 and "'miou'" in res.output  # a seg metric, not mnist's
    assert not (tmp_path / "run" / "runs.csv").exists()


def test_a_table_shows_only_its_own_jobs_metrics(tmp_path):
    """Two jobs in one run directory: the reg table has no accuracy/ece column of mnist's."""
    from dataclasses import fields

    from losscli.results import ResultStore, RunResult

    store = ResultStore(tmp_path)
    for job, metrics in {"mnist": {"accuracy": 0.97, "ece": 0.01},
                         "reg": {"rmse": 0.3, "mae": 0.2}}.items():
        row = {f.name: {"int": 0, "float": 0.0, "bool": False}.get(str(f.type), "")
               for f in fields(RunResult)}
        row.update(run_key=job, job=job, job_options="{}", loss="l", loss_key="l",
                   status="ok", primary_metric=next(iter(metrics)), test_final=0.5,
                   maximize=job == "mnist", steps=10, eval_every=5, batch_size=8, lr=1e-3,
                   optimizer="adam", device="cpu", threads=1, phase="run",
                   selected_step=None, steps_to_target=None, trial=None, rung=None,
                   test_metrics=metrics, val_metrics=metrics, finished_at="t")
        store.append(RunResult(**row), [])
    res = runner.invoke(app, ["show", str(tmp_path), "--wide"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    mnist, reg = res.stdout.split("reg: rmse")
    assert "ece" in mnist and "mae" not in mnist
    assert "mae" in reg and "ece" not in reg and "accuracy" not in reg


def test_diff_uses_the_check_rule(run80, tmp_path):
    _, out = run80
    same = runner.invoke(app, ["diff", str(out), str(out)])
    assert same.exit_code == 0, same.output
    assert "all 3 ok" in same.output
    worse = tmp_path / "worse"
    worse.mkdir()
    runs = pd.read_csv(out / "runs.csv")
    runs.loc[runs["loss"] == "ce", "test_final"] -= 0.2
    runs.to_csv(worse / "runs.csv", index=False)
    res = runner.invoke(app, ["diff", str(out), str(worse)], env={"COLUMNS": "80"})
    assert res.exit_code == 1 and "REGRESSION" in res.output
    assert "1 of 3 worse" in res.output


# --------------------------------------------------------------------- progress


def _spec(loss: str, seed: int, steps: int = 10):
    return SimpleNamespace(key=f"{loss}-{seed}", seed=seed, job=SimpleNamespace(name="mnist"),
                           loss=SimpleNamespace(spec=loss), cfg=SimpleNamespace(steps=steps))


def _result(status="ok"):
    return SimpleNamespace(status=status, primary_metric="accuracy", primary_final=0.9,
                           train_seconds=1.0, seeds_together=1)


def test_progress_counts_steps_of_the_runs_left():
    from losscli.cli.running import RunProgress, seed_label

    assert seed_label([0, 1, 2]) == "seeds 0-2" and seed_label([0, 2]) == "seeds 0,2"
    specs = [_spec("ce", 0), _spec("ce", 1), _spec("focal", 0), _spec("focal", 1)]
    with RunProgress(quiet=True) as bars:
        bars.phase("checking the plan")
        bars.plan(specs[1:], total=4)  # one finished already
        assert bars.progress.tasks[-1].total == 30
        bars.start(specs[1:2])
        for step in range(1, 11):
            bars.step(step)
        bars.done(specs[1], _result())
        bars.start(specs[2:])  # stacked: both seeds advance per step
        label = bars.progress.tasks[-1].description
        bars.step(4)
        assert bars.counted == 18 and "seeds 0-1" in label
        bars.done(specs[2], _result("diverged"))  # ended early: counts its 10 steps
        bars.done(specs[3], _result("diverged"))
        assert bars.counted == 30 and bars.left == 0


def test_pool_workers_report_steps_to_the_parent():
    from multiprocessing import Pipe

    from losscli import pool

    parent, child = Pipe()
    spec = _spec("ce", 0, steps=300)
    report = pool._step_messages(child, spec)
    for step in range(1, 301):
        report(step)
    worker = pool._Worker.__new__(pool._Worker)  # its pipe only: no process started
    worker.conn, worker.spec = parent, spec
    worker.proc = SimpleNamespace(is_alive=lambda: True)
    seen = []

    class Recorder:
        def step(self, step, key=None):
            seen.append((key, step))

    assert worker.reply(Recorder()) is None  # still training: its steps were drawn
    assert seen[0] == ("ce-0", 3) and seen[-1] == ("ce-0", 300) and len(seen) == 100
    child.send(("ok", "the row"))
    assert worker.reply(Recorder()) == ("ok", "the row")


# --------------------------------------------------------------------- README


def test_readme_job_table_budgets_match_the_task_files():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The jobs")[1].split("\n\n")[1]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    assert len(rows) >= 7
    for row in rows:
        task = re.match(r"\| `(\w+)`", row).group(1)
        budget = row.rstrip(" |").rsplit("|", 1)[1]
        toml = tomllib.loads((ROOT / "tasks" / f"{task}.toml").read_text())["budget"]
        number, unit = re.search(r"(\d+) (epochs|steps)", budget).groups()
        assert int(number) == toml[unit], f"README says {task}: {budget.strip()}"
        if batch := re.search(r"batch (\d+)", budget):
            assert int(batch.group(1)) == toml["batch_size"], f"README: {task} {budget}"
        if lr := re.search(r"(Adam|SGD|AdamW) ([\d.e-]+)", budget):
            assert lr.group(1).lower() == toml["optimizer"] and float(lr.group(2)) == toml["lr"]


def test_readme_documents_the_cache():
    readme = (ROOT / "README.md").read_text()
    assert "LOSSCLI_CACHE" in readme and "~/.cache/losscli" in readme
