r"""Clipped mean field of a stack of ``Linear`` layers without per-sample gradients.

For a ``Linear`` layer with inputs ``a_i`` (shape ``(d_in,)``) and output gradients
``delta_i = dl_i/dz_i`` (shape ``(d_out,)``) the per-sample gradients are outer products,

.. math:: \nabla_W l_i = \delta_i a_i^\top, \qquad \nabla_b l_i = \delta_i,

so their norms need no per-sample gradient at all:

.. math:: \lVert\nabla_W l_i\rVert_F = \lVert a_i\rVert\,\lVert\delta_i\rVert, \quad
          \lVert\nabla_b l_i\rVert = \lVert\delta_i\rVert, \quad
          \lVert(\nabla_W l_i)_{j,:}\rVert = \lVert a_i\rVert\,\lvert\delta_{ij}\rvert .

Global norms add the blocks' squares; layer-wise norms are one block each; unit-wise norms are
one weight row each (a 1-d bias is one unit, as in :meth:`Layout.group_sizes`). The rule turns
them into factors ``c`` (its own :meth:`ClipRule.factors`), and the clipped sum is one reweighted
product per layer,

.. math:: \sum_i \nabla_W l_i / c_{i,G} = \sum_i (w_i \odot \delta_i)\, a_i^\top,
          \qquad w = 1/c,

with ``w`` per sample (global rule), per sample and layer, or per sample and unit. The forward
pass and the backward pass for ``delta`` are written here from the flat ``theta`` (weights are
slices of ``theta``), batched over ``K`` parameter vectors as batched matrix products. Everything
is plain differentiable tensor algebra, so ``torch.func.jacfwd`` goes through it.

Supported: a ``torch.nn.Linear``, or a ``torch.nn.Sequential`` of ``Linear`` layers (bias or
not) and element-wise activations (:data:`ACTIVATIONS`), with an optional ``Flatten`` before the
first ``Linear``; inputs of shape ``(N, d)`` (or ``(N, ...)`` with that ``Flatten``); any loss;
every rule but :class:`~sa_clip.clipping.ValueClip` (which needs the coordinates of each
per-sample gradient). :func:`unsupported_reason` says why a problem does not qualify.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, jvp, vmap

from .clipping import ClipRule, ValueClip
from .engine import Engine
from .layout import Block, group_norms, stable_norm
from .problem import Problem

Act = Callable[[torch.Tensor], torch.Tensor]


def _act_function(m: nn.Module) -> Act:
    """A pure function for an element-wise activation module (never in place)."""
    t = type(m)
    if t is nn.Tanh:
        return torch.tanh
    if t is nn.Sigmoid:
        return torch.sigmoid
    if t is nn.ReLU:
        return torch.relu
    if t is nn.LeakyReLU:
        return lambda z: F.leaky_relu(z, m.negative_slope)
    if t is nn.GELU:
        return lambda z: F.gelu(z, approximate=m.approximate)
    if t is nn.SiLU:
        return F.silu
    if t is nn.Softplus:
        return lambda z: F.softplus(z, m.beta, m.threshold)
    if t is nn.ELU:
        return lambda z: F.elu(z, m.alpha)
    raise TypeError(t)  # pragma: no cover - filtered by unsupported_reason


#: Element-wise activation modules the fast path understands (exact types, not subclasses).
ACTIVATIONS = (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Softplus,
               nn.ELU, nn.Identity)
#: Cross-entropy outputs with at most this many classes take the softmax over the middle axis
#: of a transposed view. (77 thetas x 178 samples x 3 classes, 1 thread: 0.94 ms -> 0.23 ms
#: with the copy back; 10 classes x 20,000 samples: 3.1 -> 0.6 ms; 100 classes: slower.)
SMALL_SOFTMAX = 16

Backprop = Callable[[torch.Tensor], torch.Tensor]

# delta -> delta * act'(z) in one pass, with the very kernels autograd uses (so the numbers are
# those of the vmap path); each has a forward-mode derivative, so jacfwd goes through.
# Activations not listed here go through forward-mode AD (torch.func.jvp).
_BACKWARD: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor],
                               torch.Tensor]] = {
    nn.Tanh: lambda m, z, a, d: torch.ops.aten.tanh_backward(d, a),
    nn.Sigmoid: lambda m, z, a, d: torch.ops.aten.sigmoid_backward(d, a),
    nn.ReLU: lambda m, z, a, d: torch.ops.aten.threshold_backward(d, a, 0),
    nn.LeakyReLU: lambda m, z, a, d: torch.ops.aten.leaky_relu_backward(
        d, z, m.negative_slope, False),
}


@dataclass(frozen=True)
class _Layer:
    """One ``Linear`` layer and the element-wise activations that follow it.

    ``weight`` / ``bias``: the trainable blocks in ``theta``; a frozen one
    (``requires_grad=False``) is None and named in ``frozen_w`` / ``frozen_b`` (a key of
    ``Problem.frozen``): it propagates but contributes no parameters.
    """

    weight: Block | None
    bias: Block | None
    acts: tuple[nn.Module, ...]
    shape: tuple[int, int] = (0, 0)
    frozen_w: str | None = None
    frozen_b: str | None = None

    @property
    def d_out(self) -> int:
        return self.shape[0]

    @property
    def d_in(self) -> int:
        return self.shape[1]

    def activate(self, z: torch.Tensor) -> tuple[torch.Tensor, Backprop | None]:
        """``(act(z), delta -> delta * act'(z))``; the second is None for the identity."""
        if not self.acts:
            return z, None
        if len(self.acts) == 1 and type(self.acts[0]) in _BACKWARD:
            m = self.acts[0]
            a = _act_function(m)(z)
            return a, lambda d: _BACKWARD[type(m)](m, z, a, d)
        fns = [_act_function(m) for m in self.acts]

        def composed(u: torch.Tensor) -> torch.Tensor:
            for f in fns:
                u = f(u)
            return u
        a, da = jvp(composed, (z,), (torch.ones_like(z),))
        return a, lambda d: d * da


def _split_model(model: nn.Module) -> tuple[list[nn.Module], str | None]:
    """The flat list of modules of a supported model, or a reason why it is not supported."""
    if type(model) is nn.Linear:
        return [model], None
    if type(model) is not nn.Sequential:
        return [], (f"the model is a {type(model).__name__}, not an nn.Linear or a plain "
                    f"nn.Sequential of Linear layers and element-wise activations")
    mods = list(model)
    seen_linear = False
    for i, m in enumerate(mods):
        t = type(m)
        if t is nn.Linear:
            seen_linear = True
        elif t is nn.Flatten:
            if seen_linear or (m.start_dim, m.end_dim) != (1, -1):
                return [], (f"module {i} is a Flatten that is not Flatten(1, -1) before the "
                            f"first Linear")
        elif t not in ACTIVATIONS:   # activations run as pure functions, never in place
            return [], (f"{t.__name__} at module {i} is neither Linear nor one of the "
                        f"element-wise activations {[a.__name__ for a in ACTIVATIONS]}")
        if getattr(m, "_forward_hooks", None) or getattr(m, "_forward_pre_hooks", None):
            return [], f"module {i} has forward hooks"
    if not seen_linear:
        return [], "the Sequential has no Linear layer"
    return mods, None


@dataclass(frozen=True)
class StackPlan:
    """What the analysis of a Linear-stack model found (built once per problem).

    ``flatten``: a leading ``Flatten``; ``pre``: element-wise modules before the first
    ``Linear``; ``layers``: each ``Linear`` with its parameter blocks and the activations after.
    """

    flatten: bool
    pre: tuple[nn.Module, ...]
    layers: tuple[_Layer, ...]


def analyse_stack(problem: Problem) -> tuple[StackPlan | None, str | None]:
    """``(plan, None)`` when ``problem``'s model and data suit the fast path, else
    ``(None, why not)``. Rule-independent; :class:`~sa_clip.MeanField` calls it once per
    problem (through :meth:`LinearStackEngine.analyse`)."""
    mods, reason = _split_model(problem.model)
    if reason is not None:
        return None, reason
    x, _ = problem.data(slice(0, 1))   # one sample: problems may stream their data
    if not x.is_floating_point():
        return None, f"the inputs `X` are not floating point ({x.dtype})"
    flatten = any(type(m) is nn.Flatten for m in mods)
    if x.dim() != 2 and not (flatten and x.dim() >= 2):
        return None, (f"the inputs `X` have shape (N, {', '.join(map(str, x.shape[1:]))}); the "
                      f"fast path needs (N, d), or a leading nn.Flatten()")
    try:
        pre, layers = _layers(problem, mods)
    except ValueError as exc:
        return None, str(exc)
    return StackPlan(flatten, tuple(pre), tuple(layers)), None


def rule_reason(rule: ClipRule) -> str | None:
    """Why the fast path cannot serve ``rule`` (it needs a scaling per group), or None."""
    if isinstance(rule, ValueClip) or rule.granularity not in ("none", "global", "layer", "unit"):
        return f"rule {type(rule).__name__} clamps coordinates and needs per-sample gradients"
    return None


def unsupported_reason(problem: Problem, rule: ClipRule) -> str | None:
    """Why the fast path does not apply to ``problem`` and ``rule``, or None when it does.

    >>> import torch, sa_clip as sc
    >>> p = sc.Problem(torch.nn.Linear(3, 1), torch.randn(5, 3), torch.randn(5))
    >>> unsupported_reason(p, sc.NormClip(1.0)) is None
    True
    >>> unsupported_reason(p, sc.ValueClip(1.0))
    'rule ValueClip clamps coordinates and needs per-sample gradients'
    """
    return rule_reason(rule) or analyse_stack(problem)[1]


def _layers(problem: Problem, mods: list[nn.Module]) -> tuple[list[nn.Module], list[_Layer]]:
    """Pre-activations (before the first Linear) and the layers, matched to the Layout."""
    by_name = {b.name: b for b in problem.blocks}
    names = {id(m): n for n, m in problem.model.named_modules()}
    pre: list[nn.Module] = []
    layers: list[_Layer] = []
    used: set[str] = set()
    for m in mods:
        if type(m) is nn.Linear:
            prefix = names[id(m)]
            prefix = f"{prefix}." if prefix else ""
            w, b = by_name.get(prefix + "weight"), by_name.get(prefix + "bias")
            fw = prefix + "weight" if prefix + "weight" in problem.frozen else None
            fb = prefix + "bias" if m.bias is not None and prefix + "bias" in problem.frozen \
                else None
            if (w is None and fw is None) or (m.bias is not None and b is None and fb is None) \
                    or (w is not None and w.name in used):
                raise ValueError("a Linear layer is used twice (tied weights)")
            used.update(({w.name} if w is not None else set())
                        | ({b.name} if b is not None else set()))
            layers.append(_Layer(w, b, (), tuple(m.weight.shape), fw, fb))
        elif type(m) in (nn.Flatten, nn.Identity):
            continue
        elif layers:
            last = layers[-1]
            layers[-1] = dataclasses.replace(last, acts=last.acts + (m,))
        else:
            pre.append(m)
    if used != set(by_name):
        raise ValueError("the model has parameters outside its Linear layers")
    return pre, layers


class LinearStackEngine(Engine):
    """The clipped-gradient sums of :class:`~sa_clip.MeanField` for a stack of Linear layers
    (the ``"fast"`` :class:`~sa_clip.engine.Engine`).

    All methods take ``theta`` of shape ``(K, P)`` and a chunk of data: ``x`` of shape
    ``(B, ...)`` shared by the K rows (``shared=True``, the full-data mean field) or
    ``(K, B, ...)`` one batch per row (``shared=False``, SGD minibatches), ``y`` likewise.
    ``plan``: the result of :func:`analyse_stack` when already known.

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> X = torch.randn(6, 3, dtype=torch.float64); y = X.sum(1)
    >>> p = sc.Problem(torch.nn.Linear(3, 1), X, y)
    >>> eng = LinearStackEngine(p, sc.NormClip(0.5))
    >>> eng.clipped_sum(p.theta0[None], X, y).shape
    torch.Size([1, 4])
    """

    name = "fast"
    summary = ("a stack of Linear layers and element-wise activations: per-sample gradient "
               "norms without per-sample gradients")

    def __init__(self, problem: Problem, rule: ClipRule, plan: StackPlan | None = None):
        reason = rule_reason(rule)
        if plan is None and reason is None:
            plan, reason = analyse_stack(problem)
        if reason is not None:
            raise ValueError(f"the fast path does not apply: {reason}.")
        assert plan is not None
        super().__init__(problem, rule, plan)
        self.flatten = plan.flatten
        self.layers = list(plan.layers)
        self._pre = [_act_function(m) for m in plan.pre if type(m) is not nn.Identity]
        self._order = sorted(
            [(ly.weight.start, i, "w") for i, ly in enumerate(self.layers)
             if ly.weight is not None]
            + [(ly.bias.start, i, "b") for i, ly in enumerate(self.layers) if ly.bias is not None])
        # unit-wise groups: offset of each block's first group, in Layout order
        self._unit_offset: dict[str, int] = {}
        g = 0
        for b in problem.blocks:
            self._unit_offset[b.name] = g
            g += b.units

    @classmethod
    def analyse(cls, problem: Problem) -> tuple[Any, str | None]:
        return analyse_stack(problem)

    @classmethod
    def rule_reason(cls, rule: ClipRule) -> str | None:
        return rule_reason(rule)

    @property
    def elements_per_sample(self) -> int:
        """Numbers held per sample and parameter vector in one chunk (for chunk sizing)."""
        # kept: every layer's input and output gradient; transient: one of the widest
        widths = sum(ly.d_in + ly.d_out for ly in self.layers)
        return widths + max(max(ly.d_in, ly.d_out) for ly in self.layers)

    # ------------------------------------------------------------------ forward / backward
    def _inputs(self, x: torch.Tensor, k: int, shared: bool) -> torch.Tensor:
        lead = x.shape[:1] if shared else x.shape[:2]
        a = x.reshape(*lead, -1) if self.flatten else x
        for f in self._pre:
            a = f(a)
        return a

    @staticmethod
    def _linear(a: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """``z = a W^T + b`` for ``W (K, o, i)``, ``b (K, o)``; ``a`` is ``(B, i)`` (shared by
        the K rows: one GEMM against all K weight matrices) or ``(K, B, i)``. Returns
        ``(K, B, o)``."""
        k, o, i = W.shape
        if a.dim() == 2:
            Wt = W.reshape(k * o, i).T
            z = a @ Wt if b is None else torch.addmm(b.reshape(k * o), a, Wt)
            if k == 1:
                return z.unsqueeze(0)
            return z.reshape(a.shape[0], k, o).transpose(0, 1)
        Wt = W.transpose(1, 2)
        return torch.bmm(a, Wt) if b is None else torch.baddbmm(b.unsqueeze(1), a, Wt)

    def _output_grad(self, out: torch.Tensor, y: torch.Tensor, shared: bool) -> torch.Tensor:
        """``dl_i/d out_i``, shape ``(K, B, C)``."""
        k, bsz = out.shape[:2]
        p = self.problem
        loss = p.loss_spec
        if loss == "mse":
            t = y.reshape(1 if shared else k, bsz, -1).to(out.dtype)
            return 2 * (out - t)
        if loss == "cross_entropy":
            onehot = F.one_hot(y.reshape(1 if shared else k, bsz), out.shape[-1]).to(out.dtype)
            if out.shape[-1] > SMALL_SOFTMAX:
                return torch.softmax(out, -1) - onehot
            # over a short last axis torch's softmax is slow (one small reduction per row);
            # over the middle axis of the transposed view it runs vectorised over the rows
            sm = torch.softmax(out.transpose(1, 2), 1).transpose(1, 2)
            return sm.contiguous() - onehot
        tgt = y.expand(k, *y.shape) if shared else y
        tgt = tgt.reshape(k * bsz, *y.shape[(1 if shared else 2):])
        o = out.reshape(k * bsz, *p.output_shape)
        d = vmap(grad(lambda oi, ti: loss(oi, ti).reshape(())))(o, tgt)
        return d.reshape(out.shape)

    def _propagate(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shared: bool
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each layer's inputs ``a`` and output gradients ``delta`` (``(K, B, d_out)``)."""
        k = theta.shape[0]
        a = self._inputs(x, k, shared)
        inputs, backprops, weights = [], [], []
        for ly in self.layers:
            if ly.weight is not None:
                W = theta[:, ly.weight.slice].reshape(k, ly.d_out, ly.d_in)
            else:       # frozen: the same matrix for every row
                W = self.problem.frozen[ly.frozen_w].to(theta).expand(k, ly.d_out, ly.d_in)
            if ly.bias is not None:
                b = theta[:, ly.bias.slice]
            elif ly.frozen_b is not None:
                b = self.problem.frozen[ly.frozen_b].to(theta).expand(k, ly.d_out)
            else:
                b = None
            inputs.append(a)
            weights.append(W)
            a, bp = ly.activate(self._linear(a, W, b))
            backprops.append(bp)
        delta = self._output_grad(a, y, shared)
        deltas: list[torch.Tensor] = [delta] * len(self.layers)
        for l in range(len(self.layers) - 1, -1, -1):
            if backprops[l] is not None:
                delta = backprops[l](delta)
            deltas[l] = delta
            if l:
                delta = torch.matmul(delta, weights[l])
        return inputs, deltas

    # ------------------------------------------------------------------ norms and factors
    @staticmethod
    def _norm(x: torch.Tensor, safe: bool) -> torch.Tensor:
        """Euclidean norm over the last axis; ``safe``: differentiable at 0 (derivative 0)."""
        return stable_norm([x], safe)        # scaled where the squares would overflow

    def _block_norms(self, theta: torch.Tensor, inputs: list[torch.Tensor],
                     deltas: list[torch.Tensor], safe: bool) -> list[torch.Tensor]:
        """Per-sample gradient norms of the rule's groups, in Layout order: one ``(K, B, 1)``
        tensor for global rules; for layer-wise rules ``(K, B, 1)`` per block; for unit-wise
        rules ``(K, B, d_out)`` per weight matrix (one per row) and ``(K, B, 1)`` per bias."""
        gran = self.rule.granularity
        k, bsz = deltas[0].shape[:2]
        anorm, dnorm = {}, {}
        for i in {i for _, i, _ in self._order}:
            anorm[i] = self._norm(inputs[i], safe).expand(k, bsz)
            dnorm[i] = self._norm(deltas[i], safe)
        if gran in ("global", "none"):      # the norm of the blocks' norms, overflow-free
            terms = torch.stack([anorm[i] * dnorm[i] if kind == "w" else dnorm[i]
                                 for _, i, kind in self._order], -1)
            return [stable_norm([terms], safe).unsqueeze(-1)]
        if gran == "layer":
            return [(anorm[i] * dnorm[i] if kind == "w" else dnorm[i]).unsqueeze(-1)
                    for _, i, kind in self._order]
        out = []
        for _, i, kind in self._order:
            if kind == "w":   # ||a_i|| |delta_ij|; in place when nothing differentiates
                gn = deltas[i].abs()
                gn = gn * anorm[i].unsqueeze(-1) if safe else gn.mul_(anorm[i].unsqueeze(-1))
            else:
                gn = dnorm[i].unsqueeze(-1)
            out.append(gn)
        return out

    def _block_factors(self, theta: torch.Tensor, inputs: list[torch.Tensor],
                       deltas: list[torch.Tensor], safe: bool) -> list[torch.Tensor]:
        """Clipping factors for each block, in Layout order: ``(K, B, 1)`` for global and
        layer-wise rules and biases, ``(K, B, d_out)`` for weight rows under unit-wise rules."""
        rule, gran = self.rule, self.rule.granularity
        norms = self._block_norms(theta, inputs, deltas, safe)
        tn = group_norms(theta, self.problem.layout, gran).unsqueeze(1) if rule.relative \
            else None
        if gran == "global":
            return [rule.factors(norms[0], tn)] * len(self._order)
        if gran == "layer":
            return list(rule.factors(torch.cat(norms, -1), tn).split(1, -1))
        out = []
        for (_, i, kind), gn in zip(self._order, norms):
            ly = self.layers[i]
            block = ly.weight if kind == "w" else ly.bias
            g0 = self._unit_offset[block.name]
            out.append(rule.factors(gn, None if tn is None else tn[..., g0:g0 + block.units]))
        return out

    def group_norms(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True) -> torch.Tensor:
        """Per-sample gradient norms of the rule's groups, ``(K, B, G)`` (``G = 1`` for global
        and unclipped rules), without per-sample gradients."""
        inputs, deltas = self._propagate(theta, x, y, shared)
        return torch.cat(self._block_norms(theta, inputs, deltas, safe=False), -1)

    def clipped_directions(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                           shared: bool = True) -> torch.Tensor:
        """Every clipped per-sample gradient ``u_i``, ``(K, B, P)``: the outer products
        ``(delta_i / c_i) a_i^T`` and biases ``delta_i / c_i``, in Layout order."""
        inputs, deltas = self._propagate(theta, x, y, shared)
        k, bsz = deltas[0].shape[:2]
        cs = None if self.rule.granularity == "none" else \
            self._block_factors(theta, inputs, deltas, safe=False)
        pieces = []
        for j, (_, i, kind) in enumerate(self._order):
            d = deltas[i] if cs is None else deltas[i] / cs[j]
            if kind == "b":
                pieces.append(d)
                continue
            a = inputs[i].expand(k, bsz, -1)
            pieces.append((d.unsqueeze(-1) * a.unsqueeze(-2)).reshape(k, bsz, -1))
        return torch.cat(pieces, -1)

    def factors(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                shared: bool = True) -> torch.Tensor:
        """Clipping factors ``c``, shape ``(K, B, G)`` (as :meth:`ClipRule.group_factors`)."""
        if self.rule.granularity == "none":
            k, bsz = theta.shape[0], x.shape[0] if shared else x.shape[1]
            return theta.new_ones(k, bsz, 1)
        cs = self._block_factors(theta, *self._propagate(theta, x, y, shared), safe=False)
        return cs[0] if self.rule.granularity == "global" else torch.cat(cs, -1)

    # ------------------------------------------------------------------ sums
    def _weighted_sum(self, inputs: list[torch.Tensor], deltas: list[torch.Tensor],
                      cs: list[torch.Tensor] | None, inplace: bool = False) -> torch.Tensor:
        """``sum_i u_i`` as ``(K, P)``, each per-sample gradient block divided by its factor.

        ``inplace``: the factors ``cs`` may be overwritten (nothing differentiates).
        """
        pieces = []
        for j, (_, i, kind) in enumerate(self._order):
            ly, delta = self.layers[i], deltas[i]
            c = None if cs is None else cs[j]
            k = delta.shape[0]
            if kind == "b":
                if c is None:
                    pieces.append(delta.sum(1))
                else:   # sum_i delta_i / c_i as one (1, B) x (B, o) product
                    pieces.append(torch.matmul((1 / c).transpose(1, 2), delta).reshape(k, -1))
                continue
            a = inputs[i]
            if c is not None:
                # divide the narrower side: a (per-sample factor, K = 1) or delta
                if c.shape[-1] == 1 and ly.d_in < ly.d_out and (a.dim() == 3 or k == 1):
                    a = a / (c if a.dim() == 3 else c[0])
                elif inplace and self.rule.granularity == "unit" and c.shape == delta.shape:
                    # unit-wise factors are one tensor per block, used once: reuse the memory
                    delta = torch.div(delta, c, out=c)
                else:
                    delta = delta / c
            pieces.append(_outer_sum(delta, a))
        return torch.cat(pieces, 1)

    def clipped_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True, *, safe: bool = False) -> torch.Tensor:
        """``sum_i g_i / c_i`` over the chunk, shape ``(K, P)``.

        ``safe=True`` keeps the result differentiable (forward mode included) where some
        per-sample gradient block is exactly zero, at the price of a few more passes; it is
        turned on by itself when autograd records ``theta`` (pass it under ``jacfwd``).
        """
        safe = safe or (torch.is_grad_enabled() and theta.requires_grad)
        inputs, deltas = self._propagate(theta, x, y, shared)
        if self.rule.granularity == "none":
            return self._weighted_sum(inputs, deltas, None)
        if self.rule.granularity == "unit" and type(self.rule).factors is ClipRule.factors:
            return self._unitwise_sum(theta, inputs, deltas, safe)
        cs = self._block_factors(theta, inputs, deltas, safe)
        return self._weighted_sum(inputs, deltas, cs, inplace=not safe)

    def sum_and_factors(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i g_i / c_i  (K, P), c  (K, B, G))`` from one pass over the chunk."""
        inputs, deltas = self._propagate(theta, x, y, shared)
        k, bsz = deltas[0].shape[:2]
        if self.rule.granularity == "none":
            return self._weighted_sum(inputs, deltas, None), theta.new_ones(k, bsz, 1)
        safe = torch.is_grad_enabled() and theta.requires_grad
        cs = self._block_factors(theta, inputs, deltas, safe)
        c = cs[0] if self.rule.granularity == "global" else torch.cat(cs, -1)
        return self._weighted_sum(inputs, deltas, cs, inplace=False), c

    def _unitwise_sum(self, theta: torch.Tensor, inputs: list[torch.Tensor],
                      deltas: list[torch.Tensor], safe: bool) -> torch.Tensor:
        """Unit-wise clipped sum in two passes per weight matrix instead of five.

        With the base-class factors ``c = max(||a_i|| |delta_ij| / tau_j, 1)`` (the rule's own
        thresholds ``tau``), ``delta_ij / c_ij = clamp(||a_i|| delta_ij, -tau_j, tau_j) /
        ||a_i||``, and the ``1/||a_i||`` goes onto the (narrower, often shared) inputs.
        """
        rule = self.rule
        tn = group_norms(theta, self.problem.layout, "unit").unsqueeze(1) if rule.relative \
            else None
        pieces = []
        for _, i, kind in self._order:
            ly, delta = self.layers[i], deltas[i]
            k = delta.shape[0]
            block = ly.weight if kind == "w" else ly.bias
            g0 = self._unit_offset[block.name]
            tnb = None if tn is None else tn[..., g0:g0 + block.units]
            if kind == "b":
                c = rule.factors(self._norm(delta, safe).unsqueeze(-1), tnb)
                pieces.append(torch.matmul((1 / c).transpose(1, 2), delta).reshape(k, -1))
                continue
            a = inputs[i]
            an = self._norm(a, safe)                        # (B,) shared or (K, B)
            thr = rule.thresholds(tnb)                      # a number or (K, 1, o)
            v = delta * an.unsqueeze(-1)
            v = v.clamp(-thr, thr) if safe else v.clamp_(-thr, thr)
            pos = an > 0
            a_hat = a * (pos / torch.where(pos, an, torch.ones_like(an))).unsqueeze(-1)
            piece = _outer_sum(v, a_hat)
            if safe:
                # where a_i = 0 exactly, v a_hat is 0 with derivative 0, but the block is
                # delta_i a_i^T (unclipped: ||a_i|| |delta_ij| = 0 < tau_j) with derivative
                # delta_i da_i^T; this term adds it (its value is 0)
                piece = piece + _outer_sum(delta * (~pos).to(delta.dtype).unsqueeze(-1), a)
            pieces.append(piece)
        return torch.cat(pieces, 1)

    def gradient_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     shared: bool = True) -> torch.Tensor:
        """Unclipped ``sum_i g_i`` over the chunk, shape ``(K, P)``."""
        return self._weighted_sum(*self._propagate(theta, x, y, shared), None)


def _outer_sum(delta: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``sum_i delta_i a_i^T`` per row, flattened row-major: ``(K, d_out * d_in)``.

    ``delta`` is ``(K, B, d_out)``; ``a`` is ``(B, d_in)`` shared by the K rows (one GEMM for
    all of them) or ``(K, B, d_in)`` (a batched product).
    """
    k, _, d_out = delta.shape
    if a.dim() == 2:
        gw = delta.transpose(1, 2).reshape(k * d_out, -1) @ a
    else:
        gw = torch.bmm(delta.transpose(1, 2), a)
    return gw.reshape(k, -1)


__all__ = ["ACTIVATIONS", "LinearStackEngine", "StackPlan", "analyse_stack", "rule_reason",
           "unsupported_reason"]
