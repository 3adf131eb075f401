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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HISTORY_COLUMNS", "RUN_COLUMNS", "ResultStore", "WriteError", "read_history",
           "read_runs", "summarize", "variant_label", "with_variant"]

# Documented in the README ("Output columns"); keep the two in step.
RUN_COLUMNS = (
    "run_key", "job", "job_options", "loss", "loss_key", "seed", "device", "status", "error",
    "primary_metric", "primary_best", "primary_final", "target", "steps_to_target",
    "curve_auc", "final_train_loss", "steps", "eval_every", "epochs", "batch_size", "lr",
    "optimizer",
    "train_seconds", "samples_per_s", "loss_ms_per_step", "peak_mem_mb", "seeds_together",
    "final_metrics", "best_metrics", "data_source", "versions", "finished_at",
)
HISTORY_COLUMNS = ("run_key", "step", "split", "metric", "value")


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
            os.write(fd, data.encode())  # one write of whole lines
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, row: dict[str, Any], history: list[tuple[int, str, str, float]]) -> None:
        """Write one finished run: its history rows, then its row in ``runs.csv``."""
        key = row["run_key"]
        try:
            if history:
                self._append(self.history_path, HISTORY_COLUMNS,
                             "".join(_csv_line([key, *h]) for h in history))
            self._append(self.runs_path, RUN_COLUMNS,
                         _csv_line([_cell(row.get(c)) for c in RUN_COLUMNS]))
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

    def finished_keys(self) -> set[str]:
        """Runs a resume skips: finished ``ok`` or ``diverged`` (an ``error`` is retried)."""
        df = read_runs(self.root)
        return set(df.loc[df["status"].isin(["ok", "diverged"]), "run_key"])


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


def _complete_lines(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):  # a partial trailing line from a killed writer
        text = text[: text.rfind("\n") + 1]
    return text


def _read_shards(root: Path, stem: str, columns: tuple[str, ...]):
    import pandas as pd

    frames = []
    for path in sorted(Path(root).glob(f"{stem}*.csv")):
        text = _complete_lines(path)
        if text.count("\n") > 1:
            frames.append(pd.read_csv(io.StringIO(text)))
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)


def read_runs(root: Path):
    """Every finished run of a run directory (all shards), one row per run key."""
    df = _read_shards(root, "runs", RUN_COLUMNS)
    # a run that errored and was retried on resume: its latest row wins
    df = df.sort_values("finished_at", kind="stable")
    return df.drop_duplicates("run_key", keep="last").reset_index(drop=True)


def read_history(root: Path):
    """History rows of finished runs only, without the duplicates a resumed run can leave."""
    df = _read_shards(root, "history", HISTORY_COLUMNS)
    finished = set(read_runs(root)["run_key"])
    df = df[df["run_key"].isin(finished)]
    return df.drop_duplicates(["run_key", "step", "split", "metric"], keep="last") \
        .reset_index(drop=True)


def variant_label(job: str, job_options: str, steps: int) -> str:
    """``reg[outliers=0] · 300 steps``: what a group of comparable runs shares."""
    opts = json.loads(job_options) if isinstance(job_options, str) and job_options else {}
    inner = ",".join(f"{k}={v}" for k, v in opts.items())
    return f"{job}{f'[{inner}]' if inner else ''} · {int(steps)} steps"


def with_variant(runs):
    """``runs`` plus a ``variant`` column: the group of comparable runs each belongs to."""
    return runs.assign(variant=[variant_label(j, o, s) for j, o, s in
                                zip(runs["job"], runs["job_options"], runs["steps"], strict=True)])


def summarize(runs, maximize: dict[str, bool]):
    """One row per (job variant, loss): mean ± std over seeds, ranked by the primary metric
    within each variant (same job, job options and step budget)."""
    import pandas as pd

    if not len(runs):
        return pd.DataFrame()
    runs = with_variant(runs)
    rows = [_summary_row(job, variant, loss, g) for (job, variant, loss), g in
            runs.groupby(["job", "variant", "loss"], sort=False)]
    df = pd.DataFrame(rows)
    parts = []
    for _, part in df.groupby("variant", sort=False):
        asc = not maximize.get(part["job"].iloc[0], True)
        part = part.sort_values("final_mean", ascending=asc, na_position="last", kind="stable")
        parts.append(part.assign(rank=range(1, len(part) + 1)))
    df = pd.concat(parts)
    return df[["rank", *[c for c in df.columns if c != "rank"]]].reset_index(drop=True)


def _summary_row(job: str, variant: str, loss: str, g) -> dict[str, Any]:
    import pandas as pd

    ok = g[g["status"] == "ok"]
    metrics = pd.DataFrame([json.loads(m) for m in ok["final_metrics"]])
    reached = ok["steps_to_target"].dropna()
    row = {
        "job": job, "variant": variant, "loss": loss, "runs": len(g), "ok": len(ok),
        "diverged": int((g["status"] == "diverged").sum()),
        "errors": int((g["status"] == "error").sum()),
        "primary_metric": g["primary_metric"].iloc[0],
        "final_mean": ok["primary_final"].mean(),
        "final_std": ok["primary_final"].std(ddof=1) if len(ok) > 1 else 0.0,
        "best_mean": ok["primary_best"].mean(),
        "steps_to_target": reached.mean() if len(reached) else math.nan,
        "reached_target": f"{len(reached)}/{len(ok)}",
        "curve_auc": ok["curve_auc"].mean(),
        "final_train_loss": ok["final_train_loss"].mean(),
        "train_seconds": ok["train_seconds"].mean(),
        "samples_per_s": ok["samples_per_s"].mean(),
        "loss_ms_per_step": ok["loss_ms_per_step"].mean(),
    }
    for name in metrics.columns:
        row[f"{name}_mean"] = metrics[name].mean()
    return row
