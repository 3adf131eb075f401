"""Many seeds at once: training N seeds as one vmapped model vs one after another.

For each job, in one process and interleaved over repeats: ``run_seeds(...,
vectorised=False)`` and ``run_seeds(..., vectorised=True)`` on the same seeds, timing the
training steps (the runs' own ``train_seconds``; evals excluded). Prints the speed-up
(min / median / max) and what ``--vectorise auto`` would choose (its calibration).

    python benchmarks/seeds.py --jobs reg,mnist --seeds 5 --steps 200
"""

from __future__ import annotations

import argparse
import statistics

import torch

from losscli.engine import TrainConfig, choose_vectorised, run_seeds
from losscli.jobs import create_job
from losscli.losses import create_loss
from losscli.sweep import job_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="reg,mnist,seg")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    print(f"threads {torch.get_num_threads()}, {args.seeds} seeds, {args.steps} steps")
    for name in args.jobs.split(","):
        job = create_job(name)
        data = job_data(job, "cpu")
        loss = create_loss(job.task.losses[0])
        b = job.task.budget
        cfg = TrainConfig(steps=args.steps, batch_size=b.batch_size, lr=b.lr,
                          optimizer=b.optimizer, eval_every=args.steps)
        speed = []
        for _ in range(args.repeats):
            seq = sum(o.train_seconds for o in run_seeds(job, data, loss, cfg, seeds))
            vec = sum(o.train_seconds for o in run_seeds(job, data, loss, cfg, seeds,
                                                          vectorised=True))
            speed.append(seq / vec)
        auto = choose_vectorised(job, data, loss, cfg, seeds)
        print(f"{name:<11}{loss.spec:<8} vectorised speed-up min/med/max {min(speed):.2f} / "
              f"{statistics.median(speed):.2f} / {max(speed):.2f}   auto chooses "
              f"{'vectorised' if auto else 'sequential'}", flush=True)


if __name__ == "__main__":
    main()
