"""Hostile inputs to every command, and faults while runs train.

The corpus: each case is a command line plus the files it creates (in a scratch working
directory holding a small finished run directory ``run/`` and its baseline ``base.csv``),
the exit code it must end with, and what the message must mention (the culprit: the file,
key, flag or value, and the rule). A case is *clean* when the exit code is the expected
one, no exception escaped (no "Traceback", nothing but ``SystemExit`` from the runner),
and every mention is in the output. Together with ``test_hostile_inputs.py`` (readers,
loss specs, plugins) this is the corpus the README's reliability section counts.

The fault tests below it: SIGINT/SIGTERM, two sweeps on one run directory, a killed pool
worker, workers dying with their parent, a full disk, and kill -9 twenty times in a row.
"""

from __future__ import annotations

import csv
import errno
import io
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from losscli import results
from losscli.cli import app
from losscli.results import ResultStore, read_history, read_runs

runner = CliRunner()

DIR, LOOP, REMOVE = "<dir>", "<loop>", "<remove>"  # file contents that are not contents
Content = str | bytes | Callable[[Path], None]


@dataclass
class Case:
    id: str
    args: list[str]
    exit: int
    mentions: tuple[str, ...]
    files: dict[str, Content] = field(default_factory=dict)


# --------------------------------------------------------------------------- file helpers


def _set_cell(row: int, column: str, value: str) -> Callable[[Path], None]:
    """Rewrite one cell of a CSV (row counted from 1 after the header)."""
    def mutate(path: Path) -> None:
        rows = list(csv.reader(io.StringIO(path.read_text())))
        rows[row][rows[0].index(column)] = value
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        path.write_text(buf.getvalue())
    return mutate


