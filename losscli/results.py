"""The RunResult schema, the on-disk store (a run directory) and per-loss summaries.

A run directory holds ``runs.csv`` (one row per run, columns ``RUN_COLUMNS``),
``history.csv`` (long-format curves: ``HISTORY_COLUMNS``) and ``meta.json``. Rows are
appended one whole line per ``write`` and fsynced, history before its run row, so a killed
process leaves at most one partial trailing line, which readers drop.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from losscli.errors import UsageError
from losscli.files import parse_table, read_json_object, read_text

__all__ = ["HISTORY_COLUMNS", "RUN_COLUMNS", "ResultStore", "RunResult", "WriteError",
           "best_value", "curve_auc", "per_run", "read_history", "read_meta", "read_run_dir",
           "read_runs", "seed_stats", "steps_to_target", "still_improving", "summarize",
           "unconverged", "variant_label", "with_convergence", "with_variant"]


@dataclass(frozen=True)
class RunResult:
    """One run: a line of runs.csv (the fields are its columns, in order; the README's
    "runs.csv columns" documents them)."""

    run_key: str
    job: str
    job_options: str  # JSON
    loss: str
    loss_key: str
    seed: int
    device: str
    status: str  # ok | diverged | error
    error: str
    primary_metric: str
    maximize: bool  # whether a higher primary metric is better
    val_best: float  # best validation value of the primary metric (evals after step 0)
    val_final: float  # its validation value at the last eval
    test_final: float  # its test value: the one test evaluation, of the selected model
    selection: str  # final | best: which model the test split scored
    selected_step: int | None  # that model's step
    target: float
    steps_to_target: int | None
    curve_auc: float
    final_train_loss: float
    steps: int
    eval_every: int
    epochs: float
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    bf16: bool
    threads: int  # CPU threads of the process: on CPU they change the float rounding
    train_seconds: float
    samples_per_s: float
    loss_ms_per_step: float
    peak_mem_mb: float
    seeds_together: int
    phase: str  # run | tune (a tuning trial, validation only) | final (a tuned setting)
    trial: int | None  # tuning: the trial number within its (variant, loss) study
    rung: int | None  # tuning: the successive-halving rung this row ended at
    tuned: str  # JSON of the tuned values this run trained with ("" when nothing was tuned)
    val_metrics: dict[str, float]  # every metric of the job at the last validation eval
    test_metrics: dict[str, float]  # every metric of the job on the test split
    data_source: str
    versions: str
    finished_at: str


RUN_COLUMNS = tuple(f.name for f in fields(RunResult))
HISTORY_COLUMNS = ("run_key", "step", "split", "metric", "value")


# --------------------------------------------------------------------------- a run's numbers


def best_value(values: list[float], maximize: bool) -> float:
    """The best of a curve's values in the metric's direction (NaN for none)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return max(finite) if maximize else min(finite)


def steps_to_target(evals: list[tuple[int, float]], target: float, maximize: bool
                    ) -> int | None:
    """The first eval step whose value reaches ``target`` (None if none does)."""
    for step, value in evals:
        if (value >= target) if maximize else (value <= target):
            return step
    return None


def curve_auc(evals: list[tuple[int, float]], steps: int) -> float:
    """Area under the eval curve over the fraction of training from step 0 (trapezoid),
    divided by the fraction covered: the curve's mean height (NaN with fewer than 2 points)."""
    pts = [(s / steps, v) for s, v in evals]
    if len(pts) < 2 or not pts[-1][0]:
        return math.nan
    area = sum((x1 - x0) * (y0 + y1) / 2
               for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False))
    return area / pts[-1][0]


