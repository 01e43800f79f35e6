r"""The clipped mean field ``H(theta)`` and the SGD update it averages (docs/theory.md#mean-field).

.. math:: H(\theta) = \frac1N \sum_{i=1}^N \frac{g_i(\theta)}{c_i(\theta)},
          \qquad g_i = \nabla_\theta\, l_i(\theta),

with ``c_i`` the clipping factors of the rule (per group for layer- and unit-wise rules). The
limiting ODE of clipped SGD is ``d theta / d tau = -H(theta)``.

Per-sample gradients come from ``torch.func`` (``vmap(grad(.))``) in chunks of samples, so
memory stays bounded; ``K`` parameter vectors (shape ``(K, P)``) are one batched computation.
For stacks of ``Linear`` layers and element-wise activations the fast path of
:mod:`sa_clip.fastpath` replaces the per-sample gradients by their norms (same numbers, to
round-off, at about the cost of one plain gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, jacfwd, vmap

from . import distributed as _dist
from ._validate import check_choice, check_nonneg_int
from .clipping import ClipRule, make_rule
from .fastpath import LinearStackEngine, unsupported_reason
from .problem import Problem, iter_chunks

METHODS = ("auto", "vmap", "fast")
CLIP_PER = ("sample", "batch")


@dataclass(frozen=True)
class ClipStats:
    """How much clipping happens at a ``theta``.

    Attributes
    ----------
    factors : tensor ``(N, G)`` or ``(K, N, G)``
        Clipping factor ``c >= 1`` of each sample and group (``G = 1`` for global rules).
    fraction : tensor ``()`` or ``(K,)``
        Fraction of samples with some factor ``> 1`` (clipped somewhere).
    """

    factors: torch.Tensor
    fraction: torch.Tensor


class MeanField:
    """``H(theta)``, the mean of the clipped per-sample gradients over the data set.

    Main arguments
    --------------
    problem : Problem
    rule : ClipRule or a registry name such as ``"none"``

    Other arguments
    ---------------
    method : ``"auto"`` | ``"vmap"`` | ``"fast"``
        ``"vmap"``: per-sample gradients from ``torch.func``, any model and rule. ``"fast"``:
        per-sample gradient norms without per-sample gradients (:mod:`sa_clip.fastpath`), for
        a ``Linear`` or a ``Sequential`` of ``Linear`` layers and element-wise activations and
        every rule but ``ValueClip``. ``"auto"`` picks ``"fast"`` when it applies. The
        attribute ``method`` holds the one chosen.
    chunk_size : int, optional
        Samples per chunk. Default: as many as keep a chunk's working set (``K * chunk * P``
        per-sample gradients for ``"vmap"``, ``K * chunk`` times the layer widths for
        ``"fast"``) below ``max_elements``.
    max_elements : int
        Memory budget, in numbers, of one chunk.
    distributed : bool
        Shard the samples over the processes of an initialised ``torch.distributed`` process
        group (see :mod:`sa_clip.distributed`): rank ``r`` of ``W`` sums the clipped gradients
        of its contiguous samples ``[N r // W, N (r+1) // W)`` (uneven splits are fine) and the
        partial sums are all-reduced, so every rank returns the full ``H`` (and ``jacobian``,
        ``clip_stats``), bit-identical across ranks. Every rank must make the same calls in
        the same order (collectives). ``directions`` (SGD minibatches) is not sharded.
    group : torch.distributed.ProcessGroup, optional
        The group to shard over (default: the default group). Only with ``distributed=True``.

    Raises
    ------
    ValueError
        For ``method="fast"`` on a model or rule the fast path does not cover (says why).

    Calling ``field(theta)`` with ``theta`` of shape ``(P,)`` returns ``(P,)``; with ``(K, P)``
    it returns ``(K, P)``. ``field.nfev`` counts evaluations (one per theta vector).

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> X = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]; y = 3 * X[:, 0]
    >>> p = sc.Problem(torch.nn.Linear(1, 1, bias=False), X, y, loss="mse")
    >>> field = sc.MeanField(p, sc.NormClip(0.5))
    >>> field(torch.zeros(1)).shape
    torch.Size([1])
    """

    def __init__(self, problem: Problem, rule: ClipRule | str, *, method: str = "auto",
                 chunk_size: int | None = None, max_elements: int = 2 ** 24,
                 distributed: bool = False, group: Any = None):
        if not isinstance(problem, Problem):
            raise TypeError(f"`problem` must be a sa_clip.Problem, got {type(problem).__name__}.")
        self.problem = problem
        self.rule = make_rule(rule) if isinstance(rule, str) else rule
        if not isinstance(self.rule, ClipRule):
            raise TypeError(f"`rule` must be a ClipRule or a rule name, got {rule!r}.")
        check_choice("method", method, METHODS)
        self._fast: LinearStackEngine | None = None
        if method != "vmap":
            reason = unsupported_reason(problem, self.rule)
            if reason is None:
                self._fast = LinearStackEngine(problem, self.rule)
            elif method == "fast":
                raise ValueError(f"`method`='fast' does not apply: {reason}. Use method='auto' "
                                 f"or 'vmap'.")
        self.method = "fast" if self._fast is not None else "vmap"
        self.chunk_size = None if chunk_size is None else check_nonneg_int(
            "chunk_size", chunk_size, minimum=1)
        self.max_elements = check_nonneg_int("max_elements", max_elements, minimum=1)
        if not isinstance(distributed, bool):
            raise TypeError(f"`distributed` must be True or False, got {distributed!r}.")
        if distributed and not _dist.is_active():
            raise ValueError("`distributed=True` needs an initialised torch.distributed process "
                             "group: launch with torchrun and call "
                             "sa_clip.distributed.init_from_env() (or "
                             "torch.distributed.init_process_group) first.")
        if group is not None and not distributed:
            raise ValueError(f"`group` is only used with distributed=True, got group={group!r} "
                             "with distributed=False.")
        self.distributed, self.group = distributed, group
        self._defer_reduce = False
        self.nfev = 0
        self._differentiable = False

    def __repr__(self) -> str:
        return f"MeanField({self.problem.name!r}, {self.rule!r}, method={self.method!r})"

    # ------------------------------------------------------------------ helpers
    def _chunk(self, k: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        per = self._fast.elements_per_sample if self._fast is not None else self.problem.P
        n = self.problem.N
        most = max(1, min(n, self.max_elements // max(1, k * per)))
        pieces = -(-n // most)
        return -(-n // pieces)   # balanced: 20,000 in 10,000 + 10,000, not 19,000 + 1,000

    def _grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               shared_data: bool) -> torch.Tensor:
        """Per-sample gradients ``(K, B, P)`` for ``theta (K, P)``."""
        in_dims = (0, None, None) if shared_data else (0, 0, 0)
        return vmap(self.problem.per_sample_grads, in_dims=in_dims)(theta, x, y)

    def _shard(self) -> slice:
        """The contiguous samples this process owns (all of them, in one process)."""
        if not self.distributed:
            return slice(0, self.problem.N)
        return _dist.shard(self.problem.N, *_dist.rank_and_world(self.group))

    def _slices(self, k: int):
        """The chunks of samples this process evaluates: its shard, chunk by chunk."""
        sh = self._shard()
        return (slice(sh.start + s.start, sh.start + s.stop)
                for s in iter_chunks(sh.stop - sh.start, self._chunk(k)))

    def _reduce(self, total: torch.Tensor) -> torch.Tensor:
        """Combine the partial sums of the processes (identity in one process)."""
        if not self.distributed or self._defer_reduce:
            return total
        return _dist.all_reduce_sum(total, self.group)

    def _chunk_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                   ) -> torch.Tensor:
        """``sum_i u_i`` over one chunk of samples, ``(K, P)``, for ``theta (K, P)``."""
        if self._fast is not None:
            # differentiable at zero gradient blocks when autograd or jacobian may look
            safe = self._differentiable or torch.is_grad_enabled()
            return self._fast.clipped_sum(theta, x, y, shared=True, safe=safe)
        g = self._grads(theta, x, y, shared_data=True)
        rule, layout = self.rule, self.problem.layout
        if rule.granularity in ("none", "global"):
            # sum_i g_i / c_i is a (1, B) x (B, P) product per theta: one read of g, no copy
            w = 1.0 / rule.group_factors(g, theta.unsqueeze(1), layout)       # (K, B, 1)
            return torch.bmm(w.transpose(1, 2), g).squeeze(1)
        return rule.clip(g, theta.unsqueeze(1), layout).sum(1)

    # ------------------------------------------------------------------ the field
    def _h(self, theta: torch.Tensor) -> torch.Tensor:
        """``H`` for ``theta (K, P)``, differentiable in ``theta``."""
        total = torch.zeros_like(theta)
        for s in self._slices(theta.shape[0]):
            total = total + self._chunk_sum(theta, *self.problem.data(s))
        return self._reduce(total) / self.problem.N

    def __call__(self, theta: Any) -> torch.Tensor:
        """``H(theta)``: ``(P,) -> (P,)``, ``(K, P) -> (K, P)``."""
        t, batched = self.problem.check_theta(theta)
        self.nfev += t.shape[0]
        with torch.no_grad():
            h = self._h(t)
        return h if batched else h[0]

    def jacobian(self, theta: Any) -> torch.Tensor:
        """``DH(theta)``, shape ``(P, P)`` (or ``(K, P, P)``), by forward-mode autodiff.

        Exact away from the clipping switch ``||g_i|| = tau``, where ``H`` has a kink: there
        it returns the derivative of the branch that is active at ``theta``.
        """
        t, batched = self.problem.check_theta(theta)
        # all_reduce cannot run inside jacfwd/vmap: differentiate this shard's part of H, then
        # sum the partial Jacobians (H is linear in the partial sums).
        self._defer_reduce = self._differentiable = True
        try:
            jac = vmap(jacfwd(lambda th: self._h(th.unsqueeze(0))[0]))(t)
        finally:
            self._defer_reduce = self._differentiable = False
        if self.distributed:
            jac = _dist.all_reduce_sum(jac, self.group)
        return jac if batched else jac[0]

    def clip_stats(self, theta: Any) -> ClipStats:
        """Clipping factors of every sample and the fraction of samples clipped.

        With ``distributed=True`` each rank computes the factors of its shard and the shards
        are all-gathered, so every rank returns the factors of all ``N`` samples.
        """
        p, rule = self.problem, self.rule
        t, batched = p.check_theta(theta)
        parts = []
        with torch.no_grad():
            for s in self._slices(t.shape[0]):
                if self._fast is not None:
                    parts.append(self._fast.factors(t, *p.data(s), shared=True))
                    continue
                g = self._grads(t, *p.data(s), shared_data=True)
                parts.append(rule.group_factors(g, t.unsqueeze(1), p.layout))
        if not parts:   # an empty shard (N < world size): no samples, but the right G
            g0 = rule.group_factors(torch.zeros_like(t[:, None]), t.unsqueeze(1), p.layout)
            parts.append(g0[:, :0])
        c = torch.cat(parts, 1)
        if self.distributed:
            c = _dist.all_gather_rows(c, p.N, dim=1, group=self.group)
        frac = (c > 1).any(-1).to(t.dtype).mean(-1)
        return ClipStats(c, frac) if batched else ClipStats(c[0], frac[0])

    # ------------------------------------------------------------------ stochastic updates
    def directions(self, theta: torch.Tensor, index: torch.Tensor, clip_per: str = "sample"
                   ) -> torch.Tensor:
        """The stochastic update directions ``u(theta_k; batch_k)``, shape ``(K, P)``.

        ``theta`` is ``(K, P)`` and ``index`` ``(K, B)`` holds each row's batch of sample
        indices. ``clip_per="sample"`` averages the clipped per-sample gradients (the paper,
        DP-SGD); ``"batch"`` clips the batch-mean gradient (``clip_grad_norm_``).
        """
        check_choice("clip_per", clip_per, CLIP_PER)
        if self._fast is not None and clip_per == "sample":
            x, y = self.problem.take(index)
            return self._fast.clipped_sum(theta, x, y, shared=False) / index.shape[1]
        return self._directions_stats(theta, index, clip_per)[0]

    def directions_stats(self, theta: torch.Tensor, index: torch.Tensor,
                         clip_per: str = "sample") -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`directions` and the fraction of each row's batch that was clipped, from one
        gradient pass: ``(u (K, P), fraction (K,))``.

        ``clip_per="sample"``: the fraction of the ``B`` samples with some factor ``c > 1``;
        ``"batch"``: 1.0 when the batch-mean gradient was clipped, else 0.0.
        """
        check_choice("clip_per", clip_per, CLIP_PER)
        return self._directions_stats(theta, index, clip_per)

    def _directions_stats(self, theta: torch.Tensor, index: torch.Tensor, clip_per: str
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        p, rule = self.problem, self.rule
        x, y = p.take(index)
        if self._fast is not None:
            if clip_per == "sample":
                total, c = self._fast.sum_and_factors(theta, x, y, shared=False)
                return total / index.shape[1], (c > 1).any(-1).to(theta.dtype).mean(-1)
            gsum = self._fast.gradient_sum(theta, x, y, shared=False)
            u, c = rule.clip_and_factors(gsum, theta, p.layout, 1.0 / index.shape[1],
                                         overwrite=True)
            return u, (c > 1).any(-1).to(theta.dtype)
        if clip_per == "sample":
            g = self._grads(theta, x, y, shared_data=False)
            u, c = rule.clip_and_factors(g, theta.unsqueeze(1), p.layout)
            return u.mean(1), (c > 1).any(-1).to(theta.dtype).mean(-1)
        gb = vmap(grad(lambda th, xb, yb: p.sample_losses(th, xb, yb).mean()))(theta, x, y)
        u, c = rule.clip_and_factors(gb, theta, p.layout, overwrite=True)
        return u, (c > 1).any(-1).to(theta.dtype)
