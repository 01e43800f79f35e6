r"""Engines: how :class:`~sa_clip.MeanField` evaluates per-sample quantities on a chunk of data.

Every quantity of the mean field is a sum (or a list) over samples of something built from the
per-sample gradients ``g_i = grad l_i(theta)`` and the clipping factors ``c_i`` of the rule:

* ``clipped_sum``: ``sum_i g_i / c_i`` (``H`` times ``N``; the SGD update times ``B``);
* ``sum_and_factors``: the same and the factors ``c_i`` from one pass (recorded SGD steps);
* ``gradient_sum``: ``sum_i g_i`` (clipping of the batch mean, ``clip_per="batch"``);
* ``group_norms``: ``||g_{i,G}||`` per sample and group (clip statistics, switch margins);
* ``clipped_directions``: every ``u_i = g_i / c_i`` (noise covariance).

An engine implements these five for a chunk: ``theta`` of shape ``(K, P)`` and data ``x``,
``y`` either shared by the ``K`` rows (``shared=True``, shape ``(B, ...)``: the full-data
field) or one batch per row (``shared=False``, ``(K, B, ...)``: SGD minibatches). The
:class:`~sa_clip.MeanField` around it does the chunking over samples, the sharding over
processes, validation and bookkeeping, so a new engine (a convolution-aware one, say) is one
class with these methods and an entry in :data:`sa_clip.meanfield.ENGINES`.

Three engines exist:

* :class:`VmapEngine` (``"vmap"``): per-sample gradients from ``torch.func``
  (``vmap(grad(.))``); any model ``torch.func`` can transform, any rule;
* :class:`~sa_clip.fastpath.LinearStackEngine` (``"fast"``): stacks of ``Linear`` layers and
  element-wise activations, per-sample gradient norms without per-sample gradients;
* :class:`~sa_clip.layers.LayersEngine` (``"layers"``): per-layer per-sample norms from each
  layer's inputs and output gradients (convolutions, embeddings, norm layers, attention,
  recurrent cells), then one reweighted gradient per layer; norm-based rules.

A model that ``torch.func`` cannot take per-sample gradients of is refused when the
:class:`~sa_clip.MeanField` is built (:class:`ModelNotSupportedError`, naming the module), not
on first use (:func:`probe_per_sample`).

The model side of the choice (can an engine serve this model at all?) is analysed once per
problem by :meth:`Engine.analyse`; the rule side by :meth:`Engine.rule_reason`.

Example
-------
>>> import torch, sa_clip as sc
>>> X = torch.randn(6, 3, dtype=torch.float64); y = X.sum(1)
>>> p = sc.Problem(torch.nn.Linear(3, 1), X, y)
>>> eng = VmapEngine(p, sc.NormClip(0.5))
>>> eng.clipped_sum(p.theta0[None], X, y).shape
torch.Size([1, 4])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import grad, vmap

from .clipping import ClipRule, NoClip, ValueClip
from .layout import stable_norm
from .problem import Problem, group_norms


class ModelNotSupportedError(ValueError):
    """A model with a module that no engine can differentiate per sample, raised when the
    :class:`~sa_clip.MeanField` is built (never torch's own error on first use)."""


def probe_per_sample(problem: Problem) -> str | None:
    """Why ``torch.func`` cannot take per-sample gradients of ``problem``'s model (naming the
    innermost module that raised), or None when it can: ``vmap(grad(.))`` over 2 samples and
    a ``vmap`` of the losses over 2 parameter vectors."""
    model = problem.model
    stack: list[str] = []
    names = {id(m): n or "the root" for n, m in model.named_modules()}
    def enter(mod: nn.Module, args: Any) -> None:
        stack.append(names[id(mod)])

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    x, y = problem.take(torch.arange(2) % problem.N)
    th = problem.theta0
    try:
        problem.per_sample_grads(th, x, y)
        vmap(lambda t: problem.sample_losses(t, x, y).sum())(th.expand(2, -1))
    except Exception as exc:     # noqa: BLE001 - turned into one sa_clip error
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = "the model"
        if stack:
            mod = dict(model.named_modules())[stack[-1]] if stack[-1] != "the root" else model
            where = f"module {stack[-1]!r} ({type(mod).__name__})"
        return (f"torch.func cannot take per-sample gradients through {where}: "
                f"{type(exc).__name__}: {msg}")
    finally:
        for h in handles:
            h.remove()
    return None


class Engine(ABC):
    """The interface every engine implements (see the module docstring for the maths).

    ``theta`` is ``(K, P)``; ``x``, ``y`` are one chunk, shared by the K rows (``shared=True``)
    or one batch per row (``shared=False``). Sums are over the chunk's samples.
    """

    #: the name users pass as ``MeanField(..., engine=name)``
    name: ClassVar[str]
    #: one line saying what the engine does, for :attr:`MeanField.reason`
    summary: ClassVar[str]

    def __init__(self, problem: Problem, rule: ClipRule, plan: Any = None):
        self.problem, self.rule, self.plan = problem, rule, plan

    @classmethod
    def analyse(cls, problem: Problem) -> tuple[Any, str | None]:
        """``(plan, None)`` when the engine can serve ``problem``'s model and data, else
        ``(None, why not)``. Called once per problem; the plan is handed to the constructor."""
        return None, None

    @classmethod
    def rule_reason(cls, rule: ClipRule) -> str | None:
        """Why the engine cannot serve ``rule``, or None."""
        return None

    @property
    @abstractmethod
    def elements_per_sample(self) -> int:
        """Numbers held per sample and parameter vector in one chunk (for chunk sizing)."""

    def loops_rows(self, k: int, chunk: int) -> bool:
        """Whether ``K = k`` parameter vectors on shared chunks of ``chunk`` samples are
        evaluated one at a time (then a chunk holds one row's numbers, and is sized so)."""
        return False

    @abstractmethod
    def clipped_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True, *, safe: bool = False) -> torch.Tensor:
        """``sum_i g_i / c_i``, shape ``(K, P)``. ``safe``: stay differentiable (forward mode
        included) where a per-sample gradient block is exactly zero."""

    @abstractmethod
    def sum_and_factors(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i g_i / c_i  (K, P), c  (K, B, G))`` from one pass."""

    @abstractmethod
    def gradient_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     shared: bool = True) -> torch.Tensor:
        """Unclipped ``sum_i g_i``, shape ``(K, P)``."""

    @abstractmethod
    def group_norms(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True) -> torch.Tensor:
        """``||g_{i,G}||`` for the rule's groups, shape ``(K, B, G)`` (``G = 1`` for global and
        unclipped rules; for coordinate rules the largest ``|g_ij|``)."""

    @abstractmethod
    def clipped_directions(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                           shared: bool = True) -> torch.Tensor:
        """Every clipped per-sample gradient ``u_i = g_i / c_i``, shape ``(K, B, P)``."""


def _mode(rule: ClipRule) -> str:
    """How :class:`VmapEngine` applies ``rule`` block by block: ``"sum"`` (no clipping),
    ``"scale"`` (the base-class scaling ``g_G / c_G`` with ``c`` from the rule's own
    :meth:`~ClipRule.factors`), ``"value"`` (:class:`ValueClip`'s clamp) or ``"generic"`` (a
    rule with its own ``clip``: served from the whole per-sample gradients)."""
    t = type(rule)
    own = {"clip", "group_factors", "expanded_factors", "clip_and_factors"}
    base = all(getattr(t, m) is getattr(ClipRule, m) for m in own)
    if rule.granularity == "none" and (base or (
            isinstance(rule, NoClip) and t.clip is NoClip.clip
            and all(getattr(t, m) is getattr(ClipRule, m) for m in own - {"clip"}))):
        return "sum"
    if base and rule.granularity in ("global", "layer", "unit"):
        return "scale"
    if (isinstance(rule, ValueClip) and t.clip is ValueClip.clip
            and t.group_factors is ValueClip.group_factors):
        return "value"
    return "generic"


#: Several parameter vectors on shared data are looped over, one at a time, when one row's
#: per-sample gradients of a chunk hold at least this many numbers: an outer ``vmap`` over
#: ``K`` batches the weights, which turns convolutions into grouped ones and matrix products
#: into batched ones (a CNN with K = 4: 195 ms batched, 91 ms looped), while below this size
#: the per-row Python cost of the loop would dominate (phase-portrait grids of small models).
LOOP_ELEMENTS = 2 ** 18


class VmapEngine(Engine):
    """Per-sample gradients from ``torch.func`` (``vmap(grad(.))``): any model, any rule.

    Memory per chunk is ``K * B * P`` numbers (the per-sample gradients), held as one tensor
    per parameter block: norms, factors and the weighted sums ``sum_i g_i / c_i`` are formed
    block by block (a norm reduction and a ``(1, B) x (B, n)`` product per block), so the
    gradients are never concatenated into a ``(K, B, P)`` copy except where every clipped
    per-sample gradient is asked for (:meth:`clipped_directions`) or a rule brings its own
    ``clip``. One parameter vector (``K = 1``) is differentiated directly, without an outer
    ``vmap`` over ``K`` (which would batch the weights and turn every convolution into a
    grouped one); several vectors on shared data are looped over when a row's work is large
    (:data:`LOOP_ELEMENTS`), and batched by ``vmap`` otherwise.
    """

    name = "vmap"
    summary = "per-sample gradients from torch.func.vmap(grad(.)), any model and rule"

    @classmethod
    def analyse(cls, problem: Problem) -> tuple[Any, str | None]:
        return None, probe_per_sample(problem)

    def __init__(self, problem: Problem, rule: ClipRule, plan: Any = None):
        super().__init__(problem, rule, plan)
        self._mode = _mode(rule)
        gran = rule.granularity
        # groups per block, in Layout order (the columns of the factors (K, B, G))
        self._units = [b.units if gran == "unit" else 1 for b in problem.blocks]

    @property
    def elements_per_sample(self) -> int:
        return self.problem.P

    # ------------------------------------------------------------------ per-sample gradients
    def loops_rows(self, k: int, chunk: int) -> bool:
        return k > 1 and chunk * self.problem.P >= LOOP_ELEMENTS

    def _loop_rows(self, theta: torch.Tensor, x: torch.Tensor, shared: bool) -> bool:
        """Whether to evaluate the ``K`` rows one at a time (see :data:`LOOP_ELEMENTS`)."""
        return shared and self.loops_rows(theta.shape[0], x.shape[0])

    def _block_grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shared: bool
                     ) -> list[torch.Tensor]:
        """Per-sample gradients, one ``(K, B, n_block)`` tensor per block of the Layout."""
        p = self.problem
        names = [b.name for b in p.blocks]

        def one(th: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> list[torch.Tensor]:
            g = vmap(grad(p._loss_one), in_dims=(None, 0, 0))(p.unflatten(th), xb, yb)
            return [g[n].reshape(xb.shape[0], -1) for n in names]

        if theta.shape[0] == 1:
            gs = one(theta[0], x if shared else x[0], y if shared else y[0])
            return [g.unsqueeze(0) for g in gs]
        in_dims = (0, None, None) if shared else (0, 0, 0)
        return vmap(one, in_dims=in_dims)(theta, x, y)

    def _grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shared: bool
               ) -> torch.Tensor:
        """Per-sample gradients ``(K, B, P)`` (one concatenated tensor)."""
        return torch.cat(self._block_grads(theta, x, y, shared), -1)

    # ------------------------------------------------------------------ norms and factors
    def _norms(self, gs: list[torch.Tensor], safe: bool) -> torch.Tensor:
        """Per-sample gradient norms of the rule's groups, ``(K, B, G)``; ``safe``:
        differentiable at a zero group (derivative 0), else one reduction per block with no
        temporary of the gradients' size."""
        gran = self.rule.granularity
        if gran in ("global", "none"):        # without overflow of the squares (scaled)
            return stable_norm(gs, safe).unsqueeze(-1)
        parts = []
        for g, u in zip(gs, self._units):
            gu = g.reshape(*g.shape[:2], u, g.shape[-1] // u)
            parts.append(stable_norm([gu], safe))
        return torch.cat(parts, -1)

    def _factors(self, theta: torch.Tensor, gs: list[torch.Tensor], safe: bool
                 ) -> torch.Tensor:
        """The rule's clipping factors ``(K, B, G)`` (``"scale"`` rules)."""
        rule = self.rule
        tn = group_norms(theta, self.problem.layout, rule.granularity).unsqueeze(1) \
            if rule.relative else None
        return rule.factors(self._norms(gs, safe), tn)

    def _weighted_sum(self, gs: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        """``sum_i w_{i,G} g_{i,G}`` as ``(K, P)``, ``w`` of shape ``(K, B, G)``: per block a
        ``(1, B) x (B, n)`` product (one read of the block), per unit for unit-wise rules."""
        pieces, g0 = [], 0
        for g, u in zip(gs, self._units):
            if w.shape[-1] == 1:                      # one factor per sample: every block
                wb = w
            else:
                wb, g0 = w[..., g0:g0 + u], g0 + u
            k, b, n = g.shape
            if u == 1:
                pieces.append(torch.matmul(wb.transpose(1, 2), g).reshape(k, n))
            else:                                     # (K, u, 1, B) x (K, u, B, n / u)
                gu = g.reshape(k, b, u, n // u).transpose(1, 2)
                pieces.append(torch.matmul(wb.transpose(1, 2).unsqueeze(2), gu).reshape(k, n))
        return torch.cat(pieces, -1)

    # ------------------------------------------------------------------ the engine methods
    def clipped_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True, *, safe: bool = False) -> torch.Tensor:
        if self._loop_rows(theta, x, shared):
            return torch.cat([self.clipped_sum(t[None], x, y, shared, safe=safe)
                              for t in theta])
        gs = self._block_grads(theta, x, y, shared)
        rule, mode = self.rule, self._mode
        if mode == "sum":
            return torch.cat([g.sum(1) for g in gs], -1)
        if mode == "value":
            v = rule.v  # type: ignore[attr-defined]
            return torch.cat([g.clamp(-v, v).sum(1) for g in gs], -1)
        if mode == "generic":
            return rule.clip(torch.cat(gs, -1), theta.unsqueeze(1), self.problem.layout).sum(1)
        return self._weighted_sum(gs, 1.0 / self._factors(theta, gs, safe))

    def sum_and_factors(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if self._loop_rows(theta, x, shared):
            rows = [self.sum_and_factors(t[None], x, y, shared) for t in theta]
            return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        gs = self._block_grads(theta, x, y, shared)
        rule, mode = self.rule, self._mode
        if mode == "scale":
            c = self._factors(theta, gs, torch.is_grad_enabled())
            return self._weighted_sum(gs, 1.0 / c), c
        if mode == "sum":
            k, b = gs[0].shape[:2]
            return torch.cat([g.sum(1) for g in gs], -1), gs[0].new_ones(k, b, 1)
        u, c = rule.clip_and_factors(torch.cat(gs, -1), theta.unsqueeze(1),
                                     self.problem.layout, overwrite=True)
        return u.sum(1), c

    def gradient_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     shared: bool = True) -> torch.Tensor:
        p = self.problem

        def total(th: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return p.sample_losses(th, xb, yb).sum()

        if theta.shape[0] == 1:
            return grad(total)(theta[0], x if shared else x[0], y if shared else y[0])[None]
        in_dims = (0, None, None) if shared else (0, 0, 0)
        return vmap(grad(total), in_dims=in_dims)(theta, x, y)

    def group_norms(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True) -> torch.Tensor:
        if self._loop_rows(theta, x, shared):
            return torch.cat([self.group_norms(t[None], x, y, shared) for t in theta])
        gs = self._block_grads(theta, x, y, shared)
        if self.rule.granularity == "coordinate":
            return torch.stack([g.abs().amax(-1) for g in gs], -1).amax(-1, keepdim=True)
        return self._norms(gs, torch.is_grad_enabled())

    def clipped_directions(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                           shared: bool = True) -> torch.Tensor:
        if self._loop_rows(theta, x, shared):
            return torch.cat([self.clipped_directions(t[None], x, y, shared) for t in theta])
        g = self._grads(theta, x, y, shared)
        return self.rule.clip(g, theta.unsqueeze(1), self.problem.layout)


__all__ = ["Engine", "VmapEngine", "LOOP_ELEMENTS", "ModelNotSupportedError", "probe_per_sample"]