@dataclass
class WriteError(OSError):
    """The run directory cannot be created or written (the CLI exits 1)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"cannot write results to {self.path}: {self.reason}"


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


class ResultStore:
    """Append-only store for one run directory."""

    def __init__(self, root: Path, shard: str | None = None):
        """``shard``: this writer's own files (``runs.<shard>.csv``), e.g. one per torchrun
        rank; readers merge every shard of the directory."""
        self.root = Path(root)
        self.shard = shard
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"  # one per process: ranks race
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise WriteError(self.root, exc.strerror or str(exc)) from None

    @property
    def runs_path(self) -> Path:
        return self.root / (f"runs.{self.shard}.csv" if self.shard else "runs.csv")

    @property
    def history_path(self) -> Path:
        return self.root / (f"history.{self.shard}.csv" if self.shard else "history.csv")

    def _append(self, path: Path, header: tuple[str, ...], lines: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = _drop_partial_line(fd)
            if size and _first_line(fd) != _csv_line(list(header)):
                raise WriteError(path, "its columns differ from this losscli version's; "
                                 "write to a new run directory")
            data = (_csv_line(list(header)) if size == 0 else "") + lines
            os.lseek(fd, 0, os.SEEK_END)
            _write_all(fd, data.encode())  # whole lines, one write unless the disk fills
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, result: RunResult, history: list[tuple[int, str, str, float]]) -> None:
        """Write one finished run: its history rows, then its row in ``runs.csv``."""
        row = asdict(result)
        try:
            if history:
                self._append(self.history_path, HISTORY_COLUMNS,
                             "".join(_csv_line([result.run_key, *h]) for h in history))
            self._append(self.runs_path, RUN_COLUMNS,
                         _csv_line([_cell(row[c]) for c in RUN_COLUMNS]))
        except WriteError:
            raise
        except OSError as exc:
            raise WriteError(self.root, exc.strerror or str(exc)) from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.root / "meta.json.tmp"
        try:
            tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
            tmp.replace(self.root / "meta.json")
        except OSError as exc:
            raise WriteError(self.root, exc.strerror or str(exc)) from None

    @contextmanager
    def locked(self) -> Iterator[ResultStore]:
        """Hold this writer's lock (``.lock``, or ``.lock.<shard>``) while it writes: a second
        process writing the same files is refused, naming the holder's PID. The kernel
        releases the lock when the holder exits, however it exits (kill -9 included).
        Without ``fcntl`` (Windows) nothing is locked."""
        try:
            import fcntl
        except ImportError:
            yield self
            return
        path = self.root / (f".lock.{self.shard}" if self.shard else ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriteError(path, exc.strerror or str(exc)) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_pid(fd)
                raise UsageError(f"run directory {self.root} is in use by PID {holder} (another "
                                 "losscli writing its results); wait for it to finish or give "
                                 "another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def finished_keys(self) -> set[str]:
        """Runs a resume skips: finished ``ok``, ``diverged`` or ``pruned`` (an ``error`` is
        retried)."""
        df = read_runs(self.root)
        return set(df.loc[df["status"].isin(["ok", "diverged", "pruned"]), "run_key"])


def _holder_pid(fd: int, wait: float = 2.0) -> str:
    """The PID the lock's holder wrote. The holder writes it just after taking the lock, so a
    process refused in that instant polls briefly instead of reporting ``?``."""
    deadline = time.monotonic() + wait
    while True:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if holder or time.monotonic() >= deadline:
            return holder or "?"
        time.sleep(0.02)


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _first_line(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    head = os.read(fd, 4096)
    return head[: head.find(b"\n") + 1].decode()


def _drop_partial_line(fd: int) -> int:
    """Truncate a partial trailing line (a writer killed mid-write); return the new size."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return 0
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return size
    chunk = min(size, 1 << 20)
    os.lseek(fd, size - chunk, os.SEEK_SET)
    tail = os.read(fd, chunk)
    keep = size - chunk + tail.rfind(b"\n") + 1
    os.ftruncate(fd, keep)
    return keep


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a short write (the disk filling up) is
    retried, and the error it then meets (ENOSPC, EFBIG) raised."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


MAX_CSV_BYTES = 1 << 30  # a run directory's CSV larger than this is not read

# how each column is read back: the kind follows the RunResult field's type
_KIND_OF_TYPE = {"str": "str", "int": "int", "float": "float", "bool": "bool",
                 "int | None": "int?", "dict[str, float]": "json"}
