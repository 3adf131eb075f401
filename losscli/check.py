"""Regression checks: compare a run directory with a recorded baseline, per (variant, loss).

Tolerance rule (documented in the README): for each (job variant, loss) the current mean
of the primary metric over seeds may be worse than the baseline mean by at most

    tol = max(ATOL, RTOL * |baseline mean|, K_STD * baseline std over seeds)

and convergence may be slower by at most ``STEPS_RTOL`` of the baseline's steps to target
plus one eval interval; a loss that reached the target on every seed must still reach it.
A run that errors or diverges where the baseline's did not is a regression too.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from losscli.results import groups, seed_stats

__all__ = ["ATOL", "BASELINE_COLUMNS", "K_STD", "RTOL", "STEPS_RTOL", "Verdict", "compare",
           "make_baseline", "read_baseline", "tolerance", "write_junit"]

ATOL, RTOL, K_STD, STEPS_RTOL = 0.005, 0.01, 3.0, 0.25
BASELINE_COLUMNS = ("variant", "job", "loss", "loss_key", "metric", "maximize", "seeds",
                    "mean", "std", "steps_to_target", "reached", "eval_every", "bad_runs",
                    "versions", "recorded_at")


def _stats(g) -> dict:
    """The baseline's view of ``results.seed_stats``."""
    st = seed_stats(g)
    return {"seeds": st["runs"], "mean": st["mean"], "std": st["std"],
            "steps_to_target": st["steps_to_target"], "reached": st["reached"],
            "bad_runs": st["diverged"] + st["errors"]}


def tolerance(mean: float, std: float) -> float:
    """How much worse than the baseline mean the current mean may be (module docstring);
    a NaN std (one baseline seed) counts as 0."""
    return max(ATOL, RTOL * abs(mean), K_STD * (0.0 if math.isnan(std) else std))


def make_baseline(runs):
    """One baseline row per (variant, loss) of a run directory's runs."""
    import pandas as pd

    rows = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for (variant, loss_key), g in groups(runs):
        first = g.iloc[0]
        rows.append({"variant": variant, "job": first["job"], "loss": first["loss"],
                     "loss_key": loss_key, "metric": first["primary_metric"],
                     "maximize": bool(first["maximize"]), **_stats(g),
                     "eval_every": int(first["eval_every"]), "versions": first["versions"],
                     "recorded_at": now})
    return pd.DataFrame(rows, columns=list(BASELINE_COLUMNS))


def read_baseline(path: Path):
    import pandas as pd

    from losscli.errors import UsageError

    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise UsageError(f"baseline file not found: {path} (record one with `losscli "
                         "baseline`)") from None
    missing = set(BASELINE_COLUMNS) - set(df.columns)
    if missing:
        raise UsageError(f"{path} is not a losscli baseline (missing {sorted(missing)})")
    return df


@dataclass
class Verdict:
    variant: str
    loss: str
    metric: str
    base_mean: float
    base_std: float
    cur_mean: float
    cur_std: float
    tol: float
    base_steps: float
    cur_steps: float
    problems: list[str]

    @property
    def delta(self) -> float:
        return self.cur_mean - self.base_mean

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(runs, baseline) -> list[Verdict]:
    """A verdict per baseline row (a row with no current runs is a regression)."""
    # not dict(groupby): a GroupBy has a .keys attribute, so dict() mistakes it for a mapping
    current = {key: g for key, g in groups(runs)} if len(runs) else {}  # noqa: C416
    verdicts = []
    for _, b in baseline.iterrows():
        g = current.get((b["variant"], b["loss_key"]))
        cur = _stats(g) if g is not None else None
        tol = tolerance(b["mean"], b["std"])
        problems = _problems(b, cur, tol)
        verdicts.append(Verdict(
            variant=b["variant"], loss=b["loss"], metric=b["metric"], base_mean=b["mean"],
            base_std=b["std"], cur_mean=cur["mean"] if cur else math.nan,
            cur_std=cur["std"] if cur else math.nan, tol=tol,
            base_steps=b["steps_to_target"],
            cur_steps=cur["steps_to_target"] if cur else math.nan, problems=problems))
    return verdicts


def _problems(b, cur: dict | None, tol: float) -> list[str]:
    if cur is None:
        return ["no current runs for this baseline row"]
    problems = []
    if cur["bad_runs"] > b["bad_runs"]:
        problems.append(f"{cur['bad_runs']} runs diverged or errored (baseline {b['bad_runs']})")
    sign = 1 if b["maximize"] else -1
    if not math.isnan(cur["mean"]) and sign * (cur["mean"] - b["mean"]) < -tol:
        problems.append(f"quality: {b['metric']} {cur['mean']:.4f} vs baseline {b['mean']:.4f}"
                        f" (tolerance {tol:.4f})")
    elif math.isnan(cur["mean"]) and not math.isnan(b["mean"]):
        problems.append("quality: no finished run")
    if cur["reached"] < b["reached"]:
        problems.append(f"convergence: reached the target on {cur['reached']} seeds "
                        f"(baseline {b['reached']})")
    elif b["reached"] and cur["reached"]:
        limit = b["steps_to_target"] * (1 + STEPS_RTOL) + b["eval_every"]
        if cur["steps_to_target"] > limit:
            problems.append(f"convergence: {cur['steps_to_target']:.0f} steps to target vs "
                            f"baseline {b['steps_to_target']:.0f} (limit {limit:.0f})")
    return problems


def write_junit(verdicts: list[Verdict], path: Path) -> None:
    """JUnit XML: one test case per (variant, loss); a regression is a failure."""
    failures = sum(not v.ok for v in verdicts)
    suite = ET.Element("testsuite", name="losscli check", tests=str(len(verdicts)),
                       failures=str(failures), errors="0")
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=v.variant, name=v.loss)
        values = {"metric": v.metric, "baseline_mean": v.base_mean, "current_mean": v.cur_mean,
                  "tolerance": v.tol, "baseline_steps": v.base_steps,
                  "current_steps": v.cur_steps}
        ET.SubElement(case, "system-out").text = json.dumps(
            {k: None if isinstance(x, float) and math.isnan(x) else x for k, x in values.items()})
        if not v.ok:
            ET.SubElement(case, "failure", message="; ".join(v.problems)).text = \
                "\n".join(v.problems)
    root = ET.Element("testsuites")
    root.append(suite)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
