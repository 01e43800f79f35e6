r"""One step of many clipped-SGD chains, as a pure function of an explicit state (optax-style).

.. math:: \theta_k(n+1) = \Pi\big(\theta_k(n) - a(n)\, u(\theta_k(n); B_{k,n})\big),

with ``u`` the clipped update direction of chain ``k``'s batch (per-sample clipping: the mean of
the clipped per-sample gradients; per-batch clipping: the clipped batch-mean gradient) and ``Pi``
the optional projection onto the ball of radius ``R`` (scheme (9) of the paper; the maths is in
``docs/theory.md``).

:func:`sgd_init` builds a :class:`ChainState`, :func:`sgd_step` advances it by one step and
returns what the step measured (:class:`StepInfo`); :func:`sa_clip.simulate_sgd` is a loop over
them. A chain whose iterate turns non-finite or leaves the ball ``||theta|| <= blowup_radius``
is frozen at its last good iterate and marked dead (``alive = False``, ``blowup_step``).

Example
-------
>>> import sa_clip as sc, torch
>>> p = sc.problems.logistic2d(n=10)
>>> field = sc.MeanField(p, sc.NormClip(0.5))
>>> state = sgd_init(p, chains=3)
>>> state, info = sgd_step(field, state, torch.zeros(3, 2, dtype=torch.long), 0.1, step=0)
>>> state.theta.shape, bool(state.alive.all())
(torch.Size([3, 2]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._validate import as_tensor
from ..meanfield import MeanField
from ..problem import Problem
from ._blowup import bad_rows
from ._fused import fused_engine, fused_step


@dataclass(frozen=True)
class ChainState:
    """The state of ``K`` chains between two steps.

    Attributes
    ----------
    theta : ``(K, P)``
        Current iterates (a dead chain keeps its last good iterate).
    alive : bool ``(K,)``
        False once a chain blew up.
    blowup_step : int64 ``(K,)``
        First step ``n`` whose iterate ``theta(n)`` was bad, ``-1`` while alive.
    xi : ``(K, P)`` or None
        Noise sum ``sum_{k<n} a(k) M(k+1)`` with ``M(k+1) = u - H(theta(k))`` (noise recorded).
    qv : ``(K,)`` or None
        Its quadratic variation ``sum_{k<n} a(k)^2 ||M(k+1)||^2``.
    sq_norm : float64 ``(K,)`` or None
        ``||theta||^2`` as carried by the in-place step (a cache, not part of a checkpoint:
        recomputed exactly every few steps and after a resume).
    """

    theta: torch.Tensor
    alive: torch.Tensor
    blowup_step: torch.Tensor
    xi: torch.Tensor | None = None
    qv: torch.Tensor | None = None
    sq_norm: torch.Tensor | None = None

    @property
    def chains(self) -> int:
        return self.theta.shape[0]

    def masked_theta(self) -> torch.Tensor:
        """``theta`` with NaN rows for dead chains (what a record holds)."""
        return torch.where(self.alive[:, None], self.theta, float("nan"))


@dataclass(frozen=True)
class StepInfo:
    """What one :func:`sgd_step` measured, NaN for chains dead before the step.

    Attributes
    ----------
    direction : ``(K, P)`` or None
        The update directions ``u`` (before the step size); None from the in-place step,
        which never forms them.
    clip_fraction : ``(K,)`` or None
        Fraction of each batch clipped (``stats=True``).
    noise_norm : ``(K,)`` or None
        ``||M(n+1)|| = ||u - H(theta(n))||`` (when the state carries noise sums).
    """

    direction: torch.Tensor | None
    clip_fraction: torch.Tensor | None = None
    noise_norm: torch.Tensor | None = None


def start_theta(problem: Problem, chains: int, theta0: Any = None) -> torch.Tensor:
    """The ``(chains, P)`` start: ``problem.theta0`` by default, a ``(P,)`` vector broadcast,
    or a ``(chains, P)`` array; it must be finite."""
    if theta0 is None:
        return problem.theta0.expand(chains, -1).clone()
    t0 = as_tensor("theta0", theta0, dtype=problem.dtype, device=problem.device)
    if t0.shape == (problem.P,):
        theta = t0.expand(chains, -1).clone()
    elif t0.shape == (chains, problem.P):
        theta = t0.clone()
    else:
        raise ValueError(f"`theta0` must have shape (P,) = ({problem.P},) or (chains, P) = "
                         f"({chains}, {problem.P}), got {tuple(t0.shape)}.")
    if not bool(torch.isfinite(theta).all()):
        raise ValueError("`theta0` must be finite.")
    return theta


def sgd_init(problem: Problem, chains: int, theta0: Any = None, *,
             record_noise: bool = False) -> ChainState:
    """All chains alive at the start (see :func:`start_theta`), noise sums at 0 when
    ``record_noise``."""
    theta = start_theta(problem, chains, theta0)
    xi = torch.zeros_like(theta) if record_noise else None
    qv = theta.new_zeros(chains) if record_noise else None
    return ChainState(theta=theta, alive=torch.ones(chains, dtype=torch.bool, device=theta.device),
                      blowup_step=torch.full((chains,), -1, dtype=torch.long,
                                             device=theta.device),
                      xi=xi, qv=qv)


def step_direction(field: MeanField, theta: torch.Tensor, batch: torch.Tensor,
                   clip_per: str = "sample", stats: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(u (K, P), clip fraction (K,) or None)`` for ``theta (K, P)`` and ``batch (K, B)``:
    :meth:`MeanField.directions_stats` when ``stats`` (one gradient pass for both), else
    :meth:`MeanField.directions`."""
    if stats:
        return field.directions_stats(theta, batch, clip_per)
    return field.directions(theta, batch, clip_per), None




