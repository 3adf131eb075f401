"""What equal per-loss tuning costs: a tuned comparison against the untuned one, wall time.

In one process, interleaved over repeats, for one job: ``k`` losses x ``S`` seeds untuned
(``losscli.sweep.run``), against the same with ``--tune lr`` (the default 7-rate grid,
successive halving on validation, then ``S`` fresh seeds of each winner). Prints both wall
times, their ratio (target <= 2 on CPU) and the fixed cost per trial (a trial's wall time
beyond its training steps: model, optimizer, evals, the row).

``--stacked`` adds a third way: the same tuned comparison with each loss's trials trained
together as one vmapped model with a learning rate per member (``TrialStack``; the final
seeds still one by one, as in the other two), and prints whether the calibration that
``--vectorise auto`` runs would stack the trials of this job.

    python benchmarks/tuning.py --task reg --steps 300 --seeds 3 --repeats 2 --stacked
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from losscli.settings import Settings
from losscli.suite import JobRequest
from losscli.sweep import run
from losscli.tuning import Tune


def _wall(request: JobRequest, root: Path, stack_trials: bool = False
          ) -> tuple[float, pd.DataFrame]:
    """Wall time and the runs, each with ``steps_done`` (its last validation eval).
    ``stack_trials``: tuning trials stacked, seeds one by one (``vectorise`` governs both,
    so the trial decision is forced here)."""
    from unittest import mock

    from losscli import sweep

    t = time.perf_counter()
    with mock.patch.object(sweep, "_stack_trials", lambda *a, **k: stack_trials):
        result = run([request], root, vectorise="never")
    wall = time.perf_counter() - t
    from losscli.results import read_history, read_runs

    runs, h = read_runs(result.root), read_history(result.root)
    last = h[h["split"] == "val"].groupby("run_key")["step"].max()
    return wall, runs.assign(steps_done=runs["run_key"].map(last))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="reg")
    ap.add_argument("--losses", default="mse,l1,huber")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stacked", action="store_true",
                    help="also time the trials stacked as one vmapped model")
    args = ap.parse_args()
    base = JobRequest(task=args.task, losses=tuple(args.losses.split(",")),
                      seeds=tuple(range(args.seeds)), settings=Settings(steps=args.steps))
    tuned = JobRequest(**{**base.__dict__, "tune": Tune(lr=())})
    plain, tuned_walls, per_trial, trained, stacked = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            wall, _ = _wall(base, Path(tmp) / f"plain{r}")
            plain.append(wall)
            wall, runs = _wall(tuned, Path(tmp) / f"tuned{r}")
            tuned_walls.append(wall)
            trials = runs[runs["phase"] == "tune"]
            trained.append(trials["steps_done"].sum() / args.steps / len(base.losses))
            per_trial.append((wall - runs["train_seconds"].sum()) / len(runs))
            if args.stacked:
                wall, _ = _wall(tuned, Path(tmp) / f"stacked{r}", stack_trials=True)
                stacked.append(wall)
    ratio = [t / p for t, p in zip(tuned_walls, plain, strict=True)]
    k, s = len(base.losses), args.seeds
    print(f"{args.task}: {k} losses x {s} seeds, {args.steps} steps; tuned: 7 learning rates "
          f"per loss, successive halving (eta 3), then {s} seeds of each winner")
    med_plain, med_tuned = statistics.median(plain), statistics.median(tuned_walls)
    print(f"untuned wall {med_plain:.1f} s, tuned {med_tuned:.1f} s ({len(trials)} trials), "
          f"ratio min/med/max {min(ratio):.2f} / {statistics.median(ratio):.2f} / "
          f"{max(ratio):.2f} (target <= 2)")
    print(f"tuning trained {statistics.median(trained):.2f} full runs per loss "
          f"(the trials' steps / {args.steps}; synchronous halving of 7 points: about 1.9)")
    print(f"fixed cost per run or trial (wall minus training steps): "
          f"{statistics.median(per_trial):.3f} s")
    if stacked:
        sratio = [t / p for t, p in zip(stacked, plain, strict=True)]
        print(f"trials stacked (one vmapped model per loss): tuned {statistics.median(stacked):.1f}"
              f" s, ratio to untuned min/med/max {min(sratio):.2f} / "
              f"{statistics.median(sratio):.2f} / {max(sratio):.2f}; stacked / one by one "
              f"{statistics.median(s / t for s, t in zip(stacked, tuned_walls, strict=True)):.2f}")
        print(f"--vectorise auto would stack these trials: {_calibrated(base)}")


def _calibrated(request: JobRequest) -> bool:
    """What the plan's calibration decides for a stack of 7 trials of the first loss."""
    from losscli.sweep import make_plan

    plan = make_plan([request])
    first = plan.runs[0]
    return plan.calibration.choose(first.job, plan.data[first.job.data_key], first.loss,
                                   first.cfg, list(range(7)))


if __name__ == "__main__":
    main()
