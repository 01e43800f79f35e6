r"""Equilibria of the limiting ODE ``d theta/d tau = -H(theta)`` and the clipping bias at them
(docs/theory.md#equilibria).

An equilibrium is a zero of ``H``. Its stability follows from the eigenvalues of the Jacobian
``DH(theta*)``: the flow is ``-H``, so ``theta*`` is *stable* when every eigenvalue has positive
real part, *unstable* when every one is negative, a *saddle* when they have both signs, and
*degenerate* (non-hyperbolic) when one is zero up to ``tol``. Complex eigenvalues make it a
*focus* (spiral), real ones a *node*.

``H`` has kinks where a clipping factor switches (``||g_G|| = tau_G``); there the Jacobian is
that of the branch active at ``theta*`` and :attr:`Equilibrium.switch_margin` (the smallest
``| ||g_G|| / tau_G - 1 |`` over samples and groups) says how close the switch is.

The paper concludes that the loss gradient vanishes on average at a zero of ``H``. For
per-sample clipping that is false in general: :func:`clipping_bias` measures how far off it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from ._validate import check_finite, check_nonneg_int, check_positive
from .clipping import NoClip
from .meanfield import MeanField
from .problem import group_norms, iter_chunks


@dataclass(frozen=True)
class Equilibrium:
    """One zero of ``H``.

    Attributes
    ----------
    theta : (P,) tensor. ``residual``: ``||H(theta)||``.
    eigenvalues : (P,) complex numpy array, eigenvalues of ``DH(theta)``.
    kind : ``"stable"``, ``"unstable"``, ``"saddle"`` or ``"degenerate"``.
    shape : ``"node"`` or ``"focus"`` (complex eigenvalues).
    switch_margin : distance of the nearest clipping factor to its switch (0 = on a kink).
    count : how many starts converged here.
    """

    theta: torch.Tensor
    residual: float
    eigenvalues: np.ndarray
    kind: str
    shape: str
    switch_margin: float
    count: int = 1

    @property
    def stable(self) -> bool:
        return self.kind == "stable"


def classify(eigenvalues: np.ndarray, tol: float = 1e-8) -> tuple[str, str]:
    """``(kind, shape)`` of an equilibrium from the eigenvalues of ``DH`` (flow ``-H``).

    >>> classify(np.array([1.0, 2.0]))
    ('stable', 'node')
    >>> classify(np.array([1 + 1j, 1 - 1j]))
    ('stable', 'focus')
    """
    ev = np.asarray(eigenvalues)
    re = ev.real
    scale = max(1.0, float(np.abs(ev).max())) if ev.size else 1.0
    if np.any(np.abs(re) <= tol * scale):
        kind = "degenerate"
    elif np.all(re > 0):
        kind = "stable"
    elif np.all(re < 0):
        kind = "unstable"
    else:
        kind = "saddle"
    shape = "focus" if np.any(np.abs(ev.imag) > tol * scale) else "node"
    return kind, shape


def switch_margin(field: MeanField, theta: torch.Tensor) -> float:
    """``min | ||g_G|| / tau_G - 1 |`` over samples ``i`` and groups ``G`` at ``theta`` (P,).

    0 means some clipping factor sits exactly at its switch, where ``H`` has a kink; ``inf`` for
    rules without a switch (``NoClip``) or not a norm scaling (``ValueClip``).
    """
    rule, p = field.rule, field.problem
    if rule.granularity in ("none", "coordinate"):
        return float("inf")
    t, _ = p.check_theta(theta)
    best = float("inf")
    with torch.no_grad():
        tn = group_norms(t[0], p.layout, rule.granularity) if rule.relative else None
        tau = rule.thresholds(tn)
        for s in iter_chunks(p.N, max(1, 2 ** 22 // max(p.P, 1))):
            g = p.per_sample_grads(t[0], *p.data(s))
            ratio = group_norms(g, p.layout, rule.granularity) / tau
            best = min(best, float((ratio - 1).abs().min()))
    return best


def _starts(field: MeanField, starts, n_starts: int, scale: float, seed: int | None
            ) -> torch.Tensor:
    p = field.problem
    if starts is not None:
        t, _ = p.check_theta(starts, "starts")
        return check_finite("starts", t)
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    noise = torch.randn(n_starts, p.P, generator=gen, dtype=torch.float64).to(p.dtype)
    return p.theta0 + scale * noise


def find_equilibria(field: MeanField, starts: torch.Tensor | None = None, *, n_starts: int = 16,
                    scale: float = 1.0, seed: int | None = None, tol: float = 1e-10,
                    merge_tol: float = 1e-6, method: str = "hybr", max_iter: int = 200
                    ) -> list[Equilibrium]:
    """Zeros of ``H`` found by ``scipy.optimize.root`` (with the Jacobian ``DH`` from autodiff)
    from many starts, de-duplicated, each classified by the eigenvalues of ``DH``.

    Main arguments
    --------------
    field : MeanField
    starts : (S, P) tensor, optional
        Starting points. Default: ``n_starts`` Gaussian points ``theta0 + scale * N(0, I)``.

    Other arguments
    ---------------
    n_starts : int >= 1; scale : float >= 0
        Number and spread of the default random starts.
    seed : int >= 0 or None
        Seeds the generator of the default starts (None: seed 0); same seed, same result.
    tol : a start has converged when ``||H|| <= tol * max(1, ||H(start)||)``.
    merge_tol : roots closer than ``merge_tol * max(1, ||theta||)`` are the same equilibrium.
    method : any ``scipy.optimize.root`` method that uses a Jacobian (``"hybr"``, ``"lm"``).

    Returns
    -------
    list of :class:`Equilibrium`, sorted by how many starts found each (most first). Starts that
    do not converge are dropped; a continuum of equilibria shows up as several nearby roots
    classified ``"degenerate"``.

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-3.0, -3.0, 9.0])
    >>> eq = find_equilibria(sc.MeanField(p, sc.NormClip(1.0)), n_starts=4, scale=3.0)
    >>> round(float(eq[0].theta), 6), eq[0].kind
    (-2.5, 'stable')
    """
    if not isinstance(field, MeanField):
        raise TypeError(f"`field` must be a sa_clip.MeanField, got {type(field).__name__}.")
    n_starts = check_nonneg_int("n_starts", n_starts, minimum=1)
    check_positive("tol", tol)
    check_positive("merge_tol", merge_tol)
    max_iter = check_nonneg_int("max_iter", max_iter, minimum=1)
    if seed is not None:
        seed = check_nonneg_int("seed", seed)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
            math.isfinite(scale) and scale >= 0):
        raise (TypeError if not isinstance(scale, (int, float)) or isinstance(scale, bool)
               else ValueError)(f"`scale` must be a finite number >= 0, got {scale!r}.")
    p = field.problem
    x0s = _starts(field, starts, n_starts, scale, seed)

    def fun(x: np.ndarray) -> np.ndarray:
        return field(torch.as_tensor(x, dtype=p.dtype)).double().cpu().numpy()

    def jac(x: np.ndarray) -> np.ndarray:
        return field.jacobian(torch.as_tensor(x, dtype=p.dtype)).double().cpu().numpy()

    found: list[Equilibrium] = []
    for x0 in x0s:                                   # one root-finding run per start
        x0n = x0.double().cpu().numpy()
        h0 = float(np.linalg.norm(fun(x0n)))
        sol = scipy.optimize.root(fun, x0n, jac=jac, method=method,
                                  options={"maxfev": max_iter * (p.P + 1)} if method == "hybr"
                                  else {})
        res = float(np.linalg.norm(fun(sol.x)))
        if not np.all(np.isfinite(sol.x)) or res > tol * max(1.0, h0):
            continue
        theta = torch.as_tensor(sol.x, dtype=p.dtype)
        for k, e in enumerate(found):
            if float((e.theta - theta).norm()) <= merge_tol * max(1.0, float(theta.norm())):
                found[k] = Equilibrium(e.theta, e.residual, e.eigenvalues, e.kind, e.shape,
                                       e.switch_margin, e.count + 1)
                break
        else:
            ev = np.linalg.eigvals(jac(sol.x))
            kind, shape = classify(ev)
            found.append(Equilibrium(theta, res, ev, kind, shape, switch_margin(field, theta)))
    return sorted(found, key=lambda e: -e.count)


@dataclass(frozen=True)
class ClippingBias:
    """How far a clipped equilibrium is from what unclipped gradient descent would reach.

    Attributes
    ----------
    grad_norm : ``||grad L(theta*)||``, the unclipped full-data gradient at the clipped zero
        (0 if the paper's conclusion held).
    theta_unclipped : the unclipped minimiser found from ``theta*`` (local, L-BFGS).
    distance : ``||theta* - theta_unclipped||``. loss_gap : ``L(theta*) - L(theta_unclipped)``.
    """

    theta_star: torch.Tensor
    grad_norm: float
    theta_unclipped: torch.Tensor
    distance: float
    loss_gap: float


def clipping_bias(field: MeanField, theta_star: torch.Tensor, *,
                  theta_unclipped: torch.Tensor | None = None, gtol: float = 1e-12
                  ) -> ClippingBias:
    """Measure the clipping bias at a zero ``theta_star`` of ``H``.

    The unclipped minimiser is searched from ``theta_star`` (L-BFGS-B on the full-data loss with
    its exact gradient) unless given.

    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-3.0, -3.0, 9.0])
    >>> b = clipping_bias(sc.MeanField(p, sc.NormClip(1.0)), torch.tensor([-2.5]))
    >>> round(b.grad_norm, 6), round(float(b.theta_unclipped), 6)
    (3.5, 1.0)
    """
    p = field.problem
    t, _ = p.check_theta(theta_star, "theta_star")
    t = t[0]
    if theta_unclipped is None:
        def f(x: np.ndarray) -> tuple[float, np.ndarray]:
            th = torch.as_tensor(x, dtype=p.dtype)
            return float(p.loss(th)), p.gradient(th).double().cpu().numpy()

        sol = scipy.optimize.minimize(f, t.double().cpu().numpy(), jac=True, method="L-BFGS-B",
                                      options={"gtol": gtol, "ftol": 1e-15, "maxiter": 10_000})
        theta_unclipped = torch.as_tensor(sol.x, dtype=p.dtype)
    else:
        theta_unclipped, _ = p.check_theta(theta_unclipped, "theta_unclipped")
        theta_unclipped = theta_unclipped[0]
    gnorm = float(MeanField(p, NoClip())(t).norm())
    return ClippingBias(t, gnorm, theta_unclipped, float((t - theta_unclipped).norm()),
                        float(p.loss(t) - p.loss(theta_unclipped)))
