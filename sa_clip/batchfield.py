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


__all__ = ["batch_mean_field"]
