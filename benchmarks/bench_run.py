"""`sa-clip run` at its defaults (64 chains, 12 start times, classic and adaptive clipping):
wall time and peak resident memory of the whole process, and the stage timings it records.

    python benchmarks/bench_run.py [--quick] [--repeats 3] [--threads 2]

Each repeat is a fresh process (``python -m sa_clip.cli run --quiet``), so imports are counted.
Targets (issue 16): at most 15 s wall and 600 MB peak RSS on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import ROOT


def run_once(extra: list[str], threads: int) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) and summary.json of one ``sa-clip run`` process."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sa_clip.cli", "run", "--quiet",
                                 "--out", out, *extra], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"sa-clip run failed with status {status}")
        peak = usage.ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)
        summary = json.loads((Path(out) / "summary.json").read_text())
    return wall, peak, summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="`sa-clip run --quick`, one repeat")
    args = ap.parse_args(argv)
    extra = ["--quick"] if args.quick else []
    repeats = 1 if args.quick else args.repeats
    walls, peaks, summary = [], [], {}
    for _ in range(repeats):
        wall, peak, summary = run_once(extra, args.threads)
        walls.append(wall)
        peaks.append(peak)
    print(f"sa-clip run {' '.join(extra) or '(defaults)'}, {args.threads} threads, "
          f"{repeats} process(es)")
    print(f"wall time  median {statistics.median(walls):6.1f} s   (all: "
          f"{', '.join(f'{w:.1f}' for w in walls)})")
    print(f"peak RSS   max    {max(peaks):6.0f} MB  (all: "
          f"{', '.join(f'{p:.0f}' for p in peaks)})")
    stages = summary["stages"]
    print("stages of the last run (seconds, peak RSS in MB after the stage):")
    for name, sec in stages["seconds"].items():
        print(f"  {name:<20} {sec:7.2f}  {stages['peak_rss_mb_after'][name]:7.0f}")
    for r in summary["results"]:
        print(f"  {r['label']}: ODE {r['ode_nfev']} H evaluations, tracking "
              f"{r['tracking_nfev']}")


if __name__ == "__main__":
    main()
