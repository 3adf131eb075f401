"""A whole losscli command's wall time on an idle machine and with one CPU-bound competing
process per core (started and stopped here): losscli's thread defaults against
``--threads N`` (torch's default count, which switches losscli's governor off).

    python benchmarks/busy_job.py --repeats 2
    python benchmarks/busy_job.py -- check tasks/ci.toml --quiet

By default the command is the README's main job (mnist, 3 losses, 2 seeds). Prints each
wall time, the thread counts its runs trained at (runs.csv ``threads``) and busy / idle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAIN = ["train", "--task", "mnist", "--loss", "ce", "--loss", "focal:gamma=2", "--loss",
        "label_smoothing:epsilon=0.1", "--seeds", "2", "--quiet", "--format", "csv"]


def _timed(args: list[str], extra: list[str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d, "run")
        t = time.perf_counter()
        where = ["--out", str(out)] if args[0] in ("train", "sweep") else []
        res = subprocess.run([sys.executable, "-m", "losscli", *args, *extra, *where],
                             capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t
        if res.returncode not in (0, 1):  # check exits 1 on a regression: still a timing
            raise SystemExit(f"exit {res.returncode}: {res.stderr[-2000:]}")
        threads = ""
        runs = out / "runs.csv"
        if runs.exists():
            import pandas as pd

            threads = ",".join(str(t) for t in sorted(pd.read_csv(runs)["threads"].unique()))
    return wall, threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="the fixed count to compare with (default: the CPU count)")
    ap.add_argument("--loads", default="idle,busy")
    ap.add_argument("command", nargs="*", help="losscli arguments (default: the main job)")
    args = ap.parse_args()
    cmd = args.command or MAIN
    ways = {"losscli defaults": [], f"--threads {args.threads}": ["--threads",
                                                                   str(args.threads)]}
    walls: dict[tuple[str, str], list[float]] = {}
    loads = args.loads.split(",")
    for load in loads:
        for r in range(args.repeats):
            for name, extra in ways.items():
                spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                        for _ in range(os.cpu_count() or 1)] if load == "busy" else []
                try:
                    wall, threads = _timed(cmd, extra)
                finally:
                    for p in spin:
                        p.kill()
                walls.setdefault((load, name), []).append(wall)
                print(f"  {load} #{r} {name}: {wall:.1f} s (threads {threads})", flush=True)
    print(f"losscli {' '.join(cmd)}; {os.cpu_count()} CPUs; busy = one CPU-bound process "
          f"per core; median of {args.repeats}")
    for name in ways:
        med = {lo: statistics.median(walls[(lo, name)]) for lo in loads}
        line = "  ".join(f"{lo} {w:7.1f} s" for lo, w in med.items())
        ratio = f"  busy/idle {med['busy'] / med['idle']:.2f}" if len(med) == 2 else ""
        print(f"{name:20s} {line}{ratio}")


if __name__ == "__main__":
    main()