RUN_KINDS = {f.name: _KIND_OF_TYPE.get(str(f.type), "infer") for f in fields(RunResult)}
HISTORY_KINDS = {"run_key": "str", "step": "int", "split": "str", "metric": "str",
                 "value": "float"}
STATUSES = ("ok", "diverged", "pruned", "error")  # pruned: a tuning trial stopped early


def _complete_lines(path: Path, what: str) -> str:
    text = read_text(path, what, MAX_CSV_BYTES)
    if text and not text.endswith("\n"):  # a partial trailing line from a killed writer
        text = text[: text.rfind("\n") + 1]
    return text


def _read_shards(root: Path, stem: str, kinds: dict[str, str], what: str):
    """Every shard (``<stem>.csv``, ``<stem>.<shard>.csv``) of a run directory, concatenated;
    a file that does not parse is a UsageError naming it."""
    import pandas as pd

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is not a run directory (it is a file)")
    frames = [parse_table(_complete_lines(path, what), path, kinds, what)
              for path in sorted(root.glob(f"{stem}*.csv"))]
    frames = [f for f in frames if len(f)]
    if not frames:
        return parse_table("", root / f"{stem}.csv", kinds, what)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def read_runs(root: Path):
    """Every finished run of a run directory (all shards), one row per run key.

    Raises:
        UsageError: a runs file that is not one (see ``losscli.files.parse_table``) or holds
            an unknown status or an empty run key.
    """
    df = _read_shards(root, "runs", RUN_KINDS, "runs file")
    bad = ~df["status"].isin(STATUSES) | (df["run_key"].str.strip() == "")
    if bad.any():
        row = df[bad].iloc[0]
        raise UsageError(f"runs file in {root}: run {row['run_key']!r} has status "
                         f"{row['status']!r} (one of {', '.join(STATUSES)} with a run key)")
    # a run that errored and was retried on resume: its latest row wins
    df = df.sort_values("finished_at", kind="stable")
    return df.drop_duplicates("run_key", keep="last").reset_index(drop=True)


def read_history(root: Path):
    """History rows of finished runs only, without the duplicates a resumed run can leave."""
    df = _read_shards(root, "history", HISTORY_KINDS, "history file")
    finished = set(read_runs(root)["run_key"])
    df = df[df["run_key"].isin(finished)]
    return df.drop_duplicates(["run_key", "step", "split", "metric"], keep="last") \
        .reset_index(drop=True)


def read_run_dir(root: Path):
    """``read_runs`` of a run directory a user names (report, check, baseline): one that
    does not exist, is a file or holds no runs is a UsageError."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"run directory {root} " + ("is a file" if root.exists()
                                                      else "does not exist"))
    runs = read_runs(root)
    if not len(runs):
        raise UsageError(f"{root} holds no runs (no runs.csv, or only its header)")
    return runs


def read_meta(root: Path) -> dict[str, Any]:
    """A run directory's ``meta.json`` (``{}`` when it has none)."""
    path = Path(root) / "meta.json"
    if not path.exists() and not path.is_symlink():
        return {}
    return read_json_object(path, "meta file")


def variant_label(row: Any) -> str:
    """``reg[outliers=0.0] · 300 steps · adam lr 0.001 · batch 128 · eval 60 · cpu``: every
    setting a group of comparable runs shares (weight decay and bf16 when set)."""
    opts = json.loads(row["job_options"]) if isinstance(row["job_options"], str) and \
        row["job_options"] else {}
    inner = ",".join(f"{k}={v}" for k, v in opts.items())
    tuned = json.loads(row["tuned"]) if isinstance(row.get("tuned"), str) and row["tuned"] \
        else {}
    lr = "lr tuned" if "lr" in tuned else f"lr {float(row['lr']):g}"
    parts = [f"{row['job']}{f'[{inner}]' if inner else ''}", f"{int(row['steps'])} steps",
             f"{row['optimizer']} {lr}", f"batch {int(row['batch_size'])}",
             f"eval {int(row['eval_every'])}"]
    if float(row["weight_decay"] or 0):
        parts.append(f"wd {float(row['weight_decay']):g}")
    if _truthy(row["bf16"]):
        parts.append("bf16")
    return " · ".join([*parts, str(row["device"]).split(":")[0]])


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def with_variant(runs):
    """``runs`` plus a ``variant`` column: the group of comparable runs each belongs to."""
    return runs.assign(variant=[variant_label(r) for _, r in runs.iterrows()]
                       if len(runs) else [])


