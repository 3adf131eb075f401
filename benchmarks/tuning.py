"""What equal per-loss tuning costs: a tuned comparison against the untuned one, wall time.

In one process, interleaved over repeats, for one job: ``k`` losses x ``S`` seeds untuned
(``losscli.sweep.run``), against the same with ``--tune lr`` (the default 7-rate grid,
successive halving on validation, then ``S`` fresh seeds of each winner). Prints both wall
times, their ratio (target <= 2 on CPU) and the fixed cost per trial (a trial's wall time
beyond its training steps: model, optimizer, evals, the row).

    python benchmarks/tuning.py --task reg --steps 300 --seeds 3 --repeats 2
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


def _wall(request: JobRequest, root: Path) -> tuple[float, pd.DataFrame]:
    """Wall time and the runs, each with ``steps_done`` (its last validation eval)."""
    t = time.perf_counter()
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
    args = ap.parse_args()
    base = JobRequest(task=args.task, losses=tuple(args.losses.split(",")),
                      seeds=tuple(range(args.seeds)), settings=Settings(steps=args.steps))
    tuned = JobRequest(**{**base.__dict__, "tune": Tune(lr=())})
    plain, tuned_walls, per_trial, trained = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            wall, _ = _wall(base, Path(tmp) / f"plain{r}")
            plain.append(wall)
            wall, runs = _wall(tuned, Path(tmp) / f"tuned{r}")
            tuned_walls.append(wall)
            trials = runs[runs["phase"] == "tune"]
            trained.append(trials["steps_done"].sum() / args.steps / len(base.losses))
            per_trial.append((wall - runs["train_seconds"].sum()) / len(runs))
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


if __name__ == "__main__":
    main()
