"""Give freed heap memory back to the operating system between the stages of a long job.

PyTorch's CPU tensors come from the C allocator. After a stage that allocates and frees many
mid-sized tensors (a batched ODE solve, a chunked loss), glibc keeps the freed pages in its
heap, so the resident size of a job that runs stages one after another creeps up to the sum
of what each stage fragmented, not the peak of the largest stage. ``malloc_trim(0)`` hands
those pages back; it costs well under a millisecond when there is nothing to return.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


__all__ = ["release_memory"]