def seed_stats(g) -> dict[str, Any]:
    """Statistics over the seeds of one (variant, loss): the one place they are computed
    (the summary table, ``check`` and the report all use it). ``std`` is the sample std
    (ddof 1): NaN for a single seed, never 0."""
    ok = g[g["status"] == "ok"]
    final = ok["test_final"].astype(float)
    reached = ok["steps_to_target"].dropna()
    return {
        "runs": len(g), "ok": len(ok),
        "diverged": int((g["status"] == "diverged").sum()),
        "errors": int((g["status"] == "error").sum()),
        "values": final.to_numpy(),
        "mean": final.mean() if len(ok) else math.nan,
        "std": final.std(ddof=1) if len(ok) > 1 else math.nan,
        "best_mean": ok["val_best"].astype(float).mean() if len(ok) else math.nan,
        "val_mean": ok["val_final"].astype(float).mean() if len(ok) else math.nan,
        "steps_to_target": reached.mean() if len(reached) else math.nan,
        "reached": len(reached),
        "threads": ",".join(sorted({str(t) for t in g["threads"].dropna()})),
    }


def compared(runs):
    """The runs a comparison ranks: plain and tuned-final runs (tuning trials are scored
    on validation only and never ranked)."""
    if "phase" not in runs.columns:
        return runs
    return runs[runs["phase"].fillna("run") != "tune"]


def groups(runs):
    """Comparable runs: one group per (variant, canonical loss), in first-seen order."""
    return with_variant(compared(runs)).groupby(["variant", "loss_key"], sort=False)


def summarize(runs):
    """One row per (job variant, loss): mean ± std over seeds, ranked by the primary metric
    within each variant (its direction read from the runs)."""
    import pandas as pd

    if not len(runs):
        return pd.DataFrame()
    df = pd.DataFrame([_summary_row(variant, g) for (variant, _), g in groups(runs)])
    parts = []
    for _, part in df.groupby("variant", sort=False):
        asc = not _truthy(part["maximize"].iloc[0])
        part = part.sort_values("final_mean", ascending=asc, na_position="last", kind="stable")
        parts.append(part.assign(rank=range(1, len(part) + 1)))
    df = pd.concat(parts)
    return df[["rank", *[c for c in df.columns if c != "rank"]]].reset_index(drop=True)


def _summary_row(variant: str, g) -> dict[str, Any]:
    import pandas as pd

    first, st = g.iloc[0], seed_stats(g)
    ok = g[g["status"] == "ok"]
    metrics = pd.DataFrame([json.loads(m) for m in ok["test_metrics"]])
    row = {
        "job": first["job"], "variant": variant, "loss": first["loss"],
        "loss_key": first["loss_key"], "runs": st["runs"], "ok": st["ok"],
        "diverged": st["diverged"], "errors": st["errors"],
        "primary_metric": first["primary_metric"], "maximize": _truthy(first["maximize"]),
        "final_mean": st["mean"], "final_std": st["std"], "val_mean": st["val_mean"],
        "best_mean": st["best_mean"],
        "steps_to_target": st["steps_to_target"], "reached_target": st["reached"],
        "curve_auc": ok["curve_auc"].mean(), "final_train_loss": ok["final_train_loss"].mean(),
        "train_seconds": ok["train_seconds"].mean(), "samples_per_s": ok["samples_per_s"].mean(),
        "loss_ms_per_step": ok["loss_ms_per_step"].mean(), "threads": st["threads"],
        "seeds": ",".join(str(s) for s in g["seed"]),
        "tuned": first.get("tuned", "") if isinstance(first.get("tuned", ""), str) else "",
    }
    for name in metrics.columns:
        row[f"{name}_mean"] = metrics[name].mean()
    return row


