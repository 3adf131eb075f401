"""Harness overhead: losscli's training step vs a minimal loop and vs the usual script.

For each job, in one process and interleaved over repeats, three ways to train the same
model with the same loss, optimizer and batch size for the same number of steps:

* ``losscli``: the engine (``losscli.engine.run_one``), its own train-time measurement
  (evals and warm-up excluded, as in runs.csv);
* ``minimal``: a hand-written loop over the same device-resident data, bound loss and model
  (prepared as the engine prepares it: ``channels_last``), with no logging and no sync but
  one at the end;
* ``script``: the PyTorch-tutorial way: the model as built (NCHW), a ``DataLoader`` over
  a ``TensorDataset`` (shuffle, per-sample collation) and ``loss.item()`` every step.

Prints samples/s of each and the ratios losscli/minimal (target >= 0.97 on CPU, 0.95 on a
GPU) and losscli/script (target >= 1.0 on CPU, 2 on a GPU): min / median / max over
repeats.

    python benchmarks/overhead.py --repeats 5 --steps 60
    python benchmarks/overhead.py --jobs mnist,reg --device cuda
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from _jobs import job_settings, jobs_with_data, train_tensors

from losscli.engine import make_optimizer, prepare_model, resolve_device, run_one, sync
from losscli.jobs import job_names
from losscli.losses import create_loss

WARMUP = 5


def _cfg(job, data, steps: int, device: str):
    # one eval at the end only: evals are excluded from every timing anyway
    return job_settings(job, data, device, steps=steps + WARMUP, eval_every=steps + WARMUP,
                        warmup_steps=WARMUP)


def bench_losscli(job, data, loss, cfg) -> float:
    out = run_one(job, data, loss, cfg, seed=0)
    if out.status != "ok":
        raise RuntimeError(out.error)
    return out.timed_samples / out.train_seconds


def bench_minimal(job, data, loss, cfg) -> float:
    torch.manual_seed(0)
    device = torch.device(cfg.device)
    model = prepare_model(job.build_model(data), device)
    opt = make_optimizer(cfg, model.parameters())
    objective = job.bind(loss, data)
    gen = torch.Generator(device=device).manual_seed(0)
    (train_x, train_y), bs = train_tensors(data), cfg.batch_size
    n = len(train_x)
    perm, pos = torch.randperm(n, device=device, generator=gen), 0
    for step in range(cfg.steps):
        if step == WARMUP:
            sync(device)
            t0 = time.perf_counter()
        if pos + bs > n:
            perm, pos = torch.randperm(n, device=device, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        value = objective(model(train_x[idx]), train_y[idx])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    sync(device)
    return (cfg.steps - WARMUP) * bs / (time.perf_counter() - t0)


def bench_script(job, data, loss, cfg) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    device = torch.device(cfg.device)
    model = job.build_model(data).to(device)
    opt = make_optimizer(cfg, model.parameters())
    objective = job.bind(loss, data)
    cpu = tuple(t.cpu() for t in train_tensors(data))
    loader = DataLoader(TensorDataset(*cpu), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True)
    step, t0 = 0, None
    while step < cfg.steps:
        for x, y in loader:
            if step == WARMUP:
                t0 = time.perf_counter()
            x, y = x.to(device), y.to(device)
            value = objective(model(x), y)
            opt.zero_grad()
            value.backward()
            opt.step()
            _ = value.item()  # the tutorial's running-loss print: a sync every step
            step += 1
            if step == cfg.steps:
                break
    return (cfg.steps - WARMUP) * cfg.batch_size / (time.perf_counter() - t0)


def _stats(xs: list[float]) -> str:
    return f"{min(xs):.3f} / {statistics.median(xs):.3f} / {max(xs):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default=",".join(job_names()))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--csv", type=Path, default=None,
                    help="also write every sample (job, repeat, way, samples/s) here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{args.steps} timed steps, {args.repeats} interleaved repeats")
    print(f"{'job':<11}{'loss':<16}{'losscli/s':>11}{'minimal/s':>11}{'script/s':>10}   "
          f"{'losscli/minimal min/med/max':<29}{'losscli/script min/med/max'}")
    rows: list[tuple] = []
    for job, data in jobs_with_data(args.jobs, device):
        name = job.name
        loss = create_loss(job.task.losses[0])
        cfg = _cfg(job, data, args.steps, device)
        runs: dict[str, list[float]] = {"losscli": [], "minimal": [], "script": []}
        for _ in range(args.repeats):
            for label, fn in (("losscli", bench_losscli), ("minimal", bench_minimal),
                              ("script", bench_script)):
                runs[label].append(fn(job, data, loss, cfg))
        vs_min = [a / b for a, b in zip(runs["losscli"], runs["minimal"], strict=True)]
        vs_script = [a / b for a, b in zip(runs["losscli"], runs["script"], strict=True)]
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows += [(name, loss.spec, device, torch.get_num_threads(), r, label, f"{v:.1f}")
                 for label, xs in runs.items() for r, v in enumerate(xs)]
        print(f"{name:<11}{loss.spec[:15]:<16}{med['losscli']:>11,.0f}{med['minimal']:>11,.0f}"
              f"{med['script']:>10,.0f}   {_stats(vs_min):<29}{_stats(vs_script)}", flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("job", "loss", "device", "threads", "repeat", "way", "samples_per_s"))
            w.writerows(rows)


if __name__ == "__main__":
    main()
