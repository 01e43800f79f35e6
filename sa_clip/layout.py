"""The geometry of the flat parameter vector ``theta``: its blocks, groups and coordinate names.

``theta`` is the concatenation, in ``model.named_parameters()`` order, of the model's trainable
parameter tensors, each flattened row-major. A :class:`Block` is one such tensor as a slice of
``theta``; a :class:`Layout` is all of them, plus the groups the clipping rules take norms over
(one group, one per tensor, or one per output unit); :func:`group_norms` computes those norms.
This module knows nothing about data, models or losses: everything above it (problems,
clipping rules, the mean field) imports it, it imports only the validators.

Example
-------
>>> import torch
>>> lay = Layout((Block("w", (2, 3), 0, 6), Block("b", (2,), 6, 8)))
>>> lay.group_sizes("unit"), lay.coordinate_name(7)
([3, 3, 2], 'b[1]')
>>> group_norms(torch.ones(8), lay, "layer")
tensor([2.4495, 1.4142])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._validate import check_choice

GRANULARITIES = ("global", "layer", "unit")


@dataclass(frozen=True)
class Block:
    """One parameter tensor of the model, as a slice of the flat vector ``theta``.

    ``theta[start:stop].view(shape)`` is the tensor named ``name``.
    """

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def units(self) -> int:
        """Output units (rows, dim 0) for tensors with 2+ dims; 0-d and 1-d tensors are one unit."""
        return self.shape[0] if len(self.shape) >= 2 else 1


class Layout:
    """The blocks of ``theta`` and the groups the clipping rules take norms over.

    Granularity ``"global"`` is one group; ``"layer"`` one group per parameter tensor;
    ``"unit"`` one group per output unit (dim-0 slice) of tensors with two or more dims, 0-d and
    1-d tensors as a whole (timm's ``unitwise_norm``). Every group is a contiguous range of
    ``theta`` since tensors are flattened row-major.
    """

    def __init__(self, blocks: tuple[Block, ...]):
        self.blocks = blocks
        self.size = blocks[-1].stop if blocks else 0
        self._cache: dict[tuple[str, torch.device], tuple[torch.Tensor, int]] = {}

    def __repr__(self) -> str:
        return f"Layout(size={self.size}, blocks={[b.name for b in self.blocks]})"

    def group_sizes(self, granularity: str) -> list[int]:
        """Sizes of the contiguous groups, in order."""
        check_choice("granularity", granularity, GRANULARITIES)
        if granularity == "global":
            return [self.size]
        if granularity == "layer":
            return [b.numel for b in self.blocks]
        sizes = []
        for b in self.blocks:
            sizes += [b.numel // b.units] * b.units
        return sizes

    def groups(self, granularity: str, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, int]:
        """``(index, n_groups)``: ``index[p]`` is the group of coordinate ``p`` (shape ``(P,)``)."""
        key = (granularity, torch.device(device))
        if key not in self._cache:
            sizes = self.group_sizes(granularity)
            index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            self._cache[key] = (index.to(device), len(sizes))
        return self._cache[key]

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat ``theta`` of shape ``(P,)`` as the model's named tensors."""
        return {b.name: theta[b.start:b.stop].view(b.shape) for b in self.blocks}

    def coordinate_name(self, k: int) -> str:
        """The name of coordinate ``k`` of ``theta``: ``"w"`` for a one-number tensor ``w``,
        ``"w[j]"`` for entry ``j`` of a flattened tensor ``w``; ``"theta[k]"`` outside the
        blocks (``k`` must be an integer in ``[0, P)`` otherwise)."""
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"`k` must be an integer coordinate index, got {k!r}.")
        k = int(k)
        for b in self.blocks:
            if b.start <= k < b.stop:
                return b.name if b.numel == 1 else f"{b.name}[{k - b.start}]"
        return f"theta[{k}]"

    def coordinate_names(self) -> list[str]:
        """:meth:`coordinate_name` of every coordinate, in ``theta`` order (length ``P``)."""
        return [b.name if b.numel == 1 else f"{b.name}[{j}]"
                for b in self.blocks for j in range(b.numel)]


