"""Grid throughput: a fixed small grid run three ways, wall time side by side; the same
with ``--tune lr``; and the fixed in-process cost of a run and of a tuning trial.

(a) a shell loop of ``losscli train`` processes, one per (job, loss, seed) (tuned: one per
    (job, loss), each tuning its loss and training the winner's seeds): every process pays
    for Python start-up, importing torch, and building its dataset;
(b) one ``losscli sweep`` process;
(c) ``losscli sweep --workers 2`` (untuned grid only: tuning runs in one process).

Fixed cost per run after the first, inside one process: the wall time of N one-step runs
minus that of one, divided by N - 1 (target <= 0.2 s). Fixed cost per tuning trial: the
wall time of one loss's tuning (the default 7-value learning-rate grid, successive
halving) minus the trials' timed training steps, divided by the trials run; the part spent
in validation evals is given beside it.

    python benchmarks/grid.py --repeats 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = [("mnist", "ce"), ("mnist", "focal:gamma=2"), ("reg", "mse"), ("reg", "huber")]
GRID_LOSS = dict(reversed(GRID))  # each job with its first loss
SEEDS, STEPS = 2, 40
TUNED_STEPS, TUNED_EVAL = 90, 10  # successive halving needs evals at 1/9, 1/3 and the end

SUITE = """name = "grid-bench"
seeds = {seeds}
[defaults]
steps = {steps}
eval_every = {eval_every}
""" + "".join(f'[[job]]\ntask = "{job}"\nlosses = ["{loss}"]\n{{tune}}' for job, loss in GRID)


def losscli(*args: str) -> list[str]:
    return [sys.executable, "-m", "losscli", *args]


def timed(cmds: list[list[str]]) -> float:
    t = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


class _EvalClock:
    """Seconds spent in ``losscli.engine.evaluate`` while installed (the loop calls it by
    its module-level name)."""

    def __init__(self):
        import losscli.engine as engine

        self.engine, self.original, self.seconds = engine, engine.evaluate, 0.0

    def __enter__(self):
        def timed_evaluate(*args):
            t = time.perf_counter()
            try:
                return self.original(*args)
            finally:
                self.seconds += time.perf_counter() - t

        self.engine.evaluate = timed_evaluate
        return self

    def __exit__(self, *exc):
        self.engine.evaluate = self.original


def fixed_cost_per_run(task: str, n: int = 8, repeats: int = 3) -> tuple[float, float]:
    """In-process: (T(n one-step runs) - T(1 one-step run)) / (n - 1), best of ``repeats``,
    and the part of it spent in the run's two evals (step 0 and final)."""
    from losscli.results import ResultStore
    from losscli.settings import Settings
    from losscli.suite import JobRequest
    from losscli.sweep import execute, make_plan

    def wall(k: int) -> tuple[float, float]:
        req = JobRequest(task=task, losses=(GRID_LOSS[task],), seeds=tuple(range(k)),
                         settings=Settings(steps=1, eval_every=1))
        with tempfile.TemporaryDirectory() as d, _EvalClock() as clock:
            t = time.perf_counter()
            execute(make_plan([req]), ResultStore(Path(d)), vectorise="never")
            return time.perf_counter() - t, clock.seconds

    wall(1)  # warm: imports, dataset, kernels
    return min(((wn - w1) / (n - 1), (en - e1) / (n - 1))
               for (wn, en), (w1, e1) in ((wall(n), wall(1)) for _ in range(repeats)))


def fixed_cost_per_trial(task: str, repeats: int = 3) -> tuple[float, float, int]:
    """In-process: one loss tuned over the default lr grid (``TUNED_STEPS`` steps, evals
    every ``TUNED_EVAL``) with the data already loaded: (wall - the trials' timed training
    seconds) / trials, the evals' share of it, and the number of trials; best of
    ``repeats``."""
    from losscli.results import ResultStore, read_runs
    from losscli.settings import Settings
    from losscli.suite import JobRequest
    from losscli.sweep import make_plan, tune_plan
    from losscli.tuning import parse_tune

    req = JobRequest(task=task, losses=(GRID_LOSS[task],), seeds=(0,),
                     settings=Settings(steps=TUNED_STEPS, eval_every=TUNED_EVAL),
                     tune=parse_tune(["lr"]))
    plan = make_plan([req])  # data loaded once, outside the timed part
    best = None
    for r in range(repeats + 1):  # the first is warm-up: lazy imports (torchmetrics), kernels
        with tempfile.TemporaryDirectory() as d, _EvalClock() as clock:
            t = time.perf_counter()
            tune_plan(plan, ResultStore(Path(d)))
            wall = time.perf_counter() - t
            trials = read_runs(Path(d))
        trained = float(trials["train_seconds"].sum())
        n = len(trials)
        sample = ((wall - trained) / n, clock.seconds / n, n)
        if r:
            best = sample if best is None or sample[0] < best[0] else best
    return best


