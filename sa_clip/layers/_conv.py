"""Convolution helpers of the ``"layers"`` engine (:mod:`sa_clip.layers`): input patches,
the choice between ghost norms and per-sample gradients, timing the ways, and per-sample weight
gradients by one grouped convolution; also the engine's settings :data:`TIMED`, :data:`FORCE`
and :data:`PSG_LIMIT` (set them as ``sa_clip.layers.TIMED`` etc.: the package forwards them
here, where they are read)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ._per_sample import _Part

#: Choose each convolution's way by timing it on the first chunk (:func:`_fastest`). The ways
#: sum in different orders, so which one wins changes ``H`` at round-off level (about 1e-16
#: relative in float64, 1e-7 in float32), and timings may pick differently in another process:
#: set ``sa_clip.layers.TIMED = False`` for results that are bit-identical between processes
#: (per-sample gradients by im2col everywhere, ghost norms only to save memory).
TIMED = True
#: Tests only: ``"ghost"`` (ghost norms), ``"psg"`` (per-sample gradients; convolutions by
#: im2col) or ``"grouped"`` (convolutions by a grouped convolution) forces that way on every
#: Linear/conv weight. None: chosen per layer (:func:`_ghost`, :func:`_fastest`).
FORCE: str | None = None


def _unfold(a: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
            dilation: tuple[int, ...]) -> torch.Tensor:
    """Patches of an (already padded) ``a (B, C, *spatial)``: ``(B, C, *out, *kernel)``."""
    n = len(kernel)
    for k in range(n):
        dim = 2 + k
        span = dilation[k] * (kernel[k] - 1) + 1
        a = a.unfold(dim, span, stride[k])                        # appends the window
        if dilation[k] > 1:
            a = a[..., ::dilation[k]]
    return a                                                      # (B, C, *out, *kernel)


def _patches(a: torch.Tensor, groups: int, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...], padding: tuple[int, ...] | None = None
             ) -> torch.Tensor:
    """``(B, g, T, C/g * prod(kernel))`` from ``a`` (zero-padded by ``padding``, or already
    padded), in the weight's row-major order: a transposed view of the im2col matrix
    ``(B, C * prod(kernel), T)``, built by one copy of a strided view of ``a`` (several times
    faster than ``F.unfold`` on a CPU: 1.7 against 21 ms for 228 samples of 6x14x14 and a
    5x5 kernel, one thread)."""
    n = len(kernel)
    pad = (0,) * n if padding is None else tuple(padding)
    if any(pad):
        a = F.pad(a, [p for q in reversed(pad) for p in (q, q)])
    u = _unfold(a, kernel, stride, dilation)                      # (B, C, *out, *k)
    b = u.shape[0]
    perm = (0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))     # (B, C, *k, *out)
    t = math.prod(u.shape[2:2 + n])
    u = u.permute(perm).reshape(b, groups, -1, t)                 # (B, g, C/g * K, T)
    return u.transpose(2, 3)


def _ghost(t: int, o: int, c: int) -> bool:
    """Ghost norms (Gram matrices over the ``t`` positions) rather than per-sample gradients
    ``(o, c)`` of a layer (per group of channels).

    Per sample, per-sample gradients cost ``t*o*c`` operations and hold ``o*c`` numbers, and
    give the reweighted gradient for ``o*c`` more; ghost norms cost ``t*t*(o + c)`` plus the
    reweighted gradient's ``t*o*c``, and need the unfolded input (a copy). So per-sample
    gradients are the faster choice, and ghost norms are taken only to save memory: when a
    layer's per-sample gradients would hold more than :data:`PSG_LIMIT` numbers per sample and
    the Gram matrices fewer operations than the gradients (``t (o + c) < o c``). (Forcing ghost
    norms everywhere cost 46x on LeNet, where the first convolution has ``t = 784``.)
    """
    if FORCE is not None:
        return FORCE == "ghost" and t > 1
    return t > 1 and o * c > PSG_LIMIT and t * (o + c) < o * c


#: Per-sample gradients of one layer are formed when they hold at most this many numbers per
#: sample (or when ghost norms would cost more operations); see :func:`_ghost`.
PSG_LIMIT = 2 ** 16


def _fastest(tune: dict[Any, str], key: Any, ways: dict[str, Callable[[], _Part]]) -> _Part:
    """The part from the way that was fastest the first time this layer met this shape.

    Per-sample convolution weight gradients are formed either by im2col and one batched
    product, or by torch's grouped-convolution weight gradient with the samples as groups;
    which is faster depends on the shapes and the backend (1->6 channels, 28x28, stride 1:
    grouped 2.3x faster; 16->32 channels, 8x8, stride 2: im2col 3.7x faster; one thread), so
    both are timed (twice, the faster counts), with ghost norms as a third way where the Gram
    matrices are small, on the first chunk of 32 samples or more with that sample shape (norms
    and the reweighted gradient included). All ways are exact: the choice changes only the
    order of floating-point sums.
    """
    if key in tune:
        return ways[tune[key]]()
    best, part = None, None
    for _ in range(2):               # the faster of two timings: a loaded machine is noisy
        for name, way in ways.items():
            t0 = time.perf_counter()
            got = way()
            got.sq(1)
            ones = got.block_ones
            got.weighted(ones)
            if ones.is_cuda:
                torch.cuda.synchronize(ones.device)
            dt = time.perf_counter() - t0
            if best is None or dt < best[0]:
                best, part = (dt, name), got
    assert best is not None and part is not None
    tune[key] = best[1]
    return part


def _conv_psg(inp: torch.Tensor, gout: torch.Tensor, shape: tuple[int, ...], m: nn.Module,
              pad: tuple[int, ...]) -> torch.Tensor:
    """Per-sample weight gradients of a convolution, ``(B, prod(shape))``: the weight gradient
    of one grouped convolution whose groups are the samples (batch 1, ``B * groups`` groups),
    so torch's own convolution kernels do the work (no unfolded copy of the input)."""
    b = inp.shape[0]
    n = inp.dim() - 2
    x1 = inp.reshape(1, -1, *inp.shape[2:])
    d1 = gout.reshape(1, -1, *gout.shape[2:])
    w = inp.new_empty((b * shape[0], *shape[1:]))
    gw = torch.ops.aten.convolution_backward(
        d1, x1, w, None, list(m.stride), list(pad), list(m.dilation), False, [0] * n,
        b * m.groups, [False, True, False])[1]
    return gw.reshape(b, -1)


def _channels_last(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, g, T, C/g)``."""
    b, c = x.shape[:2]
    return x.reshape(b, groups, c // groups, -1).transpose(2, 3)