def group_norms(x: torch.Tensor, layout: Layout, granularity: str) -> torch.Tensor:
    """Euclidean norms of ``x`` (shape ``(..., P)``) over the groups of ``granularity``.

    Returns shape ``(..., G)``. Differentiable everywhere, a zero norm included (its
    derivative is taken as 0 instead of sqrt's infinite slope). Entries whose squares would
    overflow (``|x| ~ 1e200`` in float64) are scaled first (:func:`stable_norm`).
    """
    check_choice("granularity", granularity, GRANULARITIES)
    if granularity == "global":
        return stable_norm([x], safe=True).unsqueeze(-1)  # no (..., P) temporary
    # groups are contiguous: per-block sums over reshaped views (a loop over parameter
    # tensors, not samples) are several times faster than a scatter-add over P
    lead = x.shape[:-1]
    parts = []
    for b in layout.blocks:
        blk = x[..., b.start:b.stop]
        k = b.units if granularity == "unit" else 1
        parts.append(stable_norm([blk.reshape(*lead, k, b.numel // k)], safe=True))
    return torch.cat(parts, -1)


def safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """``sqrt`` of squared norms with derivative 0 at 0 (not sqrt's infinite slope), so a zero
    gradient group differentiates to 0 (used by :func:`group_norms` and the fast engine)."""
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def norm_scale(m: torch.Tensor) -> torch.Tensor:
    """A power of two ``s`` per entry of ``m`` (the largest ``|x|`` of a vector) such that the
    squares of ``x / s`` cannot overflow (nor underflow to 0), and ``s = 1`` wherever the
    plain squares are safe (``m`` in ``[2^(-1022/2 + 24), 2^(1023/2 - 24)]``: about
    ``[2e-147, 1e147]`` in float64, ``[2e-12, 1e12]`` in float32), or ``m`` is 0 or not
    finite. Dividing by a power of two is exact, so ``s * ||x / s|| = ||x||`` to the last bit
    where nothing overflows. Detached: ``||x||`` does not depend on ``s``."""
    m = m.detach()
    fi = torch.finfo(m.dtype)
    top, bottom = math.floor(math.log2(fi.max)), math.ceil(math.log2(fi.tiny))
    hi, lo = 2.0 ** (top // 2 - 24), 2.0 ** (bottom // 2 + 24)
    need = torch.isfinite(m) & ((m > hi) | ((m < lo) & (m > 0)))
    one = torch.ones_like(m)
    e = torch.ceil(torch.log2(torch.where(need, m, one)))
    return torch.where(need, torch.exp2(e), one)


def stable_norm(parts: Sequence[torch.Tensor], safe: bool = False) -> torch.Tensor:
    """Euclidean norm over the last axis of the concatenation of ``parts`` (tensors of one
    leading shape ``(...,)``): ``sqrt(sum_j ||p_j||^2)``, shape ``(...,)``, without overflow.

    A gradient of entries ``1e200`` has a finite norm ``~1e200 sqrt(n)``, but its squares are
    ``inf``: plain ``sqrt(sum g^2)`` would make every clipping factor infinite and the clipped
    field 0. Each vector is divided by the power of two :func:`norm_scale` of its largest
    entry first. ``safe=False`` (no autograd): the plain norms, recomputed scaled only when
    one is not finite (one reduction of the result more). ``safe=True``: differentiable,
    derivative 0 at a zero vector, no data-dependent branch (``torch.func.jacfwd`` and
    ``vmap`` go through); costs one more pass over ``parts``. Used by :func:`group_norms`,
    the engines' per-sample norms and the fused SGD step.

    >>> x = torch.tensor([[3e200, 4e200], [3.0, 4.0]], dtype=torch.float64)
    >>> [f"{v:.6g}" for v in stable_norm([x]).tolist()]
    ['5e+200', '5']
    """
    parts = list(parts)
    if not safe:
        if len(parts) == 1:
            out = torch.linalg.vector_norm(parts[0], dim=-1)
        else:
            out = sum(torch.linalg.vector_norm(p, dim=-1).square() for p in parts).sqrt()
        if bool(torch.isfinite(out).all()) or not _finite_somewhere(parts, out):
            return out
    m = None
    for p in parts:
        a = (torch.linalg.vector_norm(p.detach(), ord=float("inf"), dim=-1) if p.shape[-1]
             else torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device))
        m = a if m is None else torch.maximum(m, a)
    s = norm_scale(m)
    sq = sum(torch.linalg.vecdot(q, q) for q in (p / s.unsqueeze(-1) for p in parts))
    return s * (safe_sqrt(sq) if safe else sq.sqrt())


def _finite_somewhere(parts: list[torch.Tensor], out: torch.Tensor) -> bool:
    """Whether some non-finite norm in ``out`` comes from finite entries (an overflow)."""
    bad = ~torch.isfinite(out)
    for p in parts:
        bad = bad & torch.isfinite(p).all(-1)
    return bool(bad.any())


__all__ = ["Block", "Layout", "group_norms", "safe_sqrt", "stable_norm", "norm_scale",
           "GRANULARITIES"]