def compare(label: str, loop_cmds, sweep_cmds: dict[str, list[str]], repeats: int
            ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"shell loop": [], **{k: [] for k in sweep_cmds}}
    for r in range(repeats):
        times["shell loop"].append(timed(loop_cmds(r)))
        for name, make in sweep_cmds.items():
            times[name].append(timed([make(r)]))
    base = times["shell loop"]
    print(label)
    for name, xs in times.items():
        speed = [b / x for b, x in zip(base, xs, strict=True)]
        print(f"  {name:<20} wall {statistics.median(xs):7.1f} s   speed-up vs shell loop "
              f"min/med/max {min(speed):.2f} / {statistics.median(speed):.2f} / "
              f"{max(speed):.2f}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-untuned", action="store_true")
    ap.add_argument("--skip-tuned", action="store_true")
    ap.add_argument("--csv", type=Path, default=None,
                    help="also write every sample (way, repeat, wall seconds) here")
    args = ap.parse_args()
    rows: list[tuple[str, int, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_untuned:
            suite = tmp / "grid.toml"
            suite.write_text(SUITE.format(seeds=SEEDS, steps=STEPS, eval_every=STEPS,
                                          tune=""))

            def loop(r):
                return [losscli("train", "--task", job, "--loss", loss, "--first-seed",
                                str(s), "--steps", str(STEPS), "--eval-every", str(STEPS),
                                "--quiet", "--out", str(tmp / f"loop{r}-{i}-{s}"))
                        for i, (job, loss) in enumerate(GRID) for s in range(SEEDS)]

            times = compare(
                f"grid: {len(GRID) * SEEDS} runs ({', '.join(f'{j} {lo}' for j, lo in GRID)};"
                f" {SEEDS} seeds; {STEPS} steps each)", loop,
                {"sweep": lambda r: losscli("sweep", str(suite), "--quiet", "--out",
                                            str(tmp / f"sweep{r}")),
                 "sweep --workers 2": lambda r: losscli(
                     "sweep", str(suite), "--quiet", "--workers", "2", "--out",
                     str(tmp / f"pool{r}"))}, args.repeats)
            rows += [(name, r, f"{x:.2f}") for name, xs in times.items()
                     for r, x in enumerate(xs)]
        if not args.skip_tuned:
            tuned = tmp / "tuned.toml"
            tuned.write_text(SUITE.format(seeds=SEEDS, steps=TUNED_STEPS,
                                          eval_every=TUNED_EVAL, tune='tune = ["lr"]\n'))

            def tuned_loop(r):
                return [losscli("train", "--task", job, "--loss", loss, "--seeds", str(SEEDS),
                                "--steps", str(TUNED_STEPS), "--eval-every", str(TUNED_EVAL),
                                "--tune", "lr", "--quiet", "--out", str(tmp / f"tl{r}-{i}"))
                        for i, (job, loss) in enumerate(GRID)]

            times = compare(
                f"tuned grid: the same 4 (job, loss) pairs, --tune lr (7 learning rates, "
                f"successive halving), then {SEEDS} seeds of each winner; {TUNED_STEPS} steps",
                tuned_loop, {"sweep": lambda r: losscli("sweep", str(tuned), "--quiet",
                                                        "--out", str(tmp / f"ts{r}"))},
                args.repeats)
            rows += [(f"tuned {name}", r, f"{x:.2f}") for name, xs in times.items()
                     for r, x in enumerate(xs)]
    for task in GRID_LOSS:
        fixed, evals = fixed_cost_per_run(task)
        print(f"fixed cost per run after the first ({task}, one process): {fixed:.3f} s, of "
              f"which the step-0 and final evals {evals:.3f} s; the rest {fixed - evals:.3f} s")
        rows += [(f"fixed cost per run: {task}", 0, f"{fixed:.4f}"),
                 (f"fixed cost per run: {task}, evals", 0, f"{evals:.4f}")]
    for task in GRID_LOSS:
        fixed, evals, n = fixed_cost_per_trial(task)
        print(f"fixed cost per tuning trial ({task}, {n} trials, one process): {fixed:.3f} s "
              f"besides its training steps, of which validation evals {evals:.3f} s; the "
              f"rest (model and optimizer build, Optuna, store) {fixed - evals:.3f} s")
        rows += [(f"fixed cost per trial: {task}", 0, f"{fixed:.4f}"),
                 (f"fixed cost per trial: {task}, evals", 0, f"{evals:.4f}")]
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("way", "repeat", "seconds"))
            w.writerows(rows)


if __name__ == "__main__":
    main()
