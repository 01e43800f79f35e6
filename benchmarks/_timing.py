"""Timing helpers shared by the benchmarks: median of repeats after warm-up (alone or
round-robin), peak memory, and the repository root on ``sys.path`` so that
``python benchmarks/<name>.py`` works without installing sa_clip."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:        # run as `python benchmarks/<name>.py` without installing
    sys.path.insert(0, ROOT)


def add_repo_to_path() -> None:
    """Make ``import sa_clip`` work when run as ``python benchmarks/<name>.py`` from a checkout."""
    try:
        import sa_clip  # noqa: F401
    except ImportError:
        sys.path.insert(0, ROOT)


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work (no-op on CPU), so wall-clock times are real."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                device: torch.device | str | None = None) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 5,
                        warmup: int = 1, device: torch.device | str | None = None
                        ) -> dict[str, float]:
    """Median seconds of each function, timed round-robin (one call of each per round), so
    that a change of machine load during the run hits every entry alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``getrusage``; Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2 ** 20


def current_rss_mib() -> float:
    """Current resident set size, MiB (from /proc on Linux; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return peak_rss_mib()


def fmt_row(cells: list[object], widths: list[int]) -> str:
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))


def add_keep_freed_memory_option(ap) -> None:
    """``--keep-freed-memory`` on a benchmark's parser (see :func:`rerun_keeping_freed_memory`)."""
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="run in a child process with glibc malloc told to keep freed memory "
                         "(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_): no page faults "
                         "after the warm-up, so the ratios show the arithmetic alone")


def rerun_keeping_freed_memory(args, script: str, argv=None) -> None:
    """With ``--keep-freed-memory``, run ``script`` again in a child whose glibc keeps freed
    memory, and exit with its status; otherwise (or in that child) return."""
    if args.keep_freed_memory and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2 ** 30),
                   MALLOC_TRIM_THRESHOLD_=str(2 ** 32))
        child = [sys.executable, os.path.abspath(script),
                 *(sys.argv[1:] if argv is None else argv)]
        sys.exit(subprocess.call(child, env=env))
