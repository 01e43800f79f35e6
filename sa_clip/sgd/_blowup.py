"""Which chains left the safe region at this step: one norm pass over the ``(K, P)`` iterates."""

from __future__ import annotations

import math

import torch


def bad_rows(new: torch.Tensor, radius: float) -> torch.Tensor:
    """Rows of ``new`` that are non-finite or have ``||row|| > radius`` (``(K,)`` bool).

    One norm pass instead of an ``isfinite`` pass and a norm pass: a NaN entry makes the norm
    NaN and an inf entry makes it inf, so ``~(norm <= radius)`` is the test, except for an
    infinite ``radius``, where an infinite norm may come from finite entries whose squares
    overflow: those rows (rare) are checked entry by entry.
    """
    norm = torch.linalg.vector_norm(new, dim=1)
    bad = ~(norm <= radius)
    if math.isinf(radius):
        inf = torch.isinf(norm)
        if bool(inf.any()):
            bad[inf] = ~torch.isfinite(new[inf]).all(1)
    return bad
