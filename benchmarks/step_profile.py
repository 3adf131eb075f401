"""Profile each job's training step: the operators that take its time, the share left to
Python, and any operator that would make a GPU wait on the host (``losscli.profiling``).

    python benchmarks/step_profile.py                      # every job, its first default loss
    python benchmarks/step_profile.py --jobs seg --loss dice --steps 10 --device cuda

For a Python-level view of a whole sweep (imports, data, store writes), use py-spy:

    py-spy record -o sweep.svg -- python -m losscli sweep tasks/ci.toml --out /tmp/ci
"""

from __future__ import annotations

import argparse

import torch
from _jobs import job_settings, jobs_with_data

from losscli.engine import resolve_device
from losscli.jobs import job_names
from losscli.losses import create_loss
from losscli.profiling import profile_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default=",".join(job_names()))
    ap.add_argument("--loss", default=None, help="loss spec (default: each job's first)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=6)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{args.steps} profiled steps (profiler overhead included)")
    for job, data in jobs_with_data(args.jobs, device):
        name = job.name
        loss = create_loss(args.loss or job.task.losses[0])
        cfg = job_settings(job, data, device, steps=args.steps)
        p = profile_steps(job, data, loss, cfg, steps=args.steps, top=args.top)
        syncs = ", ".join(f"{k} x{v}" for k, v in p.syncs.items()) or "none"
        print(f"\n{name} ({loss.spec}): {p.ms_per_step:.1f} ms/step, operators "
              f"{100 * p.aten_share:.0f} % of it (the rest: Python and the profiler); "
              f"host syncs per step: {syncs}")
        for op, ms, calls in p.top:
            print(f"  {op:<44}{ms:8.2f} ms {calls:5d} calls")


if __name__ == "__main__":
    main()
