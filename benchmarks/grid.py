"""Grid throughput: a fixed small grid run three ways, wall time side by side.

(a) a shell loop of ``losscli train`` processes, one per (job, loss, seed): every run pays
    for Python start-up, importing torch, and building its dataset;
(b) one ``losscli sweep`` process;
(c) ``losscli sweep --workers 2``.

Also the fixed cost per run after the first inside one process: the wall time of N
one-step runs minus that of one, divided by N - 1 (target <= 0.2 s).

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

SUITE = """name = "grid-bench"
seeds = {seeds}
[defaults]
steps = {steps}
eval_every = {steps}
""" + "".join(f'[[job]]\ntask = "{job}"\nlosses = ["{loss}"]\n' for job, loss in GRID)


def losscli(*args: str) -> list[str]:
    return [sys.executable, "-m", "losscli", *args]


def timed(cmds: list[list[str]]) -> float:
    t = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def fixed_cost_per_run(task: str, n: int = 8, repeats: int = 3) -> tuple[float, float]:
    """In-process: (T(n one-step runs) - T(1 one-step run)) / (n - 1), best of ``repeats``,
    and the part of it spent in the run's two evals (step 0 and final), timed by wrapping
    the engine's eval call."""
    import losscli.engine as engine
    from losscli.results import ResultStore
    from losscli.suite import JobRequest, Overrides
    from losscli.sweep import execute, make_plan

    eval_time = [0.0]
    evaluate = engine._evaluate

    def timed_evaluate(*args):
        t = time.perf_counter()
        try:
            return evaluate(*args)
        finally:
            eval_time[0] += time.perf_counter() - t

    def wall(k: int) -> tuple[float, float]:
        req = JobRequest(task=task, losses=(GRID_LOSS[task],), seeds=tuple(range(k)),
                         overrides=Overrides(steps=1, eval_every=1))
        eval_time[0] = 0.0
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            execute(make_plan([req]).runs, ResultStore(Path(d)), vectorise="never")
            return time.perf_counter() - t, eval_time[0]

    engine._evaluate = timed_evaluate
    try:
        wall(1)  # warm: imports, dataset, kernels
        best = min(((wn - w1) / (n - 1), (en - e1) / (n - 1))
                   for (wn, en), (w1, e1) in ((wall(n), wall(1)) for _ in range(repeats)))
    finally:
        engine._evaluate = evaluate
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--csv", type=Path, default=None,
                    help="also write every sample (way, repeat, wall seconds) here")
    args = ap.parse_args()
    runs = len(GRID) * SEEDS
    print(f"grid: {runs} runs ({', '.join(f'{j} {lo}' for j, lo in GRID)}; {SEEDS} seeds; "
          f"{STEPS} steps each)")
    times: dict[str, list[float]] = {"shell loop": [], "sweep": [], "sweep --workers 2": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        suite = tmp / "grid.toml"
        suite.write_text(SUITE.format(seeds=SEEDS, steps=STEPS))
        for r in range(args.repeats):
            loop = [losscli("train", "--task", job, "--loss", loss, "--first-seed", str(s),
                            "--steps", str(STEPS), "--eval-every", str(STEPS), "--quiet",
                            "--out", str(tmp / f"loop{r}-{i}-{s}"))
                    for i, (job, loss) in enumerate(GRID) for s in range(SEEDS)]
            times["shell loop"].append(timed(loop))
            times["sweep"].append(timed([losscli("sweep", str(suite), "--quiet", "--out",
                                                 str(tmp / f"sweep{r}"))]))
            times["sweep --workers 2"].append(timed([losscli(
                "sweep", str(suite), "--quiet", "--workers", "2", "--out",
                str(tmp / f"pool{r}"))]))
    base = times["shell loop"]
    for label, xs in times.items():
        speed = [b / x for b, x in zip(base, xs, strict=True)]
        print(f"{label:<20} wall {statistics.median(xs):7.1f} s   speed-up vs shell loop "
              f"min/med/max {min(speed):.2f} / {statistics.median(speed):.2f} / "
              f"{max(speed):.2f}")
    rows = [(label, r, f"{x:.2f}") for label, xs in times.items() for r, x in enumerate(xs)]
    for task in GRID_LOSS:
        fixed, evals = fixed_cost_per_run(task)
        print(f"fixed cost per run after the first ({task}, one process): {fixed:.3f} s, of "
              f"which the step-0 and final evals {evals:.3f} s; the rest {fixed - evals:.3f} s")
        rows += [(f"fixed cost per run: {task}", 0, f"{fixed:.4f}"),
                 (f"fixed cost per run: {task}, evals", 0, f"{evals:.4f}")]
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("way", "repeat", "seconds"))
            w.writerows(rows)


if __name__ == "__main__":
    main()
