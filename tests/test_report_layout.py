"""The report's layout on hand-made run directories (nothing trains): tables in ranking
order, numbers right-aligned and text left in the HTML, no literal Markdown in the HTML,
curves that show the end of training with legends outside the axes, and for a tuned run
the chosen settings, the tuning and sensitivity figures and the untuned ranking beside
the tuned one."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from losscli import report_plots
from losscli.report import build_report
from losscli.results import ResultStore, RunResult
from losscli.suite import Finding

DEFAULTS = {"int": 0, "float": 0.0, "bool": False, "str": "", "int | None": None}


def _result(**values) -> RunResult:
    base = {f.name: DEFAULTS.get(str(f.type), {}) for f in fields(RunResult)}
    base.update(job="imbalanced", job_options="{}", device="cpu", status="ok",
                primary_metric="auprc", maximize=True, selection="final", target=0.8,
                steps=300, eval_every=50, epochs=1.0, batch_size=64, lr=3e-4,
                optimizer="adam", threads=1, train_seconds=10.0, samples_per_s=1000.0,
                loss_ms_per_step=0.1, seeds_together=1, phase="run", tuned="",
                steps_to_target=150,
                data_source="hand-made", versions="v", finished_at="2025-01-01T00:00:00")
    base.update(values)
    base["loss_key"] = base.get("loss_key") or base["loss"]
    base["test_metrics"] = {"auprc": base["test_final"]}
    base["val_metrics"] = {"auprc": base["val_final"]}
    return RunResult(**base)


def _curve(final: float, steps: int = 300, every: int = 50) -> list[tuple[int, float]]:
    """A validation curve from 0.02 at step 0 rising to ``final``."""
    return [(s, 0.02 if s == 0 else final - 0.1 * (1 - s / steps))
            for s in range(0, steps + 1, every)]


def _add(store: ResultStore, loss: str, seed: int, final: float, *, lr: float = 3e-4,
         phase: str = "run", tuned: str = "", trial: int | None = None,
         status: str = "ok", loss_scale: float = 1.0) -> None:
    key = f"{loss}-{seed}-{phase}-{trial}-{lr}"
    curve = _curve(final)
    history = [(s, "val", "auprc", v) for s, v in curve]
    history += [(s, "train", "loss", loss_scale * 10 ** (-s / 100)) for s, _ in curve[1:]]
    store.append(_result(run_key=key, loss=loss, seed=seed, test_final=final,
                         val_final=final, val_best=final, lr=lr, phase=phase, tuned=tuned,
                         trial=trial, status=status, rung=2 if status == "ok" else 0),
                 history)


@pytest.fixture(scope="module")
def untuned(tmp_path_factory) -> Path:
    """Three losses, the worst one seen first; a loss scaled 100x down (its training loss
    spans decades against the others)."""
    root = tmp_path_factory.mktemp("untuned")
    store = ResultStore(root)
    for seed in range(3):
        _add(store, "worst_first", seed, 0.60 + 0.01 * seed)
        _add(store, "best", seed, 0.80 + 0.01 * seed, loss_scale=0.01)
        _add(store, "0.5*focal:gamma=2+dice", seed, 0.70 + 0.01 * seed)
    return root


@pytest.fixture(scope="module")
def tuned(untuned, tmp_path_factory) -> Path:
    """The untuned runs plus an lr-tuned comparison of two of the losses in the same run
    directory: 3 trials each (one pruned), then 3 fresh seeds of the winner."""
    root = tmp_path_factory.mktemp("tuned")
    for name in ("runs.csv", "history.csv"):
        (root / name).write_bytes((untuned / name).read_bytes())
    store = ResultStore(root)
    for loss, values in {"best": (0.5, 0.85, 0.7), "worst_first": (0.3, 0.6, 0.75)}.items():
        for trial, (lr, value) in enumerate(zip((1e-4, 1e-3, 1e-2), values, strict=True)):
            _add(store, loss, 0, value, lr=lr, phase="tune", trial=trial,
                 tuned=json.dumps({"lr": lr}), status="pruned" if trial == 0 else "ok")
        best_lr = 1e-3 if loss == "best" else 1e-2
        for seed in range(3):
            final = 0.82 + 0.01 * seed if loss == "best" else 0.74 + 0.005 * seed
            _add(store, loss, seed, final, lr=best_lr, phase="final",
                 tuned=json.dumps({"lr": best_lr}))
    return root


class _Cells(HTMLParser):
    """Each table of a page: its rows as lists of (cell class, text)."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = [dict(attrs).get("class") or "", ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(tuple(self._cell))
            self._cell = None


def _tables(page: str) -> list[list[list[tuple[str, str]]]]:
    parser = _Cells()
    parser.feed(page)
    return parser.tables


