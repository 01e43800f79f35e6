"""`sa-clip run` at its defaults (64 chains, 12 start times, classic and adaptive clipping):
wall time and memory of the whole job, and the stage timings it records.

    python benchmarks/bench_run.py [--quick] [--repeats 3] [--threads 2] [--no-baseline]

Each repeat is a fresh process (``python -m sa_clip.cli run --quiet``), so imports are counted,
and is followed by a baseline run with ``--workers 1`` (the rules one after another in one
process), so the speed-up is measured in the same session. The rules run in forked worker
processes by default, so memory is reported three ways: the peak RSS of the main process, the
largest peak RSS of a worker, and the peak of the summed PSS of all processes (shared library
and copy-on-write pages counted once), which is the memory the job occupies.
Targets (issue 16): at most 15 s wall and 600 MB on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _timing import ROOT


def _tree(root: int) -> list[int]:
    """``root`` and its living descendants (from /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    return out


def _pss_mb(pid: int) -> float:
    """Proportional set size of one process in MB: its private pages plus its share of the
    pages it shares (the libraries and the copy-on-write pages of a fork), so the PSS of
    several processes adds up to the memory they occupy together."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory(threading.Thread):
    """Samples the summed PSS of a process and its children every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.peak_procs = pid, every, 0.0, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            pids = _tree(self.pid)
            total = sum(_pss_mb(p) for p in pids)
            if total > self.peak:
                self.peak, self.peak_procs = total, len(pids)
            self.halt.wait(self.every)


def run_once(extra: list[str], threads: int, sample: bool = False
             ) -> tuple[float, float, float, float, dict]:
    """Wall seconds, peak RSS of the main process and of its largest worker (MB), peak summed
    PSS of the process tree (MB; NaN unless ``sample``) and summary.json of one ``sa-clip
    run`` process. Sampling PSS costs CPU (reading smaps takes milliseconds per process), so
    timed runs do not sample."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sa_clip.cli", "run", "--quiet",
                                 "--out", out, *extra], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL)
        mem = TreeMemory(proc.pid) if sample and sys.platform.startswith("linux") else None
        if mem is not None:
            mem.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if mem is not None:
            mem.halt.set()
            mem.join()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"sa-clip run failed with status {status}")
        scale = 2 ** 20 if sys.platform == "darwin" else 2 ** 10
        summary = json.loads((Path(out) / "summary.json").read_text())
        workers = [r["worker"]["peak_rss_mb"] for r in summary["results"] if r.get("worker")]
    return wall, usage.ru_maxrss / scale, max(workers, default=0.0), \
        (mem.peak if mem is not None else float("nan")), summary


def _report(title: str, runs: list[tuple[float, float, float, float, dict]],
            sampled: tuple[float, float, float, float, dict] | None) -> None:
    walls, peaks, wpeaks = ([r[k] for r in runs] for k in range(3))

    def line(name: str, stat: str, unit: str, values: list[float], fmt: str) -> None:
        v = statistics.median(values) if stat == "median" else max(values)
        print(f"  {name:<22} {stat:<6} {v:{fmt}} {unit:<3} (all: "
              f"{', '.join(f'{x:{fmt}}' for x in values)})")

    print(title)
    line("wall time", "median", "s", walls, "6.1f")
    line("peak RSS, main", "max", "MB", peaks, "6.0f")
    if max(wpeaks) > 0:
        line("peak RSS, a worker", "max", "MB", wpeaks, "6.0f")
    if sampled is not None:
        print(f"  {'peak PSS, all together':<22} {'':<6} {sampled[3]:6.0f} MB  (a separate run, "
              f"sampled every 50 ms; it took {sampled[0]:.1f} s)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="`sa-clip run --quick`, one repeat")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the `--workers 1` runs (rules one after another in one process)")
    args = ap.parse_args(argv)
    extra = ["--quick"] if args.quick else []
    repeats = 1 if args.quick else args.repeats
    runs, base = [], []
    for _ in range(repeats):                  # interleaved, so drifts hit both alike
        runs.append(run_once(extra, args.threads))
        if not args.no_baseline:
            base.append(run_once([*extra, "--workers", "1"], args.threads))
    sampled = run_once(extra, args.threads, sample=True)
    summary = runs[-1][-1]
    print(f"sa-clip run {' '.join(extra) or '(defaults)'}, OMP_NUM_THREADS={args.threads}, "
          f"{repeats} process(es) each; the summed PSS of all processes is the memory they "
          "occupy together (shared pages counted once)")
    workers = [r["worker"] for r in summary["results"] if r.get("worker")]
    _report(f"default: {len(workers) or 1} worker process(es)", runs, sampled)
    if base:
        _report("baseline --workers 1 (rules one after another)", base, None)
        ratio = statistics.median(b[0] for b in base) / statistics.median(r[0] for r in runs)
        print(f"  speed-up of the default over the baseline: {ratio:.2f}x (median wall times)")
    stages = summary["stages"]
    print("stages of the last default run (seconds; peak RSS of the main process after it):")
    for name, sec in stages["seconds"].items():
        print(f"  {name:<20} {sec:7.2f}  {stages['peak_rss_mb_after'][name]:7.0f}")
    for r in summary["results"]:
        w = r.get("worker")
        where = (f", in worker pid {w['pid']} ({w['threads']} thread(s), peak RSS "
                 f"{w['peak_rss_mb']:.0f} MB)") if w else ""
        print(f"  {r['label']}: ODE {r['ode_nfev']} H evaluations, tracking "
              f"{r['tracking_nfev']}{where}")


if __name__ == "__main__":
    main()
