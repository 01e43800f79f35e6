"""The ``"layers"`` engine class (:mod:`sa_clip.layers`; the maths is in the package
docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..clipping import ClipRule
from ..engine import LOOP_ELEMENTS, Engine, VmapEngine, _mode
from ..layout import group_norms
from ..problem import Problem
from ._analysis import LayersPlan, _chunk_parts, _Part, _Replan, _squares, analyse_layers


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
    #: Every block's parts for one ``theta (P,)`` on a chunk (``_analysis._chunk_parts``).
    _parts = staticmethod(_chunk_parts)
    #: Per-sample squared norms per block and each block's single part (``_analysis._squares``).
    _squares = staticmethod(_squares)

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