# --------------------------------------------------------------------------- convergence


def still_improving(values: list[float], maximize: bool, last: int = 3,
                    rel: float = 1e-3) -> bool:
    """Whether each of the last ``last`` evals beat the one before it by more than ``rel``
    of its size: a curve still rising at the end of its budget, whose ranking more steps
    may change (False with fewer than ``last + 1`` evals; NaN never improves)."""
    if len(values) < last + 1:
        return False
    tail, sign = values[-(last + 1):], 1 if maximize else -1
    return all(sign * (b - a) > rel * max(abs(a), 1e-12)
               for a, b in zip(tail, tail[1:], strict=False))


def unconverged(runs, history) -> set[str]:
    """Run keys of finished ``ok`` runs whose primary-metric eval curve (validation when
    recorded, else test; step 0 included) was still improving at its last evals."""
    ok = runs[runs["status"] == "ok"]
    if not len(ok) or not len(history):
        return set()
    direction = dict(zip(ok["run_key"], ok["maximize"].map(_truthy), strict=True))
    metric = dict(zip(ok["run_key"], ok["primary_metric"], strict=True))
    evals = history[history["split"].isin(("val", "test"))]  # not train, nor series rows
    evals = evals[evals["metric"] == evals["run_key"].map(metric)]
    keys = set()
    for key, curve in evals.groupby("run_key", sort=False):
        split = "val" if (curve["split"] == "val").any() else "test"
        values = curve[curve["split"] == split].sort_values("step")["value"].astype(float)
        if still_improving(values.tolist(), direction[key]):
            keys.add(key)
    return keys


def with_convergence(summary, runs, history):
    """``summary`` plus ``converged``: False where a seed's curve was still improving at
    the end of training (``unconverged``)."""
    if not len(summary):
        return summary
    still = unconverged(runs, history)
    flagged = {(v, k) for (v, k), g in groups(runs) if still & set(g["run_key"])}
    return summary.assign(converged=[(v, k) not in flagged for v, k in
                                     zip(summary["variant"], summary["loss_key"], strict=True)])


def per_run(runs, history=None):
    """One row per compared run, for ``--per-seed``: the variant, the primary metric on test
    (``final``) and validation (last and best), steps to target, cost, status, every test
    metric, and ``converged`` when ``history`` is given. Ordered by variant, then loss and
    seed as in ``runs``."""
    import pandas as pd

    runs = compared(runs)
    if not len(runs):
        return pd.DataFrame()
    df = with_variant(runs)
    still = unconverged(runs, history) if history is not None else None
    rows = []
    for _, r in df.iterrows():
        row = {"job": r["job"], "variant": r["variant"], "loss": r["loss"], "seed": r["seed"],
               "status": r["status"], "primary_metric": r["primary_metric"],
               "final": r["test_final"], "val": r["val_final"], "best": r["val_best"],
               "steps_to_target": r["steps_to_target"], "curve_auc": r["curve_auc"],
               "final_train_loss": r["final_train_loss"], "train_seconds": r["train_seconds"],
               "samples_per_s": r["samples_per_s"], "loss_ms_per_step": r["loss_ms_per_step"]}
        if still is not None:
            row["converged"] = r["run_key"] not in still if r["status"] == "ok" else None
        metrics = r["test_metrics"]
        row |= json.loads(metrics) if isinstance(metrics, str) and metrics else {}
        rows.append(row)
    out = pd.DataFrame(rows)
    first_seen = {c: {v: i for i, v in enumerate(dict.fromkeys(out[c]))}
                  for c in ("variant", "loss")}
    return out.sort_values(["variant", "loss", "seed"], kind="stable",
                           key=lambda s: s.map(first_seen[s.name]) if s.name in first_seen
                           else s).reset_index(drop=True)
