"""Rich tables: the only module that decides how results look in a terminal.

Tables adapt to the width they are drawn at: the primary columns (rank, loss, the metric's
mean ± std over seeds, steps to target, cost) always fit in 80 columns, and the others are
added while they fit (or all of them with ``columns=ALL``). A number is never cut: number
columns do not wrap and are at least as wide as their widest cell. A loss spec wraps only
after ``:``, ``,`` or ``+``, never inside a word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["ALL", "Column", "Fitted", "Spec", "column_keys", "fmt_num", "fmt_target",
           "min_width", "per_seed_view", "records", "summary_columns", "summary_view",
           "tuned_text", "verdict_views"]

ALL = ("all",)  # ``columns=ALL``: every column, however wide the table gets


def fmt_num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_target(value) -> str:
    """A target as written in the task file: ``0.95``, ``22``."""
    return "–" if value is None or math.isnan(float(value)) else f"{float(value):g}"


def mean_std(mean, std, digits: int = 4) -> str:
    """``0.9123 ± 0.0012``; one seed has no spread: ``0.9123 ± –``."""
    return f"{fmt_num(mean, digits)} ± {fmt_num(std, digits)}"


class Spec:
    """A loss spec (or any text) that wraps only after ``:``, ``,`` and ``+``:
    ``label_smoothing:`` / ``epsilon=0.1``, never ``label_smoothing:epsi`` / ``lon=0.1``."""

    def __init__(self, text: str, style: str = ""):
        self.text, self.style = text, style
        self.pieces = [p for p in re.split(r"(?<=[:,+])(?! )|(?<= )(?! )", text) if p] or [""]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(max(len(p.rstrip()) for p in self.pieces), len(self.text))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines, line = [], ""
        for piece in self.pieces:
            if line and len(line + piece.rstrip()) > options.max_width:
                lines.append(line.rstrip())
                line = ""
            line += piece
        lines.append(line.rstrip())
        yield Text("\n".join(lines), style=self.style)


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` is its ``--columns`` name; ``cell`` draws a row."""

    key: str
    header: str
    cell: Callable[[Any], str | Text | Spec]
    number: bool = True


def _cell_text(cell) -> str:
    return cell.text if isinstance(cell, Spec) else str(cell)


def _range(console: Console, options: ConsoleOptions, col: Column, cells: list
           ) -> tuple[int, int]:
    """(narrowest, widest) a column can be drawn: a number column at least its widest cell
    (a number never wraps), a text column from its longest unbreakable piece up."""
    word = max([len(w) for w in col.header.split()] or [1])
    if col.number:  # the header may wrap, a number never
        width = max([cell_len(_cell_text(c)) for c in cells] + [word])
        return width, max(width, cell_len(col.header))
    sizes = [Measurement.get(console, options, c) for c in cells]
    return (max([m.minimum for m in sizes] + [word]),
            max([m.maximum for m in sizes] + [cell_len(col.header)]))


def _overhead(n: int) -> int:
    return 3 * n + 1  # rich's default box: n + 1 borders, one space each side of a cell


def _widths(ranges: list[tuple[int, int]], width: int) -> list[int]:
    """Each column at its widest, then the text columns with the most slack narrowed one
    cell at a time until the table fits ``width`` (or all are at their narrowest)."""
    widths = [hi for _, hi in ranges]
    excess = sum(widths) + _overhead(len(widths)) - width
    while excess > 0:
        i = max(range(len(widths)), key=lambda k: widths[k] - ranges[k][0])
        if widths[i] == ranges[i][0]:
            break
        widths[i] -= 1
        excess -= 1
    return widths


def build_table(cols: Sequence[Column], rows: list, title: str, *, width: int,
                console: Console, options: ConsoleOptions, note: str = "") -> Table:
    """A table of ``cols`` over ``rows`` (each row goes to every column's ``cell``), its
    column widths chosen here (``_widths``) so that rich never cuts a cell."""
    cells = [[c.cell(r) for r in rows] for c in cols]
    ranges = [_range(console, options, c, cc) for c, cc in zip(cols, cells, strict=True)]
    table = Table(title=title, title_justify="left", caption=note or None,
                  caption_justify="left")
    for col, w in zip(cols, _widths(ranges, width), strict=True):
        table.add_column(col.header, width=w, justify="right" if col.number else "left")
    for i in range(len(rows)):
        table.add_row(*[column_cells[i] for column_cells in cells])
    return table


def min_width(console: Console, options: ConsoleOptions, cols: Sequence[Column],
              rows: list, widest: bool = False) -> int:
    """The narrowest the table of ``cols`` can be without cutting a cell (``widest``: with
    no cell wrapped)."""
    return sum(_range(console, options, c, [c.cell(r) for r in rows])[widest] for c in cols) \
        + _overhead(len(cols))


