r"""The ``"layers"`` engine: clipped sums from each layer's inputs and output gradients.

One forward and one backward per chunk keep, for every layer that owns trainable parameters,
its input ``a`` and its output gradient ``delta = dl/dz`` (forward hooks; one
``torch.autograd.grad`` of the summed losses with respect to all layer outputs: the weight
gradients themselves are not formed). Per-sample gradient norms then come per layer:

* ``Linear`` (any leading dimensions, positions ``s, t``): per-sample weight gradient
  ``G_i = sum_t delta_{it} a_{it}^T``, so

  .. math:: \lVert G_i\rVert_F^2 = \sum_{s,t} (a_{is}\cdot a_{it})(\delta_{is}\cdot\delta_{it})

  (the norm trick ``||a_i|| ||delta_i||`` for one position; Gram matrices over positions, the
  "ghost norm", for sequences), or ``G_i`` itself when that is cheaper for the shapes;
* ``Conv1d/2d/3d`` (stride, dilation, groups, any padding mode) and ``ConvTranspose1d/2d/3d``:
  the same with unfolded input patches as ``a`` (for a transposed convolution the roles of
  input and output gradient swap); per layer, per-sample gradients ``D_i^T A_i`` or ghost norms,
  whichever costs fewer operations (``T (d_a + d_delta)`` against ``d_a d_delta`` per position);
* ``Embedding``: rows hit by each sample, ``||G_i||^2 = sum_{s,t} [x_s = x_t] delta_s . delta_t``;
* ``LayerNorm``/``GroupNorm``/eval-mode ``BatchNorm`` affine parameters and every bias: their
  per-sample gradients are small (``(B, C)``) and formed directly;
* any other module that owns parameters (``MultiheadAttention``, whose projections run inside
  ``F.multi_head_attention_forward``; the recurrent cells of :mod:`sa_clip.recurrent`; user
  modules): per-sample gradients of that module alone, ``vmap`` over its recorded inputs and
  output gradients (:attr:`LayersEngine.reason` names them);
* tied parameters (one tensor used by several layers): per-sample gradients of that tensor,
  summed over its uses.

The rule turns the norms into factors ``c`` (its own :meth:`~sa_clip.ClipRule.factors`:
classic, adaptive, layer-wise, unit-wise), and the clipped sum is one reweighted weight
gradient per layer,

.. math:: \sum_i G_i / c_{i,G} = \sum_{i,t} (w_i \odot \delta_{it})\, a_{it}^\top,
          \qquad w = 1/c,

never a ``(chunk, P)`` tensor. Value clipping needs the coordinates of every per-sample
gradient and stays on the ``"vmap"`` engine; so does ``DH`` (this engine calls autograd, which
``jacfwd`` cannot go through): :class:`~sa_clip.MeanField` hands Jacobians to its
differentiable engine, and SGD minibatches of several chains (one batch per chain) to ``vmap``.

Once per problem the analysis runs the model on 2 and 3 samples to find where the batch
dimension of every recorded tensor is, and checks the engine's per-sample layer norms and
gradient against a per-sample autograd loop on those samples: a model that uses a parameter
outside the module owning it (a custom ``forward`` reading ``self.fc.weight``) fails that check
and is left to ``"vmap"``, with the reason.

Example
-------
>>> import torch, sa_clip as sc
>>> _ = torch.manual_seed(0); X = torch.randn(8, 1, 6, 6, dtype=torch.float64)
>>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
...                         torch.nn.Linear(32, 1)).double()
>>> p = sc.Problem(m, X, X.sum((1, 2, 3)))
>>> f = sc.MeanField(p, sc.NormClip(1.0))
>>> f.method
'layers'
>>> ref = sc.MeanField(p, sc.NormClip(1.0), engine="vmap")
>>> bool(torch.allclose(f(p.theta0), ref(p.theta0), atol=1e-12))
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from .clipping import ClipRule
from .engine import LOOP_ELEMENTS, Engine, VmapEngine, _mode
from .layout import Block, group_norms
from .problem import Problem

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
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


def _kind(m: nn.Module) -> str:
    """How the engine treats module ``m``: a layer it knows, or ``"module"`` (per-sample
    gradients of the module alone)."""
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, _CONV):
        return "conv"
    if isinstance(m, _CONVT):
        return "convT"
    if isinstance(m, nn.Embedding) and m.max_norm is None and not m.scale_grad_by_freq \
            and not m.sparse:
        return "embedding"
    if isinstance(m, nn.LayerNorm):
        return "layernorm"
    if isinstance(m, nn.GroupNorm):
        return "groupnorm"
    if isinstance(m, _BN) and m.running_mean is not None:
        return "batchnorm"
    return "module"


@dataclass
class _Unit:
    module: nn.Module
    path: str
    kind: str
    blocks: dict[str, Block]          # local parameter name -> its block of theta


@dataclass
class _Site:
    """One call of a unit in the forward pass, with the batch dimension of each tensor."""

    unit: int
    arg_dims: list[int | None]        # flattened (args, kwargs) leaves; None: not a tensor
    out_dims: list[int | None]        # flattened output leaves


@dataclass
class LayersPlan:
    units: list[_Unit]
    sites: list[_Site]
    clone_outputs: bool
    per_sample: int                   # numbers per sample (activations, gradients, psg)
    notes: list[str] = field(default_factory=list)
    tune: dict[Any, str] = field(default_factory=dict)   # conv layer and shape -> method


def _units(problem: Problem) -> list[_Unit]:
    by_id = {}
    for b in problem.blocks:           # named_parameters order: a tied tensor has one name
        by_id[b.name] = b
    pid = {id(p): by_id[n] for n, p in problem.model.named_parameters() if n in by_id}
    units: list[_Unit] = []

    def visit(m: nn.Module, path: str) -> None:
        kind = _kind(m)
        own = list(m.named_parameters(recurse=False))
        if kind != "module" or own:
            params = m.named_parameters() if kind == "module" else own
            blocks = {n: pid[id(p)] for n, p in params if id(p) in pid}
            if blocks:
                units.append(_Unit(m, path, kind, blocks))
            return
        for n, c in m.named_children():
            visit(c, f"{path}.{n}" if path else n)

    visit(problem.model, "")
    return units


class _Recorder:
    """Forward hooks on the units: every call's inputs and outputs, in call order."""

    def __init__(self, units: list[_Unit], clone: bool):
        self.units, self.clone = units, clone
        self.calls: list[tuple[int, list[Any], Any, list[Any], Any]] = []

    def __enter__(self) -> _Recorder:
        self.handles = []
        for i, u in enumerate(self.units):
            self.handles.append(u.module.register_forward_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            leaves, spec = tree_flatten((args, kwargs))
            oleaves, ospec = tree_flatten(out)
            self.calls.append((i, leaves, spec, oleaves, ospec))
            if self.clone:     # an in-place op after the layer must not change what we keep
                return tree_unflatten([o.clone() if isinstance(o, torch.Tensor) else o
                                       for o in oleaves], ospec)
            return None
        return hook


def _batch_dims(t2: Any, t3: Any) -> int | None | str:
    """The dimension that grew from 2 to 3 samples; None when none did; "?" if ambiguous."""
    if not isinstance(t2, torch.Tensor):
        return None
    if not isinstance(t3, torch.Tensor) or t2.dim() != t3.dim():
        return "?"
    d = [k for k in range(t2.dim()) if t2.shape[k] != t3.shape[k]]
    if not d:
        return None
    if len(d) > 1 or (t2.shape[d[0]], t3.shape[d[0]]) != (2, 3):
        return "?"
    return d[0]


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
            elif FORCE == "grouped":
                parts["weight"] = grouped()
            elif inp.shape[0] < 32 or FORCE is not None or not TIMED:   # too few to time
                parts["weight"] = unfolded(False)()
            else:
                ways = {"unfold": unfolded(False), "grouped": grouped}
                if t > 1 and t * t <= PSG_LIMIT and FORCE is None:
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


# ---------------------------------------------------------------------- analysis
def analyse_layers(problem: Problem) -> tuple[LayersPlan | None, str | None]:
    """``(plan, None)`` when the layer engine serves ``problem``'s model, else
    ``(None, why not)`` (rule-independent; once per problem)."""
    units = _units(problem)
    if not units:
        return None, "the model has no layer with trainable parameters"
    if all(u.kind == "module" for u in units):
        names = ", ".join(f"{type(u.module).__name__} at {u.path or 'the root'!r}"
                          for u in units)
        return None, (f"no layer it knows owns parameters ({names}): the per-layer engine would "
                      "only add overhead to per-sample gradients of the whole model")
    clone = any(getattr(m, "inplace", False) for m in problem.model.modules())
    shapes = []
    for n in (2, 3):
        x, y = problem.take(torch.arange(n) % problem.N)
        try:
            calls = _record(problem, units, clone, problem.theta0, x, y)[0]
        except Exception as exc:      # noqa: BLE001 - any failure means: not this engine
            return None, f"recording the layers failed ({type(exc).__name__}: {exc})"
        shapes.append(calls)
    c2, c3 = shapes
    if [c[0] for c in c2] != [c[0] for c in c3]:
        return None, "the layers are called in an order that depends on the batch size"
    sites, per = [], 0
    for (i, l2, _, o2, _), (_, l3, _, o3, _) in zip(c2, c3):
        ad = [_batch_dims(p, q) for p, q in zip(l2, l3)]
        od = [_batch_dims(p, q) for p, q in zip(o2, o3)]
        u = units[i]
        if "?" in ad or "?" in od:
            return None, (f"the batch dimension of the inputs or outputs of {u.path!r} is "
                          "ambiguous")
        if u.kind != "module":
            if ad[0] is None or od[0] is None or (u.kind not in ("linear", "layernorm")
                                                  and (ad[0], od[0]) != (0, 0)):
                return None, f"{u.path!r} is called without its batch dimension first"
        sites.append(_Site(i, ad, od))  # type: ignore[arg-type]
        per += 2 * sum(t.numel() // 3 for t in (*l3, *o3) if isinstance(t, torch.Tensor))
        if u.kind in ("conv", "convT", "module") or (u.kind == "linear" and l3[0].dim() > 2):
            # per-sample gradients of the layer (the way chosen for convolutions and Linear
            # layers on positions, always for modules served by per-sample gradients)
            per += sum(b.numel for b in u.blocks.values())
    notes = sorted({f"{type(units[s.unit].module).__name__} at {units[s.unit].path!r}"
                    for s in sites if units[s.unit].kind == "module"})
    plan = LayersPlan(units, sites, clone, max(1, per), notes)
    bad = _self_check(problem, plan)
    if bad is not None:
        return None, bad
    return plan, None


def _record(problem: Problem, units: list[_Unit], clone: bool, theta: torch.Tensor,
            x: torch.Tensor, y: torch.Tensor):
    """Forward the chunk with the hooks on: ``(calls, losses, params, theta leaf)``."""
    th = theta.detach().requires_grad_(True)
    params = problem.unflatten(th)
    with torch.enable_grad(), _Recorder(units, clone) as rec:
        out = functional_call(problem.model, {**params, **problem._fixed}, (x,))
        losses = problem.batch_losses(out, y)
    return rec.calls, losses, params, th


def _self_check(problem: Problem, plan: LayersPlan) -> str | None:
    """Per-sample layer norms of 3 samples against a per-sample autograd loop (both on the
    loss times a power of two that brings the largest gradient entry near 1, so huge targets
    do not overflow the squares)."""
    n = min(3, problem.N)
    x, y = problem.take(torch.arange(n))
    th = problem.theta0
    gs = []
    for i in range(n):
        t = th.detach().requires_grad_(True)
        with torch.enable_grad():
            gs.append(torch.autograd.grad(
                problem.sample_losses(t, x[i:i + 1], y[i:i + 1]).sum(), t)[0])
    m = float(torch.stack(gs).abs().max()) if gs else 0.0
    scale = 2.0 ** -math.ceil(math.log2(m)) if math.isfinite(m) and m > 0 else 1.0
    try:
        sq = LayersEngine._squares(problem, plan, th, x, y, scale=scale)[0]
    except Exception as exc:      # noqa: BLE001
        return f"its per-layer gradients failed ({type(exc).__name__}: {exc})"
    r = torch.stack([torch.stack([(g[b.slice] * scale).square().sum() for b in problem.blocks])
                     for g in gs])
    got = torch.cat([s for s in sq], 1)
    tol = 1e3 * torch.finfo(problem.dtype).eps
    err = float((got - r).abs().max() / r.abs().max().clamp_min(1e-300))
    if not err <= tol:
        return ("its per-layer gradient norms do not match a per-sample autograd loop on the "
                f"first samples (relative error {err:.1e}): a parameter is used outside the "
                "module that owns it, or a layer's output is changed in place")
    return None


# ---------------------------------------------------------------------- the engine
class LayersEngine(Engine):
    """Per-sample gradient norms layer by layer, then one reweighted gradient per layer (the
    ``"layers"`` :class:`~sa_clip.engine.Engine`; see the module docstring)."""

    name = "layers"
    summary = ("per-layer per-sample gradient norms from each layer's inputs and output "
               "gradients (one forward and backward per chunk), then one reweighted gradient "
               "per layer")

    def __init__(self, problem: Problem, rule: ClipRule, plan: LayersPlan | None = None):
        reason = self.rule_reason(rule)
        if plan is None and reason is None:
            plan, reason = analyse_layers(problem)
        if reason is not None:
            raise ValueError(f"the layers engine does not apply: {reason}.")
        super().__init__(problem, rule, plan)
        self.vmap = VmapEngine(problem, rule)
        gran = rule.granularity
        self._gran = gran
        self._units_of = {b.name: (b.units if gran == "unit" else 1) for b in problem.blocks}
        self.detail = ""
        if plan.notes:
            self.detail = ("; per-sample gradients of " + ", ".join(plan.notes)
                           + " alone (modules it has no per-layer formula for)")

    @classmethod
    def analyse(cls, problem: Problem) -> tuple[Any, str | None]:
        return analyse_layers(problem)

    @classmethod
    def rule_reason(cls, rule: ClipRule) -> str | None:
        mode = _mode(rule)
        if mode not in ("sum", "scale"):
            return (f"rule {type(rule).__name__} is not a scaling of norm groups (it needs the "
                    "coordinates of every per-sample gradient)")
        return None

    @property
    def elements_per_sample(self) -> int:
        """Numbers per sample of a chunk: the layers' inputs and outputs, twice (their
        gradients in the backward pass), and the per-sample gradients of the layers that may
        form them; on a CPU the chunk then keeps its working set near a last-level cache."""
        return self.plan.per_sample

    #: On a CPU, chunks may go down to this many samples to stay near the cache (LeNet on
    #: 28x28: chunks of 128 instead of 1,024 took no fresh pages from the kernel and 21% less
    #: CPU time), instead of :data:`sa_clip.meanfield.MIN_CHUNK`.
    min_chunk = 128

    # ------------------------------------------------------------------ one row, one chunk
    @staticmethod
    def _parts(problem: Problem, plan: LayersPlan, theta: torch.Tensor, x: torch.Tensor,
               y: torch.Tensor, scale: float = 1.0
               ) -> tuple[dict[str, list[_Part]], torch.Tensor]:
        """Every block's parts for one ``theta (P,)`` on a chunk, and the leaf theta; with
        ``scale``, of the loss times ``scale`` (a power of two: exact)."""
        calls, losses, params, th = _record(problem, plan.units, plan.clone_outputs, theta,
                                            x, y)
        if len(calls) != len(plan.sites) or any(c[0] != s.unit
                                                for c, s in zip(calls, plan.sites)):
            raise _Replan()
        outs = [(k, j, o) for k, c in enumerate(calls) for j, o in enumerate(c[3])
                if isinstance(o, torch.Tensor) and o.requires_grad
                and plan.sites[k].out_dims[j] is not None]
        with torch.enable_grad():
            total = losses.sum()
            gs = torch.autograd.grad(total, [o for _, _, o in outs], allow_unused=True,
                                     grad_outputs=None if scale == 1.0 else
                                     torch.full_like(total, scale))
        deltas: list[list[torch.Tensor | None]] = [[None] * len(c[3]) for c in calls]
        for (k, j, _), g in zip(outs, gs):
            if g is not None:
                deltas[k][j] = g.movedim(plan.sites[k].out_dims[j], 0)
        parts: dict[str, list[_Part]] = {}
        for (i, leaves, spec, _, _), site, dl in zip(calls, plan.sites, deltas):
            unit = plan.units[i]
            if unit.kind == "module":
                if not any(d is not None for d in dl):
                    continue
                got = _module_parts(unit, site, leaves, spec, dl, params)
            else:
                if dl[0] is None:
                    continue
                args = [leaves[0].movedim(site.arg_dims[0], 0)]
                got = _parts(unit, args, dl, plan.tune)
            for part in got.values():
                parts.setdefault(part.block.name, []).append(part)
        return parts, th

    @classmethod
    def _squares(cls, problem: Problem, plan: LayersPlan, theta: torch.Tensor,
                 x: torch.Tensor, y: torch.Tensor, units: dict[str, int] | None = None,
                 scale: float = 1.0) -> tuple[list[torch.Tensor], dict[str, _Part]]:
        """Per-sample squared norms, one ``(B, units)`` tensor per block in Layout order
        (zeros for a block no sample reaches), and each block's single part (of the loss
        times ``scale``)."""
        parts, _ = cls._parts(problem, plan, theta, x, y, scale)
        b = x.shape[0]
        sq, single = [], {}
        for blk in problem.blocks:
            u = 1 if units is None else units[blk.name]
            ps = parts.get(blk.name, [])
            if not ps:
                sq.append(theta.new_zeros(b, u))
                single[blk.name] = _Part(blk, theta.new_zeros(b, blk.numel))
                continue
            part = ps[0] if len(ps) == 1 else _Part(blk, sum(p.psg() for p in ps))
            single[blk.name] = part
            sq.append(part.sq(u))
        return sq, single

    def _row(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i g_i / c_i  (P,), c  (B, G))`` for one theta."""
        p, rule, gran = self.problem, self.rule, self._gran
        b = x.shape[0]
        if gran == "none":
            return self._plain(theta, x, y), theta.new_ones(b, 1)
        norms, parts = self._norms(theta, x, y)
        tn = group_norms(theta, p.layout, gran).unsqueeze(0) if rule.relative else None
        c = rule.factors(norms, tn)
        w = 1.0 / c
        out, g0 = [], 0
        for blk in p.blocks:
            if gran == "global":
                wb = w
            else:
                u = self._units_of[blk.name]
                wb, g0 = w[:, g0:g0 + u], g0 + u
            out.append(parts[blk.name].weighted(wb))
        return torch.cat(out), c

    def _plain(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        th = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(self.problem.sample_losses(th, x, y).sum(), th)[0]

    def _norm_row(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                  ) -> torch.Tensor:
        return self._norms(theta, x, y)[0]

    def _norms(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, _Part]]:
        """Per-sample norms ``(B, groups)`` and the parts they came from. Where a square
        overflows (per-sample gradients beyond about 1e154 in float64, 1e19 in float32: MSE
        targets of 1e200) the norms come from a second pass on the loss times ``2^-e``,
        times ``2^e``; the plain norms are kept wherever they are finite, so nothing changes
        where nothing overflows (the parts, linear in the loss, stay unscaled)."""
        def combine(sq: list[torch.Tensor]) -> torch.Tensor:
            if self._gran in ("global", "none"):
                return torch.stack(sq).sum(0).sqrt() if len(sq) > 1 else sq[0].sqrt()
            return torch.cat(sq, 1).sqrt()
        sq, parts = self._squares(self.problem, self.plan, theta, x, y, self._units_of)
        norms = combine(sq)
        if bool(torch.isfinite(norms).all()):
            return norms, parts
        e = math.floor(math.log2(torch.finfo(norms.dtype).max)) // 2 + 24  # 535 in float64
        small = combine(self._squares(self.problem, self.plan, theta, x, y, self._units_of,
                                      scale=2.0 ** -e)[0])
        return torch.where(torch.isfinite(norms), norms, small * 2.0 ** e), parts

    # ------------------------------------------------------------------ dispatch
    def _delegate(self, theta: torch.Tensor, x: torch.Tensor, shared: bool) -> bool:
        """Whether the vmap engine serves this call: differentiation through theta, several
        chains on their own minibatches, or several small rows (batched by vmap)."""
        if theta.requires_grad or torch._C._functorch.is_functorch_wrapped_tensor(theta):
            return True
        k = theta.shape[0]
        if k == 1:
            return False
        if not shared:
            return True
        return x.shape[0] * self.problem.P < LOOP_ELEMENTS

    def _rows(self, fn: Callable, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              shared: bool) -> list[Any]:
        out = []
        for k in range(theta.shape[0]):
            xb, yb = (x, y) if shared else (x[k], y[k])
            try:
                out.append(fn(theta[k], xb, yb))
            except _Replan:
                return []
        return out

    def clipped_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True, *, safe: bool = False) -> torch.Tensor:
        if not self._delegate(theta, x, shared):
            rows = self._rows(lambda t, xb, yb: self._row(t, xb, yb)[0], theta, x, y, shared)
            if rows:
                return torch.stack(rows)
        return self.vmap.clipped_sum(theta, x, y, shared, safe=safe)

    def sum_and_factors(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._delegate(theta, x, shared):
            rows = self._rows(self._row, theta, x, y, shared)
            if rows:
                return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
        return self.vmap.sum_and_factors(theta, x, y, shared)

    def gradient_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     shared: bool = True) -> torch.Tensor:
        if not self._delegate(theta, x, shared):
            return torch.stack(self._rows(self._plain, theta, x, y, shared))
        return self.vmap.gradient_sum(theta, x, y, shared)

    def group_norms(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True) -> torch.Tensor:
        if not self._delegate(theta, x, shared):
            rows = self._rows(self._norm_row, theta, x, y, shared)
            if rows:
                return torch.stack(rows)
        return self.vmap.group_norms(theta, x, y, shared)

    def clipped_directions(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                           shared: bool = True) -> torch.Tensor:
        # every clipped per-sample gradient is asked for: that is the vmap engine's product
        return self.vmap.clipped_directions(theta, x, y, shared)


class _Replan(Exception):
    """A forward pass called the layers in another order than the analysis saw."""


__all__ = ["LayersEngine", "LayersPlan", "analyse_layers"]
