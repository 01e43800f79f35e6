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

Two engines exist:

* :class:`VmapEngine` (``"vmap"``): per-sample gradients from ``torch.func``
  (``vmap(grad(.))``); any model, any rule;
* :class:`~sa_clip.fastpath.LinearStackEngine` (``"fast"``): stacks of ``Linear`` layers and
  element-wise activations, per-sample gradient norms without per-sample gradients.

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
from torch.func import grad, vmap

from .clipping import ClipRule
from .problem import Problem, group_norms


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


class VmapEngine(Engine):
    """Per-sample gradients from ``torch.func`` (``vmap(grad(.))``): any model, any rule.

    Memory per chunk is ``K * B * P`` numbers (the per-sample gradients).
    """

    name = "vmap"
    summary = "per-sample gradients from torch.func.vmap(grad(.)), any model and rule"

    @property
    def elements_per_sample(self) -> int:
        return self.problem.P

    def _grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shared: bool
               ) -> torch.Tensor:
        """Per-sample gradients ``(K, B, P)``."""
        in_dims = (0, None, None) if shared else (0, 0, 0)
        return vmap(self.problem.per_sample_grads, in_dims=in_dims)(theta, x, y)

    def clipped_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True, *, safe: bool = False) -> torch.Tensor:
        g = self._grads(theta, x, y, shared)
        rule, layout = self.rule, self.problem.layout
        if rule.granularity in ("none", "global"):
            # sum_i g_i / c_i is a (1, B) x (B, P) product per theta: one read of g, no copy
            w = 1.0 / rule.group_factors(g, theta.unsqueeze(1), layout)       # (K, B, 1)
            return torch.bmm(w.transpose(1, 2), g).squeeze(1)
        return rule.clip(g, theta.unsqueeze(1), layout).sum(1)

    def sum_and_factors(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        g = self._grads(theta, x, y, shared)
        u, c = self.rule.clip_and_factors(g, theta.unsqueeze(1), self.problem.layout,
                                          overwrite=True)
        return u.sum(1), c

    def gradient_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     shared: bool = True) -> torch.Tensor:
        p = self.problem
        in_dims = (0, None, None) if shared else (0, 0, 0)
        return vmap(grad(lambda th, xb, yb: p.sample_losses(th, xb, yb).sum()),
                    in_dims=in_dims)(theta, x, y)

    def group_norms(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    shared: bool = True) -> torch.Tensor:
        g = self._grads(theta, x, y, shared)
        gran = self.rule.granularity
        if gran == "coordinate":
            return g.abs().amax(-1, keepdim=True)
        return group_norms(g, self.problem.layout, "global" if gran == "none" else gran)

    def clipped_directions(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                           shared: bool = True) -> torch.Tensor:
        g = self._grads(theta, x, y, shared)
        return self.rule.clip(g, theta.unsqueeze(1), self.problem.layout)


__all__ = ["Engine", "VmapEngine"]