def _drop_column(column: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        df.drop(columns=[column]).to_csv(path, index=False)
    return mutate


def _keep_lines(n: int) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    return mutate


def _append(text: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with open(path, "a") as f:
            f.write(text)
    return mutate


def _cut(fraction: float) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return mutate


def _make(root: Path, files: dict[str, Content]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif content == DIR:
            if path.is_file():
                path.unlink()
            path.mkdir(exist_ok=True)
        elif content == LOOP:
            path.unlink(missing_ok=True)
            path.symlink_to(path.name)
        elif content == REMOVE:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


# --------------------------------------------------------------------------- the corpus

BUDGET = ["--steps", "4", "--eval-every", "2", "--batch-size", "32", "--device", "cpu",
          "--quiet"]
DEFAULTS = {"--out": "out", "--steps": "4", "--eval-every": "2", "--batch-size": "32",
            "--device": "cpu"}
BASE_SUITE = ('name = "h"\n[defaults]\nsteps = 4\neval_every = 2\nbatch_size = 32\n'
              '[[job]]\ntask = "reg"\nlosses = ["mse"]\n')


def train(id: str, args: list[str], mentions: tuple[str, ...] | str, exit: int = 2,
          files: dict[str, Content] | None = None) -> Case:
    mentions = (mentions,) if isinstance(mentions, str) else mentions
    given = {a.split("=")[0] for a in args}
    defaults = [x for flag, value in DEFAULTS.items() if flag not in given for x in (flag, value)]
    return Case(f"train-{id}", ["train", *args, *defaults, "--quiet"], exit, mentions,
                files or {})


def reg(id: str, args: list[str], mentions, exit: int = 2, files=None) -> Case:
    return train(id, ["--task", "reg", *args], mentions, exit, files)


TRAIN = [
    train("unknown-loss", ["--loss", "nope"], "unknown loss 'nope'"),
    train("close-loss", ["--loss", "foca"], "did you mean 'focal'"),
    train("empty-loss", ["--loss", ""], "empty loss spec"),
    train("blank-loss", ["--loss", "   "], "empty loss spec"),
    train("loss-newline", ["--loss", "ce\n"], "control character"),
    train("loss-trailing-plus", ["--loss", "ce+"], "empty term"),
    train("loss-dangling-weight", ["--loss", "0.5*"], "missing loss name"),
    train("loss-param-twice", ["--loss", "focal:gamma=1,gamma=2"], "'gamma' given twice"),
    train("loss-param-inf", ["--loss", "focal:gamma=inf"], ("gamma", "finite")),
    train("loss-param-nan", ["--loss", "focal:gamma=nan"], ("gamma", "finite")),
    train("loss-param-1e400", ["--loss", "focal:gamma=1e400"], ("gamma", "finite")),
    train("loss-param-huge-int", ["--loss", "focal:gamma=" + "9" * 30], "gamma"),
    train("loss-param-negative", ["--loss", "focal:gamma=-1"], "gamma must be >= 0"),
    train("loss-unknown-param", ["--loss", "focal:gama=1"], "'gamma'"),
    train("loss-deep-nesting", ["--loss", "focal:gamma=" + "[" * 5000], "gamma"),
    train("loss-too-long", ["--loss", "ce+" * 400 + "ce"], "at most 1000"),
    train("loss-wrong-job", ["--loss", "mse"], "losses that apply to mnist"),
    train("loss-same-run-twice", ["--loss", "focal:gamma=2", "--loss", "focal:gamma=2.0"],
          ("same run", "focal:gamma=2")),
    train("unknown-task", ["--task", "mnsit"], "did you mean 'mnist'"),
    train("empty-task", ["--task", ""], "unknown"),
    train("steps-zero", ["--steps", "0"], "--steps"),
    train("steps-negative", ["--steps", "-5"], "--steps"),
    train("steps-text", ["--steps", "abc"], "--steps"),
    train("steps-float", ["--steps", "1e3"], "--steps"),
    train("epochs-zero", ["--epochs", "0"], "--epochs"),
    train("epochs-nan", ["--epochs", "nan"], "epochs"),
    train("epochs-inf", ["--epochs", "inf"], "epochs"),
    train("lr-nan", ["--lr", "nan"], "--lr"),
    train("lr-inf", ["--lr", "inf"], ("lr", "finite")),
    train("lr-1e400", ["--lr", "1e400"], ("lr", "finite")),
    train("lr-negative", ["--lr", "-1"], "--lr"),
    train("batch-zero", ["--batch-size", "0"], "--batch-size"),
    train("batch-negative", ["--batch-size", "-4"], "--batch-size"),
    train("batch-larger-than-data", ["--batch-size", "100000000"], "batch size 100000000"),
    train("optimizer-empty", ["--optimizer", ""], "optimizer must be one of"),
    train("optimizer-unknown", ["--optimizer", "lbfgs"], "optimizer must be one of"),
    train("weight-decay-nan", ["--weight-decay", "nan"], "--weight-decay"),
    train("weight-decay-negative", ["--weight-decay", "-1"], "--weight-decay"),
    train("eval-every-zero", ["--eval-every", "0"], "--eval-every"),
    train("eval-every-negative", ["--eval-every", "-3"], "--eval-every"),
    train("seeds-zero", ["--seeds", "0"], "--seeds"),
    train("seeds-ten-million", ["--seeds", "10000000"], "--seeds"),
    train("first-seed-negative", ["--first-seed", "-1"], "--first-seed"),
    train("device-unknown", ["--device", "tpu"], "--device"),
    train("bf16-on-cpu", ["--bf16"], "--bf16 needs --device cuda"),
    train("vectorise-unknown", ["--vectorise", "sometimes"], "--vectorise"),
    train("format-unknown", ["--format", "xml"], "--format"),
    train("opt-without-equals", ["--opt", "outliers"], "--opt takes NAME=VALUE"),
    train("opt-without-name", ["--opt", "=1"], "--opt takes NAME=VALUE"),
    train("opt-unknown", ["--opt", "bogus=1"], "unknown option 'bogus'"),
    train("unknown-flag", ["--colour", "red"], "unknown option '--colour'"),
    reg("option-text", ["--outliers", "abc"], ("--outliers", "a number in [0, 0.9]")),
    reg("option-nan", ["--outliers", "nan"], "--outliers"),
    reg("option-out-of-range", ["--outliers", "2"], "--outliers"),
    reg("option-choice", ["--noise", "cauchy"], ("--noise", "one of")),
    reg("option-int-float", ["--features", "2.5"], "--features"),
    reg("option-needs-value", ["--features"], "--features"),
    reg("csv-missing", ["--csv", "nope.csv", "--target", "y"], "nope.csv"),
    reg("csv-directory", ["--csv", "d", "--target", "y"], "d", files={"d": DIR}),
    reg("csv-binary", ["--csv", "b.csv", "--target", "y"], "b.csv",
        files={"b.csv": b"\x00\xff\xfe" * 100}),
    reg("csv-empty", ["--csv", "e.csv", "--target", "y"], "e.csv", files={"e.csv": ""}),
    reg("csv-header-only", ["--csv", "h.csv", "--target", "y"], "h.csv",
        files={"h.csv": "a,b,y\n"}),
    reg("csv-no-target", ["--csv", "t.csv", "--target", "z"], "--target 'z'",
        files={"t.csv": "a,y\n" + "1,2\n" * 20}),
    reg("csv-text-target", ["--csv", "t.csv", "--target", "y"], "not numeric",
        files={"t.csv": "a,y\n" + "1,x\n" * 20}),
    reg("csv-inf-cells", ["--csv", "t.csv", "--target", "y"], ("t.csv", "infinite"),
        files={"t.csv": "a,y\n" + "".join(f"{i},{i}\n" for i in range(200)) + "inf,1\n"}),
    reg("csv-few-rows", ["--csv", "t.csv", "--target", "y"], "complete rows",
        files={"t.csv": "a,y\n1,2\n3,4\n"}),
    train("data-dir-missing", ["--data-dir", "nowhere"], "nowhere"),
    train("data-dir-file", ["--data-dir", "f"], "f", files={"f": "x"}),
    train("data-dir-corrupt-idx", ["--data-dir", "m"], "train-images-idx3-ubyte", files={
        "m/MNIST/raw/train-images-idx3-ubyte": b"\x00\x00\x08\x03garbage",
        "m/MNIST/raw/train-labels-idx1-ubyte": b"\x00\x00\x08\x01garbage",
        "m/MNIST/raw/t10k-images-idx3-ubyte": b"\x00\x00\x08\x03garbage",
        "m/MNIST/raw/t10k-labels-idx1-ubyte": b"\x00\x00\x08\x01garbage"}),
    train("plugin-missing", ["--plugin", "nope.py", "--loss", "ce"], "nope"),
    train("plugin-syntax-error", ["--plugin", "p.py", "--loss", "ce"], ("p.py", "line 1"),
          files={"p.py": "def (:\n"}),
    train("plugin-raises", ["--plugin", "p.py", "--loss", "ce"], ("p.py", "boom"),
          files={"p.py": "raise RuntimeError('boom')\n"}),
    train("plugin-sys-exit", ["--plugin", "p.py", "--loss", "ce"], ("p.py", "exit"),
          files={"p.py": "import sys\nsys.exit(3)\n"}),
    train("plugin-directory", ["--plugin", "pd.py", "--loss", "ce"], "pd.py",
          files={"pd.py": DIR}),
    train("plugin-binary", ["--plugin", "p.py", "--loss", "ce"], "p.py",
          files={"p.py": b"\x00\x01\x02"}),
    train("out-under-a-file", ["--loss", "ce", "--out", "blocker/run"], "cannot write results",
          exit=1, files={"blocker": "a file"}),
    train("out-is-a-file", ["--loss", "ce", "--out", "blocker"], "cannot write results",
          exit=1, files={"blocker": "a file"}),
]


def sweep(id: str, text: str | bytes, mentions, exit: int = 2, dry: bool = True,
          extra: tuple[str, ...] = (), files: dict[str, Content] | None = None) -> Case:
    mentions = (mentions,) if isinstance(mentions, str) else mentions
    args = ["sweep", "s.toml", *(["--dry-run"] if dry else []), "--device", "cpu", "--quiet",
            *extra]
    return Case(f"sweep-{id}", args, exit, mentions, {"s.toml": text, **(files or {})})


def job(body: str) -> str:
    """The base suite with ``body`` added to its [[job]]."""
    return BASE_SUITE + body + "\n"


SWEEP = [
    Case("sweep-missing", ["sweep", "nope.toml"], 2, ("suite file not found", "nope.toml")),
    Case("sweep-directory", ["sweep", "d.toml"], 2, ("d.toml", "is a directory"),
         {"d.toml": DIR}),
    Case("sweep-symlink-loop", ["sweep", "l.toml"], 2, ("l.toml", "symlink loop"),
         {"l.toml": LOOP}),
    Case("sweep-dev-null", ["sweep", "/dev/null"], 2, ("/dev/null", "not a regular file")),
    sweep("binary", b"\x00\x01\x02\xff" * 64, ("s.toml", "binary")),
    sweep("latin-1", 'name = "caf\xe9"\n'.encode("latin-1"), ("s.toml", "not UTF-8")),
    sweep("too-large", "# " + "x" * (1 << 20) + "\n", ("s.toml", "bytes")),
    sweep("empty", "", ("s.toml", "no [[job]] entries")),
    sweep("invalid-toml", "name = \n", ("s.toml", "invalid TOML")),
    sweep("deep-toml", "a = " + "[" * 5000 + "]" * 5000 + "\n", ("s.toml", "nested")),
    sweep("task-file", "[budget]\nsteps = 3\n", ("s.toml", "task file")),
    sweep("unknown-key", "colour = 1\n" + BASE_SUITE, "unknown key 'colour'"),
    sweep("job-string", 'job = "x"\n', ("job must be an array of tables", "'x'")),
    sweep("job-number", "job = 5\n", "job must be an array of tables"),
    sweep("job-empty-array", "job = []\n", "no [[job]] entries"),
    sweep("job-array-of-numbers", "job = [1, 2]\n", ("job 1 must be a table",
                                                     "job 2 must be a table")),
    sweep("defaults-number", 'defaults = 3\n[[job]]\ntask = "reg"\n', "defaults must be a table"),
    sweep("defaults-array", 'defaults = [1]\n[[job]]\ntask = "reg"\n',
          "defaults must be a table"),
    sweep("defaults-unknown-key", '[defaults]\nlosses = ["ce"]\n[[job]]\ntask = "reg"\n',
          ("[defaults]", "unknown key 'losses'")),
    sweep("name-number", 'name = 5\n[[job]]\ntask = "reg"\n', "name must be text"),
    sweep("name-escapes", 'name = "../../../../tmp/x"\n[[job]]\ntask = "reg"\n',
          ("'../../../../tmp/x'", "not a path"), dry=False),
    sweep("name-absolute", 'name = "/tmp/x"\n[[job]]\ntask = "reg"\n', ("'/tmp/x'", "not a path"),
          dry=False),
    sweep("name-separator", 'name = "a/b"\n[[job]]\ntask = "reg"\n', ("'a/b'", "not a path")),
    sweep("name-backslash", 'name = "a\\\\b"\n[[job]]\ntask = "reg"\n', "not a path"),
    sweep("name-dotdot", 'name = ".."\n[[job]]\ntask = "reg"\n', ("'..'", "not a path")),
    sweep("name-hidden", 'name = ".x"\n[[job]]\ntask = "reg"\n', ("'.x'", "not a path")),
    sweep("name-empty", 'name = ""\n[[job]]\ntask = "reg"\n', ("name ''", "not a path")),
    sweep("name-newline", 'name = "a\\nb"\n[[job]]\ntask = "reg"\n', "not a path"),
    sweep("name-too-long", f'name = "{"n" * 300}"\n[[job]]\ntask = "reg"\n', "not a path"),
    sweep("description-number", "description = 3\n" + BASE_SUITE, "description must be text"),
    sweep("seeds-zero", "seeds = 0\n" + BASE_SUITE, "seeds must be a count"),
    sweep("seeds-negative", "seeds = -1\n" + BASE_SUITE, "seeds must be a count"),
    sweep("seeds-ten-million", "seeds = 10000000\n" + BASE_SUITE, ("seeds", "1..1000")),
    sweep("seeds-duplicates", "seeds = [0, 0, 0]\n" + BASE_SUITE, ("seeds lists 0",
                                                                  "more than once")),
    sweep("seeds-empty-list", "seeds = []\n" + BASE_SUITE, "seeds must be a count"),
    sweep("seeds-negative-list", "seeds = [-1]\n" + BASE_SUITE, "seeds must be a count"),
    sweep("seeds-float", "seeds = [1.5]\n" + BASE_SUITE, "seeds must be a count"),
    sweep("seeds-text", 'seeds = "3"\n' + BASE_SUITE, "seeds must be a count"),
    sweep("seeds-bool", "seeds = true\n" + BASE_SUITE, "seeds must be a count"),
    sweep("seeds-huge", "seeds = [4294967296]\n" + BASE_SUITE, "seeds must be a count"),
    sweep("job-seeds-duplicates", job("seeds = [3, 1, 3]"), ("job 1 (reg)", "seeds lists 3")),
    sweep("job-unknown-key", job("epochz = 3"), ("job 1 (reg)", "unknown key 'epochz'")),
    sweep("job-task-missing", "[[job]]\nlosses = ['ce']\n", ("job 1", "missing task")),
    sweep("job-task-number", "[[job]]\ntask = 3\n", "task must be a job name"),
    sweep("job-task-empty", '[[job]]\ntask = ""\n', "task must be a job name"),
    sweep("job-task-unknown", '[[job]]\ntask = "mnsit"\n', "did you mean 'mnist'"),
    sweep("job-losses-text", '[[job]]\ntask = "reg"\nlosses = "mse"\n', "losses must be an array"),
    sweep("job-losses-numbers", '[[job]]\ntask = "reg"\nlosses = [1]\n', "non-empty texts"),
    sweep("job-losses-empty-text", '[[job]]\ntask = "reg"\nlosses = [""]\n', "non-empty texts"),
    sweep("job-loss-unknown", '[[job]]\ntask = "reg"\nlosses = ["nope"]\n',
          ("job 1 (reg)", "unknown loss 'nope'")),
    sweep("job-loss-wrong-job", '[[job]]\ntask = "mnist"\nlosses = ["mse"]\n',
          ("job 1 (mnist)", "losses that apply to mnist")),
    sweep("steps-zero", job("steps = 0"), "steps must be an integer >= 1, got 0"),
    sweep("steps-negative", job("steps = -5"), "steps must be an integer >= 1, got -5"),
    sweep("steps-float", job("steps = 1.5"), "steps must be an integer >= 1"),
    sweep("steps-text", job('steps = "10"'), "steps must be an integer >= 1"),
    sweep("eval-every-negative", job("eval_every = -3"), "eval_every must be an integer >= 1"),
    sweep("eval-every-zero", job("eval_every = 0"), "eval_every must be an integer >= 1"),
    sweep("lr-nan", job("lr = nan"), "lr must be a finite number"),
    sweep("lr-inf", job("lr = inf"), "lr must be a finite number"),
    sweep("lr-negative", job("lr = -0.1"), "lr must be a finite number >= 0"),
    sweep("lr-text", job('lr = "0.1"'), "lr must be a finite number"),
    sweep("batch-negative", job("batch_size = -1"), "batch_size must be an integer >= 1"),
    sweep("batch-zero", job("batch_size = 0"), "batch_size must be an integer >= 1"),
    sweep("batch-too-large", job("batch_size = 100000000"), "batch size 100000000"),
    sweep("epochs-zero", '[[job]]\ntask = "reg"\nepochs = 0\n', "epochs must be a number > 0"),
    sweep("epochs-nan", '[[job]]\ntask = "reg"\nepochs = nan\n', "epochs must be a number > 0"),
    sweep("optimizer-empty", job('optimizer = ""'), "optimizer must be one of"),
    sweep("optimizer-unknown", job('optimizer = "lbfgs"'), "optimizer must be one of"),
    sweep("optimizer-number", job("optimizer = 3"), "optimizer must be one of"),
    sweep("weight-decay-negative", job("weight_decay = -1"), "weight_decay must be"),
    sweep("defaults-steps-zero", "[defaults]\nsteps = 0\n[[job]]\ntask = \"reg\"\n",
          ("[defaults]", "steps must be an integer >= 1")),
    sweep("options-text", job('options = "x"'), "options must be a table"),
    sweep("options-array-value", job("options = { outliers = [1] }"), "options.outliers"),
    sweep("options-unknown", job("options = { bogus = 1 }"), "unknown option 'bogus'"),
    sweep("options-bad-value", job("options = { outliers = 2.0 }"), "--outliers"),
    sweep("options-nan", job("options = { outliers = nan }"), "options.outliers"),
    sweep("grid-million", job("[[job.grid]]\nloss = \"huber\"\n" + "".join(
        f"{c} = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" for c in "abcdef")),
        ("'huber'", "1,000,000 combinations")),
    sweep("grid-no-loss", job("[[job.grid]]\ndelta = [1, 2]"), 'a grid needs loss'),
    sweep("grid-loss-number", job("[[job.grid]]\nloss = 3"), "a loss name"),
    sweep("grid-empty-values", job('[[job.grid]]\nloss = "huber"\ndelta = []'),
          ("'huber'", "delta")),
    sweep("grid-table-value", job('[[job.grid]]\nloss = "huber"\ndelta = { a = 1 }'),
          ("'huber'", "delta")),
    sweep("grid-nan-value", job('[[job.grid]]\nloss = "huber"\ndelta = [nan]'),
          ("'huber'", "delta")),
    sweep("grid-text", job('grid = "x"'), "grid must be an array of tables"),
    sweep("grid-numbers", job("grid = [1]"), "grid 1 must be a table"),
    sweep("grid-bad-param", job('[[job.grid]]\nloss = "huber"\ndelat = [1, 2]'), "'delta'"),
    sweep("duplicate-jobs", BASE_SUITE + '[[job]]\ntask = "reg"\nlosses = ["mse"]\n',
          ("duplicate runs", "job 2 (reg): mse seed 0 is the same run as", "job 1 (reg)")),
    sweep("duplicate-spellings", '[[job]]\ntask = "reg"\nlosses = ["huber:delta=1", '
          '"huber:delta=1.0"]\n', ("huber:delta=1.0 seed 0 is the same run as",
                                   "huber:delta=1 seed 0")),
    sweep("too-many-runs", "seeds = 1000\n" + job('[[job.grid]]\nloss = "huber"\ndelta = ['
                                                  + ", ".join(str(i) for i in range(1, 12))
                                                  + "]"), ("12,000 runs", "at most")),
    sweep("finding-missing-keys", job('[[finding]]\nid = "a"'), ("finding 1", "missing key")),
    sweep("finding-number-id", job("[[finding]]\nid = 1\ntitle = 't'\ntask = 'reg'\n"
                                   "metric = 'rmse'\nbetter = ['l1']\nthan = 'mse'"),
          "id must be text"),
    sweep("finding-unknown-metric", job("[[finding]]\nid = 'a'\ntitle = 't'\ntask = 'reg'\n"
                                        "metric = 'accuracy'\nbetter = ['l1']\nthan = 'mse'"),
          ("finding 1", "'accuracy'", "rmse")),
    sweep("finding-unknown-task", job("[[finding]]\nid = 'a'\ntitle = 't'\ntask = 'rgе'\n"
                                      "metric = 'rmse'\nbetter = ['l1']\nthan = 'mse'"),
          ("finding 1", "unknown")),
    sweep("finding-maximize-contradicts", job(
        "[[finding]]\nid = 'a'\ntitle = 't'\ntask = 'reg'\nmetric = 'rmse'\n"
        "better = ['l1']\nthan = 'mse'\nmaximize = true"), "contradicts"),
    sweep("finding-better-text", job("[[finding]]\nid = 'a'\ntitle = 't'\ntask = 'reg'\n"
                                     "metric = 'rmse'\nbetter = 'l1'\nthan = 'mse'"),
          "better must be an array"),
    sweep("finding-steps-zero", job("[[finding]]\nid = 'a'\ntitle = 't'\ntask = 'reg'\n"
                                    "metric = 'rmse'\nbetter = ['l1']\nthan = 'mse'\nsteps = 0"),
          "steps must be an integer >= 1"),
    sweep("finding-unknown-key", job("[[finding]]\nid = 'a'\ntitle = 't'\ntask = 'reg'\n"
                                     "metric = 'rmse'\nbetter = ['l1']\nthan = 'mse'\nx = 1"),
          "unknown key 'x'"),
    sweep("finding-table", "finding = 3\n" + BASE_SUITE, "finding must be an array of tables"),
    sweep("workers-zero", BASE_SUITE, "--workers", extra=("--workers", "0")),
    sweep("threads-zero", BASE_SUITE, "--threads", extra=("--threads", "0")),
    sweep("out-under-a-file", BASE_SUITE, "cannot write results", exit=1, dry=False,
          extra=("--out", "blocker/run"), files={"blocker": "a file"}),
    sweep("out-damaged-runs", BASE_SUITE, ("runs.csv", "row 1"), dry=False,
          extra=("--out", "d"), files={"d/runs.csv": "run_key,status\nx\n"}),
    sweep("out-binary-runs", BASE_SUITE, ("runs.csv", "binary"), dry=False,
          extra=("--out", "d"), files={"d/runs.csv": b"\x00\x01"}),
]

RUNS, HIST, META = "run/runs.csv", "run/history.csv", "run/meta.json"


def check(id: str, files: dict[str, Content], mentions, exit: int = 2,
          args: tuple[str, ...] = ("run",), extra: tuple[str, ...] = ()) -> Case:
    mentions = (mentions,) if isinstance(mentions, str) else mentions
    return Case(f"check-{id}", ["check", *args, "--baseline", "base.csv", "--quiet", *extra],
                exit, mentions, files)


# Malformed run directories: each is tried on check, baseline and report
BAD_RUN_DIRS = [
    ("header-only", {RUNS: _keep_lines(1)}, "holds no runs"),
    ("empty-runs", {RUNS: ""}, "holds no runs"),
    ("no-runs-file", {RUNS: REMOVE}, "holds no runs"),
    ("truncated-header", {RUNS: _cut(0.01)}, "holds no runs"),
    ("garbage-line", {RUNS: _append("hello world\n")}, ("runs.csv", "row 5", "1 cells")),
    ("too-many-cells", {RUNS: _append(",".join("x" * 60) + "\n")}, ("runs.csv", "row 5")),
    ("binary", {RUNS: b"\x00\x01\x02" * 50}, ("runs.csv", "binary")),
    ("not-utf8", {RUNS: "run_key\ncaf\xe9\n".encode("latin-1")}, ("runs.csv", "UTF-8")),
    ("seed-text", {RUNS: _set_cell(2, "seed", "two")}, ("runs.csv", "row 2", "seed", "'two'")),
    ("seed-float", {RUNS: _set_cell(1, "seed", "1.5")}, ("runs.csv", "seed", "integer")),
    ("seconds-text", {RUNS: _set_cell(1, "train_seconds", "fast")},
     ("runs.csv", "train_seconds", "'fast'")),
    ("bool-text", {RUNS: _set_cell(1, "maximize", "maybe")}, ("runs.csv", "maximize")),
    ("status-unknown", {RUNS: _set_cell(1, "status", "great")}, ("status", "'great'")),
    ("run-key-empty", {RUNS: _set_cell(1, "run_key", "")}, ("run key",)),
    ("dropped-column", {RUNS: _drop_column("seed")}, ("runs.csv", "lacks the columns seed")),
    ("dropped-status", {RUNS: _drop_column("status")}, ("runs.csv", "lacks the columns status")),
    ("unclosed-quote", {RUNS: _append('"abc,def\n')}, ("runs.csv", "does not parse")),
    ("repeated-header", {RUNS: lambda p: p.write_text("a,a\n1,2\n")},
     ("runs.csv", "repeated column")),
    ("runs-directory", {RUNS: DIR}, ("runs.csv", "is a directory")),
    ("runs-symlink-loop", {RUNS: LOOP}, ("runs.csv", "symlink loop")),
    ("shard-garbage", {"run/runs.rank1.csv": "x\n1\n"}, ("runs.rank1.csv", "lacks the columns")),
]

CHECK = [
    Case("check-no-arguments", ["check", "--baseline", "base.csv"], 2, ("RUN_DIR or --suite",)),
    Case("check-both", ["check", "run", "--suite", "s.toml", "--baseline", "base.csv"], 2,
         ("RUN_DIR or --suite",)),
    check("run-dir-missing", {}, ("nowhere", "does not exist"), args=("nowhere",)),
    check("run-dir-file", {"f": "x"}, ("run directory f", "is a file"), args=("f",)),
    check("run-dir-empty", {"e": DIR}, ("e holds no runs",), args=("e",)),
    *[check(i, f, m) for i, f, m in BAD_RUN_DIRS],
    check("baseline-missing", {"base.csv": REMOVE}, ("baseline file not found", "base.csv")),
    check("baseline-directory", {"base.csv": DIR}, ("base.csv", "is a directory")),
    check("baseline-binary", {"base.csv": b"\x89PNG\x00\x00"}, ("base.csv", "binary")),
    check("baseline-empty-file", {"base.csv": ""}, ("base.csv", "has no rows")),
    check("baseline-header-only", {"base.csv": _keep_lines(1)}, ("base.csv", "has no rows")),
    check("baseline-nan-mean", {"base.csv": _set_cell(1, "mean", "nan")},
          ("base.csv", "row 1", "no finite mean")),
    check("baseline-empty-mean", {"base.csv": _set_cell(2, "mean", "")},
          ("base.csv", "row 2", "no finite mean")),
    check("baseline-inf-mean", {"base.csv": _set_cell(1, "mean", "inf")},
          ("base.csv", "row 1", "no finite mean")),
    check("baseline-text-mean", {"base.csv": _set_cell(1, "mean", "high")},
          ("base.csv", "mean", "'high'")),
    check("baseline-text-seeds", {"base.csv": _set_cell(1, "seeds", "some")},
          ("base.csv", "seeds")),
    check("baseline-bool", {"base.csv": _set_cell(1, "maximize", "perhaps")},
          ("base.csv", "maximize")),
    check("baseline-dropped-column", {"base.csv": _drop_column("mean")},
          ("base.csv", "lacks the columns mean")),
    check("baseline-garbage-line", {"base.csv": _append("garbage\n")}, ("base.csv", "row 3")),
    check("baseline-symlink-loop", {"base.csv": LOOP}, ("base.csv", "symlink loop")),
    check("junit-directory", {"j": DIR}, ("cannot write results to j",), exit=1,
          extra=("--junit", "j")),
    check("junit-under-a-file", {"blocker": "x"}, ("cannot write results to blocker/j.xml",),
          exit=1, extra=("--junit", "blocker/j.xml")),
    Case("check-suite-broken", ["check", "--suite", "s.toml", "--baseline", "base.csv"], 2,
         ("s.toml", "job must be an array"), {"s.toml": "job = 1\n"}),
    Case("check-suite-missing", ["check", "--suite", "nope.toml", "--baseline", "base.csv"], 2,
         ("suite file not found",)),
    Case("check-suite-out-under-file", ["check", "--suite", "s.toml", "--baseline", "base.csv",
                                        "--out", "blocker/x", "--quiet"], 1,
         ("cannot write results",), {"s.toml": BASE_SUITE, "blocker": "x"}),
]

BASELINE = [
    Case("baseline-no-arguments", ["baseline"], 2, ("RUN_DIR or --suite",)),
    Case("baseline-run-dir-missing", ["baseline", "nowhere", "--out", "b.csv"], 2,
         ("nowhere", "does not exist")),
    *[Case(f"baseline-{i}", ["baseline", "run", "--out", "b.csv"], 2,
           (m,) if isinstance(m, str) else m, f) for i, f, m in BAD_RUN_DIRS],
    Case("baseline-out-directory", ["baseline", "run", "--out", "d"], 1,
         ("cannot write results to d",), {"d": DIR}),
    Case("baseline-out-under-file", ["baseline", "run", "--out", "blocker/b.csv"], 1,
         ("cannot write results",), {"blocker": "x"}),
    Case("baseline-all-diverged", ["baseline", "run", "--out", "b.csv"], 2,
         ("no finite mean", "row 1"), {RUNS: lambda p: p.write_text(
             p.read_text().replace(",ok,", ",diverged,"))}),
    Case("baseline-suite-broken", ["baseline", "--suite", "s.toml", "--out", "b.csv"], 2,
         ("s.toml", "seeds"), {"s.toml": "seeds = -1\n" + BASE_SUITE}),
]


def report(id: str, files: dict[str, Content], mentions, exit: int = 2,
           extra: tuple[str, ...] = ()) -> Case:
    mentions = (mentions,) if isinstance(mentions, str) else mentions
    return Case(f"report-{id}", ["report", "run", "--out", "rep", *extra], exit, mentions,
                files)


REPORT = [
    Case("report-run-dir-missing", ["report", "nowhere"], 2, ("nowhere", "does not exist")),
    Case("report-run-dir-file", ["report", "f"], 2, ("f", "is a file"), {"f": "x"}),
    *[report(i, f, m) for i, f, m in BAD_RUN_DIRS],
    report("history-garbage", {HIST: _append("a,b\n")}, ("history.csv", "2 cells")),
    report("history-binary", {HIST: b"\x00" * 10}, ("history.csv", "binary")),
    report("history-step-text", {HIST: _set_cell(1, "step", "first")},
           ("history.csv", "step", "'first'")),
    report("history-value-text", {HIST: _set_cell(1, "value", "big")},
           ("history.csv", "value", "'big'")),
    report("history-dropped-column", {HIST: _drop_column("value")},
           ("history.csv", "lacks the columns value")),
    report("history-directory", {HIST: DIR}, ("history.csv", "is a directory")),
    report("meta-broken-json", {META: "{not json"}, ("meta.json", "not valid JSON")),
    report("meta-array", {META: "[1, 2]"}, ("meta.json", "JSON object")),
    report("meta-empty", {META: ""}, ("meta.json", "not valid JSON")),
    report("meta-binary", {META: b"\x00{}"}, ("meta.json", "binary")),
    report("meta-directory", {META: DIR}, ("meta.json", "is a directory")),
    report("meta-symlink-loop", {META: LOOP}, ("meta.json", "symlink loop")),
    report("out-is-a-file", {"rep": "x"}, "cannot write results to rep", exit=1),
    report("out-under-a-file", {"blocker": "x"}, "cannot write results to blocker/r", exit=1,
           extra=("--out", "blocker/r")),
    report("suite-broken", {"s.toml": "seeds = [0, 0]\n" + BASE_SUITE}, ("s.toml", "seeds"),
           extra=("--suite", "s.toml")),
    report("suite-missing", {}, "suite file not found", extra=("--suite", "nope.toml")),
    report("suite-binary", {"s.toml": b"\x00"}, ("s.toml", "binary"), extra=("--suite", "s.toml")),
]

LIST = [
    Case("list-unknown-subcommand", ["list", "lossez"], 2, ("lossez",)),
    Case("list-losses-unknown-task", ["list", "losses", "--task", "mnsit"], 2,
         ("did you mean 'mnist'",)),
    Case("list-losses-empty-task", ["list", "losses", "--task", ""], 2, ("unknown",)),
    Case("list-tasks-unknown", ["list", "tasks", "rgе"], 2, ("unknown",)),
    Case("list-plugin-missing", ["list", "losses", "--plugin", "nope.py"], 2, ("nope",)),
    Case("list-plugin-syntax", ["list", "losses", "--plugin", "p.py"], 2, ("p.py",),
         {"p.py": "def (:\n"}),
    Case("list-plugin-raises", ["list", "losses", "--plugin", "p.py"], 2, ("p.py", "boom"),
         {"p.py": "raise ValueError('boom')\n"}),
    Case("list-plugin-binary", ["list", "losses", "--plugin", "p.py"], 2, ("p.py",),
         {"p.py": b"\x00\x01"}),
    Case("list-plugin-clash", ["list", "losses", "--plugin", "p.py"], 2, ("p.py", "mse"), {
        "p.py": "from losscli.losses import register_loss\n"
                "@register_loss('mse', family='regression', pred='values', target='values',\n"
                "               description='x', reference='x')\n"
                "def mse(pred, target, *, reduction='mean'):\n    return pred.sum()\n"}),
    Case("list-unknown-option", ["list", "tasks", "--colour"], 2, ("--colour",)),
]

CASES = [*TRAIN, *SWEEP, *CHECK, *BASELINE, *REPORT, *LIST]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A small finished run directory (reg: mse and l1, two seeds) and its baseline."""
    root = tmp_path_factory.mktemp("finished")
    res = runner.invoke(app, ["train", "--task", "reg", "--loss", "mse", "--loss", "l1",
                              "--seeds", "2", "--out", str(root / "run"), *BUDGET])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["baseline", str(root / "run"), "--out", str(root / "base.csv")])
    assert res.exit_code == 0, res.output
    return root


def test_corpus_ids_are_unique_and_large_enough():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 200


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_ends_cleanly(case: Case, finished_run, tmp_path, monkeypatch):
    shutil.copytree(finished_run / "run", tmp_path / "run")
    shutil.copy(finished_run / "base.csv", tmp_path / "base.csv")
    monkeypatch.chdir(tmp_path)  # default output paths land here, never in the repository
    _make(tmp_path, case.files)
    res = runner.invoke(app, case.args)
    text = " ".join(res.output.split())
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    assert res.exit_code == case.exit, res.output[-2000:]
    for mention in case.mentions:
        assert mention in text, f"{mention!r} not in: {text[-2000:]}"
    if case.exit == 2:  # refused before anything was written
        assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


def test_a_million_combination_grid_and_ten_million_seeds_are_refused_quickly(tmp_path):
    grid = job('[[job.grid]]\nloss = "huber"\n' + "".join(
        f"{c} = [{', '.join(str(i) for i in range(10))}]\n" for c in "abcdef"))
    for text in (grid, "seeds = 10000000\n" + BASE_SUITE):
        (tmp_path / "s.toml").write_text(text)
        started = time.perf_counter()
        res = runner.invoke(app, ["sweep", str(tmp_path / "s.toml"), "--dry-run"])
        assert res.exit_code == 2 and time.perf_counter() - started < 5


# --------------------------------------------------------------------------- faults

FAULT_SUITE = """
name = "faults"
seeds = {seeds}
[defaults]
steps = {steps}
eval_every = 10
batch_size = 64
[[job]]
task = "reg"
losses = ["mse", "l1", "huber", "smooth_l1", "log_cosh"]
"""


def _suite(tmp_path: Path, seeds: int = 2, steps: int = 20) -> Path:
    path = tmp_path / "faults.toml"
    path.write_text(FAULT_SUITE.format(seeds=seeds, steps=steps))
    return path


def _losscli(*args: str) -> list[str]:
    return [sys.executable, "-m", "losscli", *args]


def _rows(out: Path) -> int:
    try:
        return len(read_runs(out))
    except Exception:  # a half-written file while the writer runs: try again later
        return 0


def _wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _assert_each_run_once(out: Path, planned: int) -> None:
    """Every planned run exactly once, and both CSVs parse (raw and through the readers)."""
    runs = read_runs(out)
    assert len(runs) == planned and set(runs["status"]) == {"ok"}
    raw = pd.read_csv(out / "runs.csv")
    assert raw["run_key"].is_unique and len(raw) == planned
    pd.read_csv(out / "history.csv")
    hist = read_history(out)
    assert set(hist["run_key"]) == set(runs["run_key"])
    assert not hist.duplicated(["run_key", "step", "split", "metric"]).any()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has died; only its exit status is left


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_on_a_pooled_sweep_exits_130_with_a_resume_line(tmp_path):
    # 3,000 steps a run (about 2.5 s): with 20 or 300 steps all 20 runs finished within
    # 3 s of the first row, before the signal (fresh-clone CIs saw exit 0 twice), leaving
    # nothing to interrupt; the signal still comes right after the first row
    suite, out = _suite(tmp_path, seeds=4, steps=3000), tmp_path / "run"
    cmd = _losscli("sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet",
                   "--workers", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for(lambda: _rows(out) >= 1)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted (SIGINT); finished runs are kept in {out}: to resume, run the same "
        f"command with --out {out}")
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=10)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_each_run_once(out, planned=20)


def test_sigterm_during_train_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_losscli("train", "--task", "reg", "--seeds", "6", "--steps", "300",
                                     "--vectorise", "never", "--device", "cpu", "--quiet",
                                     "--out", str(out)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _rows(out) >= 1)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted (SIGTERM); finished runs")
    assert len(pd.read_csv(out / "runs.csv")) >= 1


def test_a_second_writer_of_a_run_directory_is_refused_naming_the_holder(tmp_path):
    suite, out = _suite(tmp_path, seeds=1, steps=4), tmp_path / "run"
    args = ["sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet"]
    with ResultStore(out).locked():
        res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert f"run directory {out} is in use by PID {os.getpid()}" in " ".join(res.output.split())
    assert not (out / "runs.csv").exists()
    assert runner.invoke(app, args).exit_code == 0  # released: the next one runs
    with ResultStore(out, shard="rank1").locked():  # a torchrun rank's shard has its own lock
        assert runner.invoke(app, args).exit_code == 0


def test_a_writer_refused_while_the_holder_is_writing_its_pid_waits_for_the_pid(tmp_path):
    """The holder writes its PID just after taking the lock; a process refused in between
    must name that PID, not ``?`` (a fresh-clone CI once printed 'in use by PID ?')."""
    import fcntl
    import threading

    from losscli.errors import UsageError

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, PID not yet written
        late = threading.Timer(0.3, lambda: os.pwrite(fd, b"4242\n", 0))
        late.start()
        with pytest.raises(UsageError, match="in use by PID 4242 "):
            with ResultStore(out).locked():
                pass
        late.join()
    finally:
        os.close(fd)


def test_two_sweep_processes_on_one_run_directory_never_duplicate_rows(tmp_path):
    """Started together: one takes the run directory's lock and runs every run; the other
    is refused at once, naming the first one's PID."""
    suite, out = _suite(tmp_path, seeds=2, steps=1000), tmp_path / "run"
    cmd = _losscli("sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet",
                   "--vectorise", "never")
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], errs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    assert f"is in use by PID {procs[winner].pid}" in " ".join(errs[loser].split())
    _assert_each_run_once(out, planned=10)


DIES_ONCE = '''
import multiprocessing, os, signal
from pathlib import Path

import torch.nn.functional as F

from losscli.losses import register_loss

MARK = Path(__file__).with_suffix(".died")


@register_loss("dies_once", family="regression", pred="values", target="values",
               description="kills its worker process the first time", reference="test")
def dies_once(pred, target, *, reduction="mean"):
    if multiprocessing.parent_process() is not None and not MARK.exists():
        MARK.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return F.mse_loss(pred, target, reduction=reduction)
'''


def test_a_killed_worker_is_an_error_row_and_the_sweep_goes_on(tmp_path):
    plugin = tmp_path / "dies_once.py"
    plugin.write_text(DIES_ONCE)
    suite = tmp_path / "s.toml"
    suite.write_text('[defaults]\nsteps = 20\neval_every = 10\nbatch_size = 64\n'
                     '[[job]]\ntask = "reg"\nseeds = [0, 1]\nlosses = ["mse", "dies_once", "l1"]\n')
    out = tmp_path / "run"
    args = ["sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet", "--workers",
            "2", "--plugin", str(plugin)]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output  # a run errored
    assert "Traceback" not in res.output and "BrokenProcessPool" not in res.output
    runs = read_runs(out)
    assert len(runs) == 6
    dead = runs[runs["status"] == "error"]
    assert len(dead) == 1 and dead["loss"].iloc[0] == "dies_once"
    assert "worker process died (killed by SIGKILL)" in dead["error"].iloc[0]
    res = runner.invoke(app, args)  # resume: the errored run is retried, and now finishes
    assert res.exit_code == 0, res.output
    assert set(read_runs(out)["status"]) == {"ok"} and len(pd.read_csv(out / "runs.csv")) == 7


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; PR_SET_PDEATHSIG")
def test_workers_die_with_their_parent(tmp_path):
    suite, out = _suite(tmp_path, seeds=4, steps=300), tmp_path / "run"
    proc = subprocess.Popen(_losscli("sweep", str(suite), "--out", str(out), "--device", "cpu",
                                     "--quiet", "--workers", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: _rows(out) >= 1)  # both workers are training
    workers = [c for c in _children(proc.pid)
               if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=10)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
@pytest.mark.parametrize("code, after, message", [
    (errno.ENOSPC, 2, "No space left on device"),
    (errno.EROFS, 0, "Read-only file system"),
])
def test_a_full_disk_ends_with_exit_1_and_intact_rows(tmp_path, monkeypatch, code, after,
                                                      message):
    suite, out = _suite(tmp_path, seeds=1, steps=8), tmp_path / "run"
    args = ["sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet",
            "--vectorise", "never"]
    real_write, rows = os.write, []

    def write(fd: int, data) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("runs.csv"):
            return real_write(fd, data)
        if len(rows) < after:
            rows.append(fd)
            return real_write(fd, data)
        if len(rows) == after:  # half the row fits, then the disk is full
            rows.append(fd)
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(results.os, "write", write)
    res = runner.invoke(app, args)
    monkeypatch.undo()
    assert res.exit_code == 1, res.output
    assert f"cannot write results to {out}: {message}" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert len(read_runs(out)) == after  # the rows written before stay; the half row is dropped
    res = runner.invoke(app, args)  # with space again, the same command resumes
    assert res.exit_code == 0, res.output
    _assert_each_run_once(out, planned=5)


def _sweep_in_child(args: list[str], log: Path) -> None:
    """A forked child: the sweep command in-process (no start-up cost), then exit; what
    went wrong, if anything, is appended to ``log``."""
    torch.set_num_threads(1)
    res = CliRunner().invoke(app, args)
    if res.exit_code:
        with open(log, "a") as f:
            f.write(f"exit {res.exit_code}: {res.output[-3000:]}\n")
            if res.exc_info:
                f.write("".join(traceback.format_exception(*res.exc_info)))
    os._exit(res.exit_code)


def _lines(out: Path) -> int:
    """Complete rows in runs.csv (cheap enough to poll while a child writes)."""
    try:
        return max(0, (out / "runs.csv").read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


def _kill_at_random(child, out: Path, rng: random.Random) -> None:
    """SIGKILL ``child`` at a random moment: a fifth of the time during start-up and
    planning, else after 0-2 more rows, somewhere inside the run (or write) that follows."""
    if rng.random() < 0.2:
        child.join(rng.uniform(0.0, 0.5))
    else:
        target, deadline = _lines(out) + rng.randint(0, 2), time.time() + 120
        while child.is_alive() and _lines(out) < target:
            assert time.time() < deadline, "the sweep made no progress for 2 minutes"
            time.sleep(0.005)
        child.join(rng.uniform(0.0, 0.3))
    child.kill()
    child.join()


@pytest.mark.skipif(sys.platform != "linux", reason="forks")
def test_kill_9_twenty_times_then_resume_runs_everything_exactly_once(tmp_path):
    """kill -9 at random moments, 20 times in a row, each time the same command again;
    then once to the end. The children are forked from this process (each starts in a
    fraction of a second), so the kills land in planning, training and writing."""
    suite, out = _suite(tmp_path, seeds=6, steps=20), tmp_path / "run"
    args = ["sweep", str(suite), "--out", str(out), "--device", "cpu", "--quiet",
            "--vectorise", "never"]
    rng, counts, codes, log = random.Random(14), [], [], tmp_path / "children.log"
    for _ in range(20):
        child = mp.get_context("fork").Process(target=_sweep_in_child, args=(args, log))
        child.start()
        _kill_at_random(child, out, rng)
        counts.append(len(read_runs(out)))
        codes.append(child.exitcode)
    print("rows after each kill -9:", counts, "exit codes:", codes)
    assert set(codes) <= {-signal.SIGKILL, 0}, log.read_text()  # killed, or finished cleanly
    assert counts == sorted(counts)  # a finished run is never lost
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    _assert_each_run_once(out, planned=30)


def test_check_and_baseline_remove_their_temporary_run_directories(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    suite = _suite(tmp_path, seeds=1, steps=4)
    base = tmp_path / "base.csv"
    res = runner.invoke(app, ["baseline", "--suite", str(suite), "--out", str(base), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["check", "--suite", str(suite), "--baseline", str(base), "-q"])
    assert res.exit_code == 0, res.output
    suite.write_text(suite.read_text().replace('"mse"', '"nope"'))
    res = runner.invoke(app, ["check", "--suite", str(suite), "--baseline", str(base), "-q"])
    assert res.exit_code == 2
    assert not list(scratch.iterdir())