def fitting(console: Console, options: ConsoleOptions, primary: Sequence[Column],
            extra: Sequence[Column], rows: list, chosen: Sequence[str] | None,
            order: Sequence[str] | None = None) -> list[Column]:
    """The columns to draw, in ``order`` (keys; default primary then extra): the primary
    ones, then ``chosen`` extras by name (``ALL``: all of them), or when none are chosen
    each extra, in turn, while the table still fits ``options.max_width`` with no cell
    wrapped (a loss spec wraps only when the primary columns alone need it)."""
    every = [*primary, *extra]
    if order is not None:
        every = sorted(every, key=lambda c: list(order).index(c.key))
    if chosen is not None:
        wanted = {c.lower() for c in chosen}
        keep = [c for c in extra if tuple(chosen) == ALL or c.key in wanted]
        return _in_order([*primary, *keep], every)
    cols = list(primary)
    for col in extra:
        trial = _in_order([*cols, col], every)
        if min_width(console, options, trial, rows, widest=True) <= options.max_width:
            cols = trial
    return _in_order(cols, every)


def _in_order(cols: Iterable[Column], order: Sequence[Column]) -> list[Column]:
    keys = {c.key for c in cols}
    return [c for c in order if c.key in keys]


def tuned_text(tuned) -> str:
    """The tuned settings (runs.csv ``tuned``, JSON) as ``lr=0.0316, focal.gamma=2``."""
    import json

    if not isinstance(tuned, str) or not tuned:
        return "–"
    values = json.loads(tuned)
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def _status(r) -> Text:
    text = Text(f"{r['ok']}/{r['runs']}")
    if r["diverged"]:
        text.append(f" {r['diverged']} diverged", style="yellow")
    if r["errors"]:
        text.append(f" {r['errors']} error", style="red")
    return text


def summary_columns(rows, metric: str, target: float | None) -> tuple[list[Column],
                                                                        list[Column]]:
    """The summary's (primary, extra) columns; runs that failed promote ``runs``."""
    others = sorted(c[: -len("_mean")] for c in rows.columns
                    if c.endswith("_mean") and c not in ("final_mean", "best_mean", "val_mean")
                    and c != f"{metric}_mean")
    runs = Column("runs", "runs", _status, number=False)
    failed = bool((rows["diverged"] > 0).any() or (rows["errors"] > 0).any())
    primary = [
        Column("rank", "#", lambda r: str(r["rank"])),
        Column("loss", "loss", lambda r: Spec(str(r["loss"]), "bold"), number=False),
        *([Column("tuned", "tuned", lambda r: Spec(tuned_text(r["tuned"])), number=False)]
          if "tuned" in rows.columns and rows["tuned"].fillna("").astype(bool).any() else []),
        Column("metric", f"{metric} (test)", lambda r: mean_std(r["final_mean"],
                                                                 r["final_std"])),
        Column("steps", f"steps→{fmt_target(target)}", lambda r: (
            f"{fmt_num(r['steps_to_target'], 0)} ({r['reached_target']}/{r['ok']})")),
        Column("train_s", "train s", lambda r: fmt_num(r["train_seconds"], 1)),
        *([runs] if failed else []),
    ]
    extra = [
        *([Column("val", "val", lambda r: fmt_num(r["val_mean"]))] if "val_mean" in rows.columns
          else []),
        Column("best", "best val", lambda r: fmt_num(r["best_mean"])),
        Column("auc", "AUC", lambda r: fmt_num(r["curve_auc"])),
        *[Column(m, m, lambda r, m=m: fmt_num(r[f"{m}_mean"])) for m in others],
        Column("train_loss", "train loss", lambda r: fmt_num(r["final_train_loss"])),
        Column("samples_s", "samples/s", lambda r: fmt_num(r["samples_per_s"], 0)),
        Column("loss_ms", "loss ms", lambda r: fmt_num(r["loss_ms_per_step"], 3)),
        *([] if failed else [runs]),
    ]
    return primary, extra


class Fitted:
    """A table drawn at the width it gets: the primary columns, then the extras that fit
    (or those named in ``columns``, or ``ALL``; asked-for columns are drawn whole, wider
    than the terminal if need be). ``note`` goes under the table."""

    def __init__(self, primary: Sequence[Column], extra: Sequence[Column], rows: list, *,
                 title: str, note: str = "", columns: Sequence[str] | None = None,
                 order: Sequence[str] | None = None):
        self.primary, self.extra, self.rows = list(primary), list(extra), rows
        self.title, self.note, self.columns, self.order = title, note, columns, order

    def unknown_columns(self) -> list[str]:
        if self.columns is None or tuple(self.columns) == ALL:
            return []
        known = {c.key for c in [*self.primary, *self.extra]}
        return [c for c in self.columns if c not in known]

    def known_columns(self) -> list[str]:
        return [c.key for c in self.extra]

    def _table(self, console: Console, options: ConsoleOptions) -> Table:
        cols = fitting(console, options, self.primary, self.extra, self.rows, self.columns,
                       self.order)
        width = max(options.max_width, min_width(console, options, cols, self.rows))
        return build_table(cols, self.rows, self.title, width=width, console=console,
                           options=options, note=self.note)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self._table(console, options))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self._table(console, options)
        width = sum(c.width or 0 for c in table.columns) + _overhead(len(table.columns))
        yield from console.render(table, options.update_width(max(options.max_width, width)))