def _md_rows(md: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with ``first_header``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


@pytest.fixture(scope="module")
def untuned_report(untuned, tmp_path_factory):
    finding = Finding(id="f", title="best beats worst_first", task="imbalanced",
                      metric="auprc", better=("best",), than="worst_first", maximize=True)
    md, page = build_report(untuned, tmp_path_factory.mktemp("rep"), [finding])
    return md.read_text(), page.read_text(), md.parent


def test_cost_table_follows_the_ranking(untuned_report):
    md, _, _ = untuned_report
    ranked = [r[1] for r in _md_rows(md, "# | loss | seeds")]
    cost = [r[1] for r in _md_rows(md, "# | loss | samples/s")]
    assert ranked == ["`best`", "`0.5*focal:gamma=2+dice`", "`worst_first`"]
    assert cost == ranked


def test_html_has_no_literal_markdown_and_renders_code(untuned_report):
    _, page, _ = untuned_report
    text = re.sub(r"src='data:[^']*'", "", page)
    assert "`" not in text and "**" not in text and "](" not in text
    assert "<code>0.5*focal:gamma=2+dice</code>" in text
    assert "<td class='reproduced'><b>reproduced</b></td>" in text  # **bold** in the .md


def test_html_aligns_numbers_right_and_text_left(untuned_report):
    _, page, _ = untuned_report
    ranking = next(t for t in _tables(page) if t[0][1][1] == "loss" and t[0][2][1] == "seeds")
    head, first = ranking[0], ranking[1]
    by_name = {h[1]: (h[0], c[0]) for h, c in zip(head, first, strict=True)}
    assert by_name["loss"] == ("", "")  # text: left (the default)
    for numeric in ("#", "seeds", "test (mean ± std)", "95 % CI", "worse than best by"):
        assert by_name[numeric] == ("num", "num"), numeric
    cost = next(t for t in _tables(page) if t[0][2][1] == "samples/s")
    assert [c[0] for c in cost[1]] == ["num", "", "num", "num", "num", "num"]


def test_curves_start_after_step_zero_with_legends_outside(untuned, monkeypatch, tmp_path):
    from losscli.results import read_history, read_runs

    figures = []
    monkeypatch.setattr(report_plots, "save", lambda fig, path: figures.append(fig) or path)
    runs, history = read_runs(untuned), read_history(untuned)
    palette = report_plots.colours(list(dict.fromkeys(runs["loss"])))
    report_plots.curve_figure("v", runs, history, "auprc", palette, tmp_path / "c.png")
    (fig,) = figures
    val, zoom, train = fig.axes
    steps = np.concatenate([line.get_xdata() for line in val.get_lines()])
    assert steps.min() == 50  # the first eval after step 0
    assert val.get_ylim()[0] > 0.4  # not squashed down to step 0's 0.02
    assert zoom.get_xlim()[0] >= 150 and zoom.get_ylim()[1] - zoom.get_ylim()[0] < 0.4
    assert train.get_yscale() == "log"  # losses 100x apart
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert {t.get_text() for t in fig.legends[0].get_texts()} == set(runs["loss"])


def test_tuned_run_shows_settings_tuning_sensitivity_and_both_rankings(tuned, tmp_path):
    md, page = build_report(tuned, tmp_path)
    text = md.read_text()
    assert (tmp_path / "v1-tuning.png").stat().st_size > 5000
    assert (tmp_path / "v1-sensitivity.png").stat().st_size > 5000
    assert "![v1-sensitivity](v1-sensitivity.png)" in text
    chosen = _md_rows(text, "# | loss | chosen (validation)")
    assert [r[1:3] for r in chosen] == [["`best`", "lr=0.001"], ["`worst_first`", "lr=0.01"]]
    assert chosen[0][-1] == "2 / 1 / 0"  # ok / pruned / failed trials
    both = _md_rows(text, "# | untuned (lr 0.0003)")
    assert [r[1] for r in both] == ["`best`", "`0.5*focal:gamma=2+dice`", "`worst_first`"]
    assert [r[3] for r in both] == ["`best`", "`worst_first`", ""]
    # 2 + 2 + tuning, sensitivity, and the CD diagram over the (untuned, tuned) x seed blocks
    assert page.read_text().count("data:image/png;base64,") == 7
    assert (tmp_path / "imbalanced-critical-difference.png").exists()


def test_average_ranks_over_variant_seed_blocks_and_over_variants(tmp_path):
    """rank_blocks: with fewer than 5 variants each (variant, seed) is a block; with 5 or
    more, each variant's mean. A loss better in every block ranks 1.00; the CD diagram
    is drawn per job and the summary names the ranks."""
    import pandas as pd

    from losscli.report import rank_blocks

    def runs(n_variants: int, seeds: int) -> pd.DataFrame:
        rows = []
        for v in range(n_variants):
            for seed in range(seeds):
                for loss, value in (("good", 0.9), ("mid", 0.8 - 0.01 * seed), ("bad", 0.5)):
                    rows.append(dict(vars(_result(run_key=f"{v}-{seed}-{loss}", loss=loss,
                                                  seed=seed, test_final=value, val_final=value,
                                                  steps=100 + v))))
        return pd.DataFrame(rows)

    few = rank_blocks(runs(2, 3))["imbalanced"]
    assert few[1] == "(job variant, seed) pairs" and few[0].shape == (6, 3)
    many = rank_blocks(runs(5, 2))["imbalanced"]
    assert many[1] == "job variants" and many[0].shape == (5, 3)
    lower = runs(2, 3).assign(maximize=False)  # lower is better: "bad" becomes the best
    assert (rank_blocks(lower)["imbalanced"][0].idxmax(axis=1) == "bad").all()

    root = tmp_path / "run"
    store = ResultStore(root)
    for steps in (300, 600):
        for seed in range(3):
            for loss, value in (("good", 0.9), ("mid", 0.8), ("bad", 0.5 + 0.01 * seed)):
                store.append(_result(run_key=f"{steps}-{seed}-{loss}", loss=loss, seed=seed,
                                     test_final=value, val_final=value, val_best=value,
                                     steps=steps), [(0, "val", "auprc", 0.1),
                                                    (steps, "val", "auprc", value)])
    md, _ = build_report(root, tmp_path / "rep")
    text = md.read_text()
    assert "across 6 (job variant, seed) pairs (2 variants)" in text
    assert "`good` 1.00, `mid` 2.00, `bad` 3.00" in text
    assert (tmp_path / "rep" / "imbalanced-critical-difference.png").exists()