def sgd_step(field: MeanField, state: ChainState, batch: torch.Tensor, a: float, *,
             step: int, clip_per: str = "sample", project_radius: float | None = None,
             blowup_radius: float = math.inf, stats: bool = False, inplace: bool = False
             ) -> tuple[ChainState, StepInfo]:
    """Advance every chain of ``state`` by one step of size ``a`` on ``batch (K, B)``.

    ``step`` is the number ``n`` of the step (a chain that goes bad gets ``blowup_step = n+1``);
    ``stats`` also returns the clipping fraction. When ``state`` carries noise sums, the noise
    ``M = u - H(theta)`` (one full-data ``H`` per step) is added to them. The arithmetic is
    ``theta - a * u``, projected, then frozen where bad, in this order (bit-exact across
    versions of this function).

    ``inplace=True`` allows the fused kernel of :mod:`sa_clip.sgd._fused` where it applies (a
    stack of Linear layers on the fast path, a global or no-clipping rule that is not relative,
    no projection, no noise sums): ``state.theta`` is then updated in place (the returned
    state shares it) and ``info.direction`` is None. Same maths, rounded differently.
    """
    theta, alive = state.theta, state.alive
    if inplace and project_radius is None and state.xi is None:
        eng = fused_engine(field)
        if eng is not None:
            bad, sq, frac = fused_step(eng, field.rule, theta, alive, state.sq_norm, batch, a,
                                       step=step, clip_per=clip_per,
                                       blowup_radius=blowup_radius, stats=stats)
            blowup = torch.where(bad, step + 1, state.blowup_step)
            if frac is not None:
                frac = torch.where(alive, frac, float("nan"))
            return (ChainState(theta, alive & ~bad, blowup, sq_norm=sq),
                    StepInfo(None, frac, None))
    u, frac = step_direction(field, theta, batch, clip_per, stats)
    new = theta - a * u
    if project_radius is not None:
        norm = new.norm(dim=1, keepdim=True)
        new = torch.where(norm > project_radius, new * (project_radius / norm), new)
    bad = bad_rows(new, blowup_radius)
    blowup = torch.where(bad & alive, step + 1, state.blowup_step)
    nan = float("nan")
    xi, qv, mnorm = state.xi, state.qv, None
    if xi is not None and qv is not None:
        m = u - field(theta)
        xi = torch.where(alive[:, None], xi + a * m, xi)
        qv = torch.where(alive, qv + a * a * (m * m).sum(1), qv)
        mnorm = torch.where(alive, m.norm(dim=1), nan)
    if frac is not None:
        frac = torch.where(alive, frac, nan)
    now = alive & ~bad
    if not bool(now.all()):   # freeze dead chains at their last good iterate (rows, not a pass)
        dead = ~now
        new[dead] = theta[dead]
    return ChainState(new, now, blowup, xi, qv), StepInfo(u, frac, mnorm)


__all__ = ["ChainState", "StepInfo", "sgd_init", "sgd_step", "step_direction", "start_theta",
           "bad_rows"]
