"""Memory of long jobs: give freed heap memory back to the operating system between stages,
test large tensors for finite rows without a hidden copy, and read the peak resident size.

PyTorch's CPU tensors come from the C allocator. After a stage that allocates and frees many
mid-sized tensors (a batched ODE solve, a chunked loss), glibc keeps the freed pages in its
heap, so the resident size of a job that runs stages one after another creeps up to the sum
of what each stage fragmented, not the peak of the largest stage. ``malloc_trim(0)`` hands
those pages back; it costs well under a millisecond when there is nothing to return.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``); ``False`` where there is no
    glibc (macOS, Windows, musl), where this is a no-op.

    Example
    -------
    >>> isinstance(release_memory(), bool)
    True
    """
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


#: rows per chunk of :func:`finite_rows`
FINITE_ROWS = 1024


def finite_rows(x: Any) -> Any:
    """``isfinite(x).all(-1)`` for a tensor ``x (..., P)``, :data:`FINITE_ROWS` rows at a time.

    ``torch.isfinite`` of a float tensor builds ``abs(x)`` first, a full-size float copy: for
    the 64 x 301 x 275 ensemble of ``sa-clip run`` that is 42 MB for a 5 MB answer.

    Example
    -------
    >>> import torch
    >>> finite_rows(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]])).tolist()
    [True, False]
    """
    import torch

    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty(rows.shape[0], dtype=torch.bool, device=x.device)
    for i in range(0, rows.shape[0], FINITE_ROWS):
        out[i:i + FINITE_ROWS] = torch.isfinite(rows[i:i + FINITE_ROWS]).all(1)
    return out.reshape(x.shape[:-1])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (``getrusage``'s ``ru_maxrss``:
    kilobytes on Linux, bytes on macOS; NaN where there is no ``getrusage``, as on Windows).

    Example
    -------
    >>> peak_rss_mb() > 0
    True
    """
    try:
        import resource  # POSIX only
    except ImportError:             # pragma: no cover - Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2; v1's
    ``memory.limit_in_bytes - memory.usage_in_bytes``), or None when unlimited or unknown."""
    rel = ""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    rel = line.strip()[3:]
    except OSError:
        return None
    for base in (f"/sys/fs/cgroup{rel}", "/sys/fs/cgroup"):
        limit = _read_int(os.path.join(base, "memory.max"))
        if limit is not None:
            used = _read_int(os.path.join(base, "memory.current")) or 0
            return max(limit - used, 0)
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit is not None and limit < 2 ** 60:
        used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        return max(limit - used, 0)
    return None


def _address_space_room() -> int | None:
    """``RLIMIT_AS`` (soft) minus the address space this process already maps, or None when
    unlimited or unknown (``ulimit -v`` sets it)."""
    try:
        import resource  # POSIX only
    except ImportError:             # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    pages = None
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    used = pages * os.sysconf("SC_PAGE_SIZE") if pages is not None else 0
    return max(soft - used, 0)


def memory_room() -> tuple[int | None, str]:
    """Bytes this process can still allocate on the CPU and what sets the bound: the least of
    physical memory, the room under ``RLIMIT_AS`` and the room under the cgroup's
    ``memory.max``. ``(None, "unknown")`` where none can be read.

    Example
    -------
    >>> room, why = memory_room()
    >>> room is None or room > 0
    True
    """
    found = []
    try:
        found.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                      "physical memory"))
    except (ValueError, OSError, AttributeError):
        pass
    room = _address_space_room()
    if room is not None:
        found.append((room, "room under the process limit RLIMIT_AS (ulimit -v)"))
    room = _cgroup_room()
    if room is not None:
        found.append((room, "room under the cgroup limit memory.max"))
    if not found:
        return None, "unknown"
    return min(found)


def run_memory(*, P: int, chains: int, steps: int, record_every: int, itemsize: int,
               rules: int = 1, workers: int = 1, plane: bool = False) -> dict[str, int]:
    """Bytes the largest arrays of :func:`sa_clip.run_experiment` (and, with ``plane``,
    ``sa-clip run``'s PCA plane and figures) need, by part, for ``rules`` rules of which
    ``workers`` run at once: the recorder ``chains x records x (P + 1)`` of each running
    rule, the ODE path ``records x P``, the PCA plane
    (:func:`pca_memory`, over the chains and the ODE path) and the figures'
    projected points (two float64 coordinates per point, plus 200 MB for the canvases).

    Example
    -------
    >>> parts = run_memory(P=10 ** 6, chains=16, steps=300, record_every=5, itemsize=8,
    ...                    plane=True)
    >>> round(parts["recorder"] / 2 ** 30, 1)
    7.3
    """
    records = steps // record_every + 1 + (steps % record_every != 0)
    running = max(1, min(int(workers), int(rules)))
    parts = {"recorder": running * chains * records * (P + 1) * itemsize,
             "ODE path": running * records * P * itemsize}
    if plane:
        n = (chains + 1) * records
        parts["PCA plane"] = pca_memory(n, P)
        parts["figures"] = 16 * n + 200 * 2 ** 20
    return parts


def pca_rows(chunk: int, P: int) -> int:
    """Rows per chunk of :func:`sa_clip.plane.pca_plane`: ``chunk``, fewer for wide points
    (at most 2^24 numbers, 128 MB in float64, per centred chunk)."""
    return max(1, min(int(chunk), 2 ** 24 // max(int(P), 1)))


def pca_memory(n_points: int, P: int, chunk: int = 1024) -> int:
    """Bytes :func:`sa_clip.plane.pca_plane` needs for ``n_points`` points of ``P`` numbers:
    the float64 Gram matrix of side ``min(n, P)``, two centred chunks, the mean and the
    directions.

    >>> round(pca_memory(1037, 10 ** 6) / 2 ** 20)
    283
    """
    side = min(int(n_points), int(P))
    return 8 * (side * side + 2 * min(pca_rows(chunk, P), int(n_points)) * int(P)
                + 4 * int(P))


def check_run_memory(parts: dict[str, int], what: str) -> None:
    """Refuse, before any compute, sizes whose arrays (``parts``: name -> bytes) cannot fit in
    what this process may allocate (:func:`memory_room`), with the numbers."""
    room, why = memory_room()
    need = sum(parts.values())
    if room is None or need <= room:
        return
    gib = 2 ** 30
    detail = ", ".join(f"{k} {v / gib:.3g} GiB" for k, v in parts.items())
    raise ValueError(f"{what} needs about {need / gib:.3g} GiB ({detail}), more than the "
                      f"{room / gib:.3g} GiB of {why}; reduce --chains / chains, --steps / "
                      "steps, raise --record-every / record_every, or use a smaller network.")


__all__ = ["release_memory", "peak_rss_mb", "finite_rows", "memory_room", "run_memory",
           "check_run_memory", "pca_memory"]
