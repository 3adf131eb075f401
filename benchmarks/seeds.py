"""Many seeds at once: training N seeds as one vmapped model vs one after another.

For each job, in one process and interleaved over repeats: ``run_seeds(...,
vectorised=False)`` and ``run_seeds(..., vectorised=True)`` on the same seeds, timing the
training steps (the runs' own ``train_seconds``; evals excluded). Prints the speed-up
(min / median / max) and what ``--vectorise auto`` would choose (its calibration).

    python benchmarks/seeds.py --jobs reg,mnist --seeds 5 --steps 200
    python benchmarks/seeds.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _jobs import job_settings, jobs_with_data

from losscli.engine import resolve_device, run_seeds
from losscli.losses import create_loss
from losscli.vectorised import Calibration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="reg,mnist,seg")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    seeds = list(range(args.seeds))
    print(f"device {device}, threads {torch.get_num_threads()}, {args.seeds} seeds, "
          f"{args.steps} steps")
    for job, data in jobs_with_data(args.jobs, device):
        name = job.name
        loss = create_loss(job.task.losses[0])
        cfg = job_settings(job, data, device, steps=args.steps, eval_every=args.steps)
        speed = []
        for _ in range(args.repeats):
            seq = sum(o.train_seconds for o in run_seeds(job, data, loss, cfg, seeds))
            vec = sum(o.train_seconds for o in run_seeds(job, data, loss, cfg, seeds,
                                                          vectorised=True))
            speed.append(seq / vec)
        auto = Calibration().choose(job, data, loss, cfg, seeds)
        print(f"{name:<11}{loss.spec:<8} vectorised speed-up min/med/max {min(speed):.2f} / "
              f"{statistics.median(speed):.2f} / {max(speed):.2f}   auto chooses "
              f"{'vectorised' if auto else 'sequential'}", flush=True)


if __name__ == "__main__":
    main()
