r"""Mean field of per-batch clipping, ``H_M = E_B[u_B(theta)]`` (docs/theory.md#clipping-rules).

With per-batch clipping (``clip_grad_norm_`` on a minibatch of ``M`` samples) the update is
``u_B = g_B / c(g_B)`` with ``g_B`` the batch-mean gradient. Its mean over random batches has no
closed form; it is estimated by Monte Carlo over ``samples`` random batches, all of them in a few
batched :meth:`~sa_clip.MeanField.directions` calls.

Two cases are exact and returned without sampling (standard error 0): ``M = 1`` (a batch of one
sample is clipped like a single sample, so ``H_1 = H``) and, without replacement, ``M = N``
(full-batch clipped gradient descent).
"""

from __future__ import annotations

from typing import Any

import torch

from ._validate import check_nonneg_int
from .clipping import ClipRule, make_rule
from .meanfield import MeanField
from .problem import Problem
from .sgd.samplers import make_generator
from .sources import iter_chunks


def batch_mean_field(problem: Problem, rule: ClipRule | str, theta: Any, batch_size: int, *,
                     samples: int = 1000, seed: int | torch.Generator | None = None,
                     replace: bool = True, max_elements: int = 2 ** 22
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Monte-Carlo estimate of ``H_M(theta)`` with its standard error.

    .. math:: \hat H_M = \frac1S \sum_{s=1}^S u_{B_s}(\theta), \qquad
              \mathrm{se} = \sqrt{\widehat{\mathrm{Var}}(u_B) / S} \ \text{(per coordinate)},

    with ``S = samples`` batches ``B_s`` of ``M = batch_size`` indices drawn uniformly with
    replacement (``replace=True``: i.i.d. ordered tuples, as SGD draws them) or as ``M``
    distinct samples (``replace=False``).

    Main arguments
    --------------
    problem, rule : the problem and clipping rule
    theta : ``(P,)`` or ``(K, P)``
    batch_size : int >= 1 (``M``)

    Other arguments
    ---------------
    samples : int >= 2
        Batches per ``theta``.
    seed : int, torch.Generator or None
    replace : bool
    max_elements : int
        Budget (in numbers) of one batched call: ``rows * M * P`` stays below it.

    Returns
    -------
    (mean, stderr) : tensors of the shape of ``theta``.

    Raises
    ------
    ValueError
        For ``batch_size < 1``, ``samples < 2``, or ``batch_size > N`` without replacement.

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d(n=20)
    >>> m, se = batch_mean_field(p, sc.NormClip(0.1), p.theta0, 4, samples=200, seed=0)
    >>> m.shape, bool((se > 0).all())
    (torch.Size([2]), True)
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be a sa_clip.Problem, got {type(problem).__name__}.")
    rule = make_rule(rule) if isinstance(rule, str) else rule
    m = check_nonneg_int("batch_size", batch_size, minimum=1)
    samples = check_nonneg_int("samples", samples, minimum=2)
    max_elements = check_nonneg_int("max_elements", max_elements, minimum=1)
    n = problem.N
    if not replace and m > n:
        raise ValueError(f"`batch_size` = {m} exceeds N = {n}: batches without replacement "
                         "hold distinct samples.")
    field = MeanField(problem, rule)
    th, batched = problem.check_theta(theta)
    k, p = th.shape

    def out(mean: torch.Tensor, se: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (mean, se) if batched else (mean[0], se[0])

    if m == 1:
        h = field(th)
        return out(h, torch.zeros_like(h))
    if not replace and m == n:
        idx = torch.arange(n, device=problem.device).expand(k, n)
        with torch.no_grad():
            h = field.directions(th, idx, "batch")
        return out(h, torch.zeros_like(h))

    gen, _ = make_generator(seed)
    rows = max(1, min(k * samples, max_elements // max(1, m * p)))
    total = torch.zeros_like(th)
    total_sq = torch.zeros_like(th)
    with torch.no_grad():
        for start in range(0, k * samples, rows):
            stop = min(start + rows, k * samples)
            if replace:
                idx = torch.randint(n, (stop - start, m), generator=gen)
            else:
                idx = torch.argsort(torch.rand(stop - start, n, generator=gen), dim=1)[:, :m]
            who = torch.arange(start, stop, device=problem.device) // samples
            u = field.directions(th[who], idx.to(problem.device), "batch")
            total.index_add_(0, who, u)
            total_sq.index_add_(0, who, u * u)
    mean = total / samples
    var = (total_sq - samples * mean * mean).clamp(min=0) / (samples - 1)
    return out(mean, torch.sqrt(var / samples))



class FixedBatchField:
    r"""``H_M(theta)``, the mean field of per-batch clipping, estimated with FIXED batches.

    .. math:: \hat H_M(\theta) = \frac1S \sum_{s=1}^S
              \mathrm{clip}\Big(\frac1M \sum_{i \in B_s} g_i(\theta)\Big)

    with ``S`` batches ``B_s`` of ``M`` indices drawn once (uniform, with replacement, as SGD
    draws them). Reusing the same batches at every ``theta`` (common random numbers) makes the
    estimate a deterministic, piecewise-smooth function of ``theta``, so streamlines, an ODE
    solver and a root finder can use it; its Monte-Carlo error is that of
    :func:`sa_clip.batch_mean_field` with ``samples = S``. Callable on ``(P,)`` or ``(K, P)``;
    all ``K * S`` batches go through batched calls of :meth:`MeanField.directions`. ``index``
    gives the batches instead (e.g. every ordered batch, which makes ``H_M`` exact).

    >>> import sa_clip as sc
    >>> p = sc.problems.tanh_regression()
    >>> hm = FixedBatchField(sc.MeanField(p, sc.NormClip(1.0)), 4, samples=8, seed=0)
    >>> hm(torch.zeros(3, 2, dtype=torch.float64)).shape
    torch.Size([3, 2])
    """

    def __init__(self, field: MeanField, batch_size: int, *, samples: int = 32,
                 seed: int = 0, index: torch.Tensor | None = None,
                 max_elements: int = 2 ** 24):
        self.field, self.problem = field, field.problem
        if index is None:
            gen = torch.Generator().manual_seed(seed)
            index = torch.randint(self.problem.N, (samples, batch_size), generator=gen)
        self.index = index.to(self.problem.device)              # (S, M): the fixed batches
        self.max_elements = max_elements
        self.nfev = 0

    def directions(self, theta: torch.Tensor) -> torch.Tensor:
        """The clipped batch-mean direction of every fixed batch at ``K`` points:
        ``(K, S, P)``, in chunks of about ``max_elements`` numbers."""
        k, (b, m) = theta.shape[0], self.index.shape
        rows = max(1, self.max_elements // max(1, m * self.problem.P))
        flat_t = theta.repeat_interleave(b, 0)
        flat_i = self.index.repeat(k, 1)
        self.nfev += k
        with torch.no_grad():
            out = [self.field.directions(flat_t[s], flat_i[s], "batch")
                   for s in iter_chunks(k * b, rows)]
        return torch.cat(out).reshape(k, b, -1)

    def __call__(self, theta: Any) -> torch.Tensor:
        t, batched = self.problem.check_theta(theta)
        h = self.directions(t).mean(1)
        return h if batched else h[0]

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        """``D H_M`` by central differences (steps ``eps^(1/3) max(|theta_j|, 1)``), at one
        ``theta (P,)`` -> ``(P, P)`` or at ``K`` points ``(K, P)`` -> ``(K, P, P)``, in one
        batched call."""
        th = theta if theta.dim() == 2 else theta[None]
        p = th.shape[-1]
        hstep = torch.finfo(th.dtype).eps ** (1 / 3) * th.abs().clamp(min=1.0)     # (K, P)
        e = torch.eye(p, dtype=th.dtype, device=th.device)
        pts = torch.cat([th[:, None] + hstep[:, :, None] * e,
                         th[:, None] - hstep[:, :, None] * e], 1).reshape(-1, p)
        hv = self(pts).reshape(th.shape[0], 2, p, p)
        jac = ((hv[:, 0] - hv[:, 1]) / (2 * hstep[:, :, None])).transpose(1, 2)
        return jac if theta.dim() == 2 else jac[0]

__all__ = ["FixedBatchField", "batch_mean_field"]
