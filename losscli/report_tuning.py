"""What the report says about tuning (issue 12, item 3): per tuned job variant the settings
each loss was given, its trials as a study (validation metric against the tuned value,
and the spread over the grid), and the untuned ranking beside the tuned one when the run
directory holds both.

A study is one loss's trials in one variant. Trials of a loss whose own parameters are
tuned carry the sampled values in their spec (``focal:gamma=2``); ``study_of`` takes them
out again, so every trial of the study shares a name (``focal``).
"""

from __future__ import annotations

import json
import re

import pandas as pd

from losscli.render import fmt_num

__all__ = ["CHOSEN_HEAD", "chosen_rows", "setting_text", "side_by_side", "side_by_side_head",
           "study_of", "trial_frame", "tuning_axis", "untuned_partner"]

CHOSEN_HEAD = ["#", "loss", "chosen (validation)", "val at chosen",
               "val over the grid (full-budget trials)", "spread", "trials ok / pruned / failed"]


def setting_text(tuned: object) -> str:
    """Tuned values (runs.csv ``tuned``, JSON) as ``lr=0.000949, focal.gamma=2``."""
    if not isinstance(tuned, str) or not tuned:
        return "–"
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in json.loads(tuned).items())


def study_of(loss: str, tuned: object) -> str:
    """``loss`` without the values its tuning sampled: ``focal:alpha=0.25,gamma=2`` with
    ``{"focal.gamma": 2}`` tuned is ``focal:alpha=0.25``."""
    params = json.loads(tuned) if isinstance(tuned, str) and tuned else {}
    for key in params:
        term, dot, param = key.partition(".")
        if not dot:
            continue  # lr: not part of the spec
        loss = re.sub(rf"((?:^|\+|\*){re.escape(term)}:[^+]*?)\b{re.escape(param)}="
                      r"(?:\[[^\]]*\]|[^,+]*),?", r"\1", loss)
        loss = re.sub(r"[:,](?=\+|$)", "", loss)
    return loss


def tuning_axis(trials: pd.DataFrame) -> str:
    """The axis the tuning figure spreads trials along: ``lr`` when it was tuned, else the
    first tuned loss parameter."""
    keys = [k for t in trials["tuned"] if isinstance(t, str) and t for k in json.loads(t)]
    return "lr" if "lr" in keys else (keys[0] if keys else "lr")


def trial_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with ``study`` (the loss they tune) and ``x`` (the value on the axis)."""
    axis = tuning_axis(trials)
    x = [json.loads(t).get(axis) if isinstance(t, str) and t else None for t in trials["tuned"]]
    out = trials.assign(study=[study_of(loss, t) for loss, t in
                               zip(trials["loss"], trials["tuned"], strict=True)],
                        x=pd.to_numeric(pd.Series(x, index=trials.index), errors="coerce"))
    return out.sort_values(["study", "x"], kind="stable")


def chosen_rows(final: pd.DataFrame, trials: pd.DataFrame, maximize: bool,
                order: list[str]) -> tuple[list[list[str]], dict[str, float]]:
    """Per tuned loss in ranking order: the chosen settings, the chosen trial's validation
    value, the range and spread of the full-budget trials, and the trial counts; with the
    chosen validation value per study (for the sensitivity figure)."""
    rows, chosen = [], {}
    for i, loss in enumerate(order):
        runs = final[final["loss"] == loss]
        if not len(runs) or not isinstance(runs["tuned"].iloc[0], str) \
                or not runs["tuned"].iloc[0]:
            continue
        study, setting = study_of(loss, runs["tuned"].iloc[0]), runs["tuned"].iloc[0]
        mine = trials[trials["study"] == study]
        pick = mine[(mine["tuned"] == setting) & (mine["status"] == "ok")]["val_final"]
        full = mine[mine["status"] == "ok"]["val_final"].astype(float)
        if len(pick):
            chosen[study] = float(pick.iloc[0])
        low, high = (full.max(), full.min()) if maximize else (full.min(), full.max())
        failed = int(mine["status"].isin(["diverged", "error"]).sum())
        rows.append([str(i + 1), f"`{study}`", setting_text(setting),
                     fmt_num(chosen.get(study, float("nan"))),
                     f"{fmt_num(low)} (best) to {fmt_num(high)}" if len(full) else "–",
                     fmt_num(abs(high - low)) if len(full) else "–",
                     f"{int((mine['status'] == 'ok').sum())} / "
                     f"{int((mine['status'] == 'pruned').sum())} / {failed}"])
    return rows, chosen


def untuned_partner(variant: str, variants: list[str]) -> str | None:
    """The untuned variant ``variant`` (``... · adam lr tuned · ...``) was tuned from: the
    same label with a fixed learning rate; None when the run directory has none."""
    if " lr tuned" not in variant:
        return None
    pattern = re.escape(variant).replace(r"lr\ tuned", r"lr\ [0-9.e+-]+")
    return next((v for v in variants if v != variant and re.fullmatch(pattern, v)), None)


def side_by_side_head(untuned: str) -> list[str]:
    lr = re.search(r"lr ([0-9.e+-]+)", untuned)
    fixed = f"lr {lr.group(1)}" if lr else "untuned"
    return ["#", f"untuned ({fixed})", "test (mean ± std)", "tuned", "test (mean ± std)",
            "chosen"]


def side_by_side(untuned: pd.DataFrame, tuned: pd.DataFrame, final: pd.DataFrame
                 ) -> list[list[str]]:
    """The two rankings (``report.ranking`` tables) row by row: place, loss, mean ± std."""
    settings = {loss: g["tuned"].iloc[0] for loss, g in final.groupby("loss", sort=False)}
    rows = []
    for i in range(max(len(untuned), len(tuned))):
        row = [str(i + 1)]
        for table in (untuned, tuned):
            if i < len(table):
                r = table.iloc[i]
                row += [f"`{r['loss']}`", f"{fmt_num(r['mean'])} ± {fmt_num(r['std'])}"]
            else:
                row += ["", ""]
        row.append(setting_text(settings.get(tuned.iloc[i]["loss"])) if i < len(tuned) else "")
        rows.append(row)
    return rows