def summary_view(rows, *, title: str, metric: str, target: float | None,
                 columns: Sequence[str] | None = None) -> Fitted:
    """One job variant's summary rows (``results.summarize``, with ``converged`` when
    known), noting under the table the losses whose curve was still improving."""
    primary, extra = summary_columns(rows, metric, target)
    still = [str(r["loss"]) for _, r in rows.iterrows()
             if "converged" in rows.columns and r["converged"] in (False,)]  # numpy's too
    note = (f"not converged: {', '.join(still)} (the metric improved at each of the last 3 "
            "evals): more steps may change the ranking") if still else ""
    return Fitted(primary, extra, [r for _, r in rows.iterrows()], title=title, note=note,
                  columns=columns)


def column_keys(metrics: Iterable[str]) -> list[str]:
    """Every name ``--columns`` takes for a summary of runs scoring ``metrics`` (the
    primary columns first): the keys ``summary_columns`` would draw."""
    import pandas as pd

    rows = pd.DataFrame(columns=["diverged", "errors", "val_mean",
                                 *[f"{m}_mean" for m in metrics]])
    primary, extra = summary_columns(rows, "", None)
    return [c.key for c in [*primary, *extra]]


def per_seed_view(runs, *, title: str, metric: str, target: float | None) -> Fitted:
    """One row per run (``results.per_run``): loss, seed, the metric, steps to target,
    cost, status and convergence."""
    cols = [
        Column("loss", "loss", lambda r: Spec(str(r["loss"]), "bold"), number=False),
        Column("seed", "seed", lambda r: str(r["seed"])),
        Column("metric", f"{metric} (test)", lambda r: fmt_num(r["final"])),
        Column("val", "val", lambda r: fmt_num(r["val"])),
        Column("best", "best val", lambda r: fmt_num(r["best"])),
        Column("steps", f"steps→{fmt_target(target)}",
               lambda r: fmt_num(r["steps_to_target"], 0)),
        Column("train_s", "train s", lambda r: fmt_num(r["train_seconds"], 1)),
        Column("status", "status", lambda r: _run_status(r), number=False),
    ]
    return Fitted(cols, [], [r for _, r in runs.iterrows()], title=title)


def _run_status(r) -> Text:
    colour = {"ok": "green", "diverged": "yellow"}.get(r["status"], "red")
    text = Text(str(r["status"]), style=colour)
    if r.get("converged") in (False,):  # numpy's False too
        text.append(" still improving", style="yellow")
    return text


def _verdict(v) -> Text:
    return Text("ok", style="green") if v.ok else Text(
        "REGRESSION: " + "; ".join(v.problems), style="bold red")


def verdict_views(verdicts, title: str) -> list[Fitted]:
    """``check``/``diff`` verdicts: a table per job variant, one row per loss."""
    primary = [
        Column("loss", "loss", lambda v: Spec(v.loss, "bold"), number=False),
        Column("current", "current", lambda v: mean_std(v.cur_mean, v.cur_std)),
        Column("delta", "Δ", lambda v: f"{v.delta:+.4f}"),
        Column("verdict", "verdict", _verdict, number=False),
    ]
    extra = [
        Column("baseline", "baseline", lambda v: mean_std(v.base_mean, v.base_std)),
        Column("tol", "catches ≥", lambda v: fmt_num(v.tol)),
        Column("steps", "steps→target",
               lambda v: f"{fmt_num(v.base_steps, 0)} → {fmt_num(v.cur_steps, 0)}"),
    ]
    by_variant: dict[str, list] = {}
    for v in verdicts:
        by_variant.setdefault(v.variant, []).append(v)
    order = ["loss", "baseline", "current", "delta", "tol", "steps", "verdict"]
    return [Fitted(primary, extra, rows, title=f"{title} · {rows[0].metric} · {variant}",
                   order=order) for variant, rows in by_variant.items()]


def records(frame) -> list[dict[str, Any]]:
    """A summary or per-run frame as JSON records: numbers as numbers (NaN as null), the
    comma-joined ``seeds`` and ``threads`` as lists of integers."""
    out = []
    for row in frame.to_dict(orient="records"):
        rec = {}
        for key, value in row.items():
            if key in ("seeds", "threads") and isinstance(value, str):
                value = [int(x) for x in value.split(",") if x]
            elif hasattr(value, "item"):  # numpy scalar
                value = value.item()
            if isinstance(value, float) and math.isnan(value):
                value = None
            rec[key] = value
        out.append(rec)
    return out
