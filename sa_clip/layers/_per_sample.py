"""The per-layer parts of the ``"layers"`` engine (:mod:`sa_clip.layers`): what one call of
a layer contributes to one block of theta (its per-sample gradient, or the factors of it:
inputs and output gradients), with per-sample squared norms (``sq``) and the reweighted
gradient (``weighted``); and the parts of one recorded call of a layer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..layout import Block
from . import _conv
from ._conv import _channels_last, _conv_psg, _fastest, _ghost, _patches

if TYPE_CHECKING:
    from ._analysis import _Site, _Unit


# ---------------------------------------------------------------------- per-layer maths
class _Part:
    """What one site contributes to one block: norms per unit and the reweighted gradient.

    ``sq(units)``: per-sample squared norms ``(B, units)`` (``units = 1``: the whole block);
    ``weighted(w)``: ``sum_i w_i * g_i`` for ``w`` of shape ``(B, 1)`` or ``(B, units)``,
    flat; ``psg()``: per-sample gradients ``(B, n)`` (tied blocks only).
    """

    def __init__(self, block: Block, psg: torch.Tensor | None = None):
        self.block = block
        self._psg = psg

    def psg(self) -> torch.Tensor:
        assert self._psg is not None
        return self._psg

    @property
    def block_ones(self) -> torch.Tensor:
        """Weights ``(B, 1)`` of ones (for timing a part)."""
        g = self._psg if self._psg is not None else self.D  # type: ignore[attr-defined]
        return g.new_ones(g.shape[0], 1)

    def sq(self, units: int) -> torch.Tensor:
        g = self.psg()
        return torch.linalg.vector_norm(g.reshape(g.shape[0], units, -1), dim=-1).square()

    def weighted(self, w: torch.Tensor) -> torch.Tensor:
        g = self.psg()
        b = g.shape[0]
        if w.shape[1] == 1:
            return (w.reshape(1, b) @ g).reshape(-1)
        u = w.shape[1]
        return torch.einsum("bun,bu->un", g.reshape(b, u, -1), w).reshape(-1)


class _Outer(_Part):
    """``G_i = sum_t D_{it}^T A_{it}`` per group of channels: ``D (B, g, T, o)`` carries the
    units (rows of the block), ``A (B, g, T, c)``; the block is ``(g * o, c)`` row-major.

    Products run as 3-d ``bmm`` over ``B * g`` (transposed operands are passed as views: a 4-d
    ``matmul`` of the same tensors copied them, 3.7 against 0.9 ms for 360 x (32x16 @ 16x144)).
    """

    def __init__(self, block: Block, D: torch.Tensor, A: torch.Tensor,
                 ghost: bool | None = None):
        super().__init__(block)
        self.D, self.A = D, A
        b, g, t, o = D.shape
        c = A.shape[-1]
        self.ghost = _ghost(t, o, c) if ghost is None else ghost
        self.Dr, self.Ar = D.reshape(b * g, t, o), A.reshape(b * g, t, c)
        if not self.ghost:         # one position: an outer product (bmm over 1 is slow)
            dt = self.Dr.transpose(1, 2)
            self._psg = (torch.bmm(dt, self.Ar) if t > 1 else dt * self.Ar).reshape(b, -1)

    def sq(self, units: int) -> torch.Tensor:
        if not self.ghost:
            return super().sq(units)
        b, g, t, o = self.D.shape
        Dr, Ar = self.Dr, self.Ar
        ga = torch.bmm(Ar, Ar.transpose(1, 2))                       # (B g, T, T)
        if units == 1:
            gd = torch.bmm(Dr, Dr.transpose(1, 2))
            return (ga * gd).reshape(b, -1).sum(1, keepdim=True)
        # per row j: delta_j^T Ga delta_j
        return (torch.bmm(ga, Dr) * Dr).sum(1).reshape(b, g * o)

    def weighted(self, w: torch.Tensor) -> torch.Tensor:
        if not self.ghost:
            return super().weighted(w)
        D, A = self.D, self.A
        b, g, t, o = D.shape
        if w.shape[1] == 1:
            D = D * w.reshape(b, 1, 1, 1)
        else:
            D = D * w.reshape(b, g, 1, o)
        return torch.bmm(D.permute(1, 3, 0, 2).reshape(g, o, b * t),
                         A.transpose(0, 1).reshape(g, b * t, -1)).reshape(-1)


class _Linear2d(_Part):
    """A Linear layer on one position per sample: ``G_i = delta_i a_i^T``."""

    def __init__(self, block: Block, d: torch.Tensor, a: torch.Tensor):
        super().__init__(block)
        self.d, self.a = d, a

    def psg(self) -> torch.Tensor:
        return (self.d.unsqueeze(2) * self.a.unsqueeze(1)).reshape(self.d.shape[0], -1)

    def sq(self, units: int) -> torch.Tensor:
        an = self.a.square().sum(1, keepdim=True)
        if units == 1:
            return an * self.d.square().sum(1, keepdim=True)
        return an * self.d.square()

    def weighted(self, w: torch.Tensor) -> torch.Tensor:
        return ((self.d * w).T @ self.a).reshape(-1)


class _Embedding(_Part):
    """Rows ``x_{it}`` of the table get ``delta_{it}``."""

    def __init__(self, block: Block, idx: torch.Tensor, d: torch.Tensor, rows: int):
        super().__init__(block)
        self.idx, self.d, self.rows = idx, d, rows                # (B, T), (B, T, e)

    def psg(self) -> torch.Tensor:
        b, t, e = self.d.shape
        out = self.d.new_zeros(b, self.rows, e)
        out.scatter_add_(1, self.idx.unsqueeze(-1).expand(b, t, e), self.d)
        return out.reshape(b, -1)

    def sq(self, units: int) -> torch.Tensor:
        if units != 1:
            return super().sq(units)
        d, idx = self.d, self.idx
        if d.shape[1] == 1:
            return d.square().sum((1, 2)).unsqueeze(1)
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(d.dtype)
        return (same * (d @ d.transpose(1, 2))).sum((1, 2)).unsqueeze(1)

    def weighted(self, w: torch.Tensor) -> torch.Tensor:
        b, t, e = self.d.shape
        wt = w.expand(b, t) if w.shape[1] == 1 else w.gather(1, self.idx)
        out = self.d.new_zeros(self.rows, e)
        out.index_add_(0, self.idx.reshape(-1), (self.d * wt.unsqueeze(-1)).reshape(-1, e))
        return out.reshape(-1)


# ---------------------------------------------------------------------- one call of a layer
def _parts(unit: _Unit, args: list[Any], deltas: list[torch.Tensor | None],
           tune: dict[Any, str]) -> dict[str, _Part]:
    """The parts of one call of a known layer (batch dimension first everywhere)."""
    m, kind = unit.module, unit.kind
    a = args[0].detach()
    d = deltas[0]
    parts: dict[str, _Part] = {}
    blocks = unit.blocks
    b = a.shape[0]
    if kind == "linear":
        a3 = a.reshape(b, -1, a.shape[-1])
        d3 = d.reshape(b, -1, d.shape[-1])
        if "weight" in blocks:
            if a3.shape[1] == 1:
                parts["weight"] = _Linear2d(blocks["weight"], d3[:, 0], a3[:, 0])
            else:
                parts["weight"] = _Outer(blocks["weight"], d3.unsqueeze(1), a3.unsqueeze(1))
        if "bias" in blocks:
            parts["bias"] = _Part(blocks["bias"], d3.sum(1))
    elif kind in ("conv", "convT"):
        if "weight" in blocks:
            if kind == "convT":
                # a transposed convolution's weight gradient is that of a convolution of the
                # output gradient (its "input") against the layer's input (its "output")
                inp, gout, pad = d, a, tuple(m.padding)
            elif m.padding_mode == "zeros" and not isinstance(m.padding, str):
                inp, gout, pad = a, d, tuple(m.padding)
            else:
                p4 = m._reversed_padding_repeated_twice
                mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
                inp = F.pad(a, p4, mode=mode) if any(p4) else a
                gout, pad = d, (0,) * (a.dim() - 2)
            g = m.groups
            t = math.prod(gout.shape[2:])
            o, c = gout.shape[1] // g, inp.shape[1] // g * math.prod(m.kernel_size)
            blk = blocks["weight"]
            ghost = _ghost(t, o, c)

            def unfolded(gh: bool) -> Callable[[], _Part]:
                def make() -> _Part:
                    A = _patches(inp, g, m.kernel_size, m.stride, m.dilation, pad)
                    return _Outer(blk, _channels_last(gout, g), A, gh)
                return make

            def grouped() -> _Part:
                return _Part(blk, _conv_psg(inp, gout, blk.shape, m, pad))

            if ghost:
                parts["weight"] = unfolded(True)()
            elif _conv.FORCE == "grouped":
                parts["weight"] = grouped()
            elif inp.shape[0] < 32 or _conv.FORCE is not None or not _conv.TIMED:
                # too few to time, or a fixed way
                parts["weight"] = unfolded(False)()
            else:
                ways = {"unfold": unfolded(False), "grouped": grouped}
                if t > 1 and t * t <= _conv.PSG_LIMIT and _conv.FORCE is None:
                    ways["ghost"] = unfolded(True)
                parts["weight"] = _fastest(tune, (id(m), tuple(inp.shape[1:])), ways)
        if "bias" in blocks:
            parts["bias"] = _Part(blocks["bias"], d.reshape(b, d.shape[1], -1).sum(-1))
    elif kind == "embedding":
        idx = a.reshape(b, -1)
        e = d.shape[-1]
        d3 = d.reshape(b, -1, e)
        if m.padding_idx is not None:
            d3 = d3 * (idx != m.padding_idx).unsqueeze(-1).to(d3.dtype)
        parts["weight"] = _Embedding(blocks["weight"], idx, d3, m.num_embeddings)
    else:                                                          # norm layers
        if kind == "layernorm":
            xh = F.layer_norm(a, m.normalized_shape, None, None, m.eps)
            lead = tuple(range(1, a.dim() - len(m.normalized_shape)))
        elif kind == "groupnorm":
            xh = F.group_norm(a, m.num_groups, None, None, m.eps)
            lead = tuple(range(2, a.dim()))
        else:
            shape = (1, -1) + (1,) * (a.dim() - 2)
            xh = (a - m.running_mean.reshape(shape)) * torch.rsqrt(
                m.running_var.reshape(shape) + m.eps)
            lead = tuple(range(2, a.dim()))
        if "weight" in blocks:
            g = (d * xh).sum(lead) if lead else d * xh
            parts["weight"] = _Part(blocks["weight"], g.reshape(b, -1))
        if "bias" in blocks:
            g = d.sum(lead) if lead else d
            parts["bias"] = _Part(blocks["bias"], g.reshape(b, -1))
    return parts


def _module_parts(unit: _Unit, site: _Site, leaves: list[Any], spec: Any,
                  deltas: list[torch.Tensor | None], params: dict[str, torch.Tensor]
                  ) -> dict[str, _Part]:
    """Per-sample gradients of one call of a module the engine does not know: ``vmap`` of
    ``grad(<module(params, inputs_i), delta_i>)`` over the samples of the call."""
    m = unit.module
    local = {n: params[blk.name].detach() for n, blk in unit.blocks.items()}
    tin = [k for k, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)
           and site.arg_dims[k] is not None]
    used = [k for k, dlt in enumerate(deltas) if dlt is not None]
    const = [x.detach() if isinstance(x, torch.Tensor) else x for x in leaves]

    def one(pl: dict[str, torch.Tensor], xs: list[torch.Tensor], ds: list[torch.Tensor]
            ) -> torch.Tensor:
        full = list(const)
        for k, x in zip(tin, xs):
            full[k] = x.unsqueeze(site.arg_dims[k])
        args, kwargs = tree_unflatten(full, spec)
        out = tree_flatten(functional_call(m, pl, tuple(args), kwargs))[0]
        total = out[used[0]].new_zeros(())
        for k, dk in zip(used, ds):
            total = total + (out[k].squeeze(site.out_dims[k]) * dk).sum()
        return total

    xs = [leaves[k].detach() for k in tin]
    ds = [deltas[k] for k in used]
    in_dims = (None, [site.arg_dims[k] for k in tin], [0] * len(used))   # deltas: batch first
    g = vmap(grad(one), in_dims=in_dims)(local, xs, ds)
    return {n: _Part(blk, g[n].reshape(g[n].shape[0], -1)) for n, blk in unit.blocks.items()}
