r"""The linear-noise approximation: how far clipped-SGD chains spread around the ODE.

To first order in the step size the iterates of clipped SGD are the ODE path plus a Gaussian
fluctuation, ``theta(n) ~ theta(tau_n) + x_n``, whose covariance ``V`` is predicted from ``DH``
and the covariance of one step's update noise along the path (maths: ``docs/linear_noise.md``).

* **continuous form** (``form="continuous"``), on the ODE time scale:

  .. math:: \frac{dV}{d\tau} = -J V - V J^T + a(\tau)\, S(\theta(\tau)), \qquad V(0) = 0,

  with ``J = DH(theta(tau))``, ``S`` the covariance of one step's update direction and
  ``a(tau)`` the step size in force at ODE time ``tau``. Its cost does not grow with the
  number of SGD steps. Integrated on the ODE's grid by default (``integrator="grid"``:
  ``theta`` by :func:`~sa_clip.solve_ode` on a grid, ``J`` and ``S`` batched on it, RK4 for
  ``V``) or by torchdiffeq on the pair (``integrator="joint"``). Measured (loaded machine,
  ``benchmarks/bench_linear_noise.py --quick``, tanh toy): the grid within 2e-3 of its own
  eighth-step refinement at about the cost of the ODE solve alone; the joint solve 6e-4 at
  about 30 times that (the kinks of clipped ``H`` make it reject steps, and ``J`` is computed
  one point at a time).
* **discrete form** (``form="discrete"``, default), one SGD step at a time:

  .. math:: V_{n+1} = (I - a_n J_n) V_n (I - a_n J_n)^T + a_n^2 S_n,

  the exact covariance of the linearised recursion ``x_{n+1} = (I - a_n J_n) x_n + a_n M_{n+1}``
  with ``J_n``, ``S_n`` taken on the ODE path at ``tau_n``. It keeps the ``O(a J)`` terms the
  continuous form drops (``a^2 J V J^T`` per step), so it is the one to compare with chains run
  at moderate steps; its cost grows with the number of steps.

Both agree to first order in ``a ||J||``; with constant steps their stationary covariances differ
by a relative ``O(a ||J||)``. Neither holds where ``H`` is not differentiable along the path (a
clipping switch crossed by the chains' spread) or where the spread is large enough that ``H`` is
not linear over it (large steps).

* **Gaussian moment closure** (``form="gaussian"``, per step, and ``"gaussian-continuous"``):
  mean ``m`` and covariance ``V`` evolve together with ``H``, ``Cov(H, theta)`` and ``S``
  averaged over ``N(m, V)`` by quadrature (:mod:`sa_clip.gaussian_closure`). It sees the
  kinks a spread straddles, and the mean shift curvature causes; where ``H`` is linear over
  the spread it is the first-order result. Cost: ``Q`` evaluations of ``H`` and ``S`` per step
  or grid point (``Q`` quadrature nodes), no ``DH``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import torch

# The noise model, the integrators and the checks live in sa_clip/_linear_noise_{model,forms,
# checks}.py; every name is importable from here as before the split (redundant aliases:
# re-exported). `method` is checked against sa_clip._torchdiffeq's solver names.
from . import gaussian_closure as _gc
from ._linear_noise_checks import FORMS, _check_arguments, _grid_cost, _step_cost
from ._linear_noise_checks import INTEGRATORS as INTEGRATORS
from ._linear_noise_forms import (
    _continuous,
    _continuous_grid,
    _default_grid_step,
    _discrete,
    _gaussian,
    _step_grid,
)
from ._linear_noise_forms import _fine_grid as _fine_grid
from ._linear_noise_forms import _first_bad as _first_bad
from ._linear_noise_forms import _rate_at as _rate_at
from ._linear_noise_model import _Noise
from ._linear_noise_model import _short as _short
from ._torchdiffeq import solver_names as solver_names
from ._validate import as_tensor
from .meanfield import MeanField
from .schedules import Schedule


@dataclass
class LinearNoiseResult:
    """Result of :func:`linear_noise`.

    Attributes
    ----------
    tau : tensor ``(T,)``
        The requested ODE times.
    mean : tensor ``(T, P)``
        The ODE path ``theta(tau)`` (for ``clip_per="batch"`` the path of ``-H_M``); for the
        Gaussian closure its mean ``m``.
    cov : tensor ``(T, P, P)``, or ``(T, k, k)`` with a ``basis``
        Predicted covariance of the chains around ``mean`` (in the basis coordinates
        ``U^T V U`` when ``basis`` was given). NaN from the first time not reached on failure.
    basis : tensor ``(P, k)`` or None
        The orthonormal basis ``U`` of the projected variant.
    form : str
        ``"discrete"``, ``"continuous"``, ``"gaussian"`` or ``"gaussian-continuous"``.
    status : int
        0 on success, -1 on failure (the solve failed or the covariance became non-finite);
        what was computed before is kept.
    message : str
    nfev : int
        Points where ``H``, ``DH`` and ``S`` were evaluated (discrete: one per SGD step;
        continuous: grid nodes and midpoints, or right-hand-side evaluations of the joint
        solve, at most ``max_nfev``; Gaussian closure: quadrature nodes, ``Q`` per step or RK4
        stage). The ODE solve's own evaluations of ``H`` are not counted here.
    steps : int
        SGD steps of the schedule up to ``tau[-1]``.
    noise : str
        How ``S`` was computed: ``"exact"`` (per-sample clipping, or per-batch clipping by
        enumerating every batch) or ``"monte carlo (B batches)"``.
    seconds : float
        Wall-clock time of the call.
    config : dict
        The settings (schedule, batch, solver; ``"quadrature"`` and ``"grid_step"`` where they
        apply).
    path : tensor ``(T, P)`` or None
        Gaussian closure only: the noise-free path, the ODE path (``"gaussian-continuous"``)
        or the noise-free steps ``theta - a_n H(theta)`` (``"gaussian"``), so that
        :attr:`shift` is what the noise and the curvature of ``H`` add.
    """

    tau: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    basis: torch.Tensor | None
    form: str
    status: int
    message: str
    nfev: int
    steps: int
    noise: str
    seconds: float = 0.0
    config: dict[str, Any] = dc_field(default_factory=dict)
    path: torch.Tensor | None = None

    @property
    def success(self) -> bool:
        return self.status == 0

    @property
    def shift(self) -> torch.Tensor:
        """``mean - path`` ``(T, P)``: how far the Gaussian closure's mean moves off the
        noise-free path where ``H`` curves over the spread (0 where ``H`` is linear); zeros for
        the first-order forms, whose mean is the ODE path."""
        return torch.zeros_like(self.mean) if self.path is None else self.mean - self.path

    def variance(self, direction: Any) -> torch.Tensor:
        """Predicted variance ``u^T V u`` (shape ``(T,)``) along ``direction`` ``u`` (``(P,)``,
        or ``(k,)`` basis coordinates with a ``basis``), e.g. a PCA axis or a coordinate.

        >>> import torch
        >>> r = LinearNoiseResult(torch.zeros(1), torch.zeros(1, 2), torch.eye(2)[None], None,
        ...                       "discrete", 0, "", 0, 0, "exact")
        >>> r.variance(torch.tensor([3.0, 4.0]) / 5)
        tensor([1.])
        """
        u = as_tensor("direction", direction, dtype=self.cov.dtype)
        if u.shape != self.cov.shape[-1:]:
            raise ValueError(f"`direction` must have shape {tuple(self.cov.shape[-1:])}, got "
                             f"{tuple(u.shape)}.")
        return torch.einsum("i,tij,j->t", u, self.cov, u)

# ---------------------------------------------------------------------------- the entry point
def linear_noise(field: MeanField, schedule: Schedule | str | Callable, theta0: Any, tau: Any,
                 *, batch_size: int = 1, clip_per: str = "sample", form: str = "discrete",
                 basis: Any = None, max_full: int = 4096, noise_samples: int = 4096,
                 seed: int | None = 0, method: str = "dopri5", rtol: float = 1e-7,
                 atol: float = 1e-9, max_nfev: int | None = 100_000,
                 max_steps: int = 10_000_000, chunk: int = 256, max_elements: int = 2 ** 22,
                 invariance_tol: float = 1e-8, integrator: str = "grid",
                 grid_step: float | None = None, quadrature: str = "auto",
                 nodes: int | None = None, max_points: int = 1_000_000) -> LinearNoiseResult:
    r"""Predict the mean path and the covariance of clipped-SGD chains: the linear-noise
    approximation (maths and its limits: ``docs/linear_noise.md``).

    To first order in the step size, ``theta(n) = theta(tau_n) + x_n`` with ``x_n`` Gaussian of
    mean 0 and covariance ``V``:

    * ``form="discrete"`` (default): ``V_{n+1} = (I - a_n J_n) V_n (I - a_n J_n)^T + a_n^2 S_n``,
      the exact covariance of the linearised recursion, one step at a time, ``J_n = DH`` and
      ``S_n`` on the ODE path at ``tau_n``. Between steps the covariance of the linearly
      interpolated path ``theta_bar`` is returned (exact for the linearised recursion). Use it
      to compare with chains: it keeps the ``O(a ||J||)`` terms. Cost: one ``DH`` and one ``S``
      per SGD step (batched over ``chunk`` steps), plus one ODE solve.
    * ``form="continuous"``: ``dV/dtau = -J V - V J^T + a(tau) S``, ``V(0) = 0``, integrated
      together with ``d theta/dtau = -H`` by torchdiffeq (``method``, ``rtol``, ``atol``; the
      error is controlled on ``theta`` and ``V`` separately). ``a(tau)`` is the step in force
      at ``tau``, made continuous (linear through the step midpoints). The limit of small
      steps; its cost does not grow with the number of steps, so use it for long runs with
      small steps (``a ||J|| << 1``, where the two forms agree). ``integrator="grid"``
      (default) solves ``theta`` with :func:`~sa_clip.solve_ode` on a grid of step
      ``grid_step`` (default ``min(0.05, 0.5 / ||DH(theta0)||)``) between the outputs and
      integrates ``V`` by RK4 on it, ``J`` and ``S`` evaluated in batches;
      ``integrator="joint"`` solves the pair with torchdiffeq, error-controlled (much slower:
      see ``docs/linear_noise.md``).

    ``S`` is the covariance of one step's update direction: ``S_1 / M`` for per-sample
    clipping with ``M = batch_size`` samples drawn with replacement (``S_1`` exact over the
    data, as :func:`~sa_clip.noise_covariance`); for per-batch clipping (``clip_per="batch"``,
    ``M > 1``) the mean field is ``H_M`` and ``S`` the covariance of the clipped batch-mean
    gradient, both over a fixed set of batches (every ordered batch when ``N^M <=
    noise_samples``: exact; else ``noise_samples`` random ones, the same at every ``theta``, so
    ``H_M`` stays a smooth function; ``DH_M`` by central differences).

    Main arguments
    --------------
    field : MeanField
        ``H`` (problem and clipping rule).
    schedule : Schedule, string (``"power:0.5,0.7"``) or callable ``n -> a(n)``
    theta0 : ``(P,)``
        The start at ``tau = 0`` (step 0), the same for every chain.
    tau : 1-D, strictly increasing, ``tau[0] = 0``
        Output ODE times, e.g. a run's ``Trajectory.tau``.
    batch_size : int >= 1
    clip_per : ``"sample"`` | ``"batch"``
    form : ``"discrete"`` | ``"continuous"`` | ``"gaussian"`` | ``"gaussian-continuous"``

    * ``form="gaussian"``: the Gaussian moment closure, one SGD step at a time: with
      ``theta ~ N(m, V)``, ``m' = m - a E[H]`` and ``V' = V - a (C + C^T) + a^2 (Cov(H) +
      E[S])``, ``C = Cov(H(theta), theta) = E[DH] V`` (Stein's lemma, computed from ``H`` alone),
      expectations by quadrature (``quadrature``, ``nodes``). The exact first two moments of
      one step from a Gaussian; the discrete form where ``H`` is linear over the spread.
      ``"gaussian-continuous"``: ``dm/dtau = -E[H]``, ``dV/dtau = -(C + C^T) + a(tau) E[S]``
      by RK4 on the grid of ``grid_step``. Use them where the spread straddles clipping
      switches (outliers, heavy tails: the limit sits beside them) or ``H`` curves over it.
      ``result.shift`` is the mean's move off the noise-free path. Cost: ``Q`` evaluations of
      ``H`` and ``S`` (no ``DH``) per step or RK4 stage, one batched call each
      (``docs/linear_noise.md``).

    Other arguments
    ---------------
    basis : ``(P, k)`` with orthonormal columns, optional
        The projected variant: ``W = U^T V U`` (``k x k``) without ever forming a ``P x P``
        matrix. It obeys a closed equation only when ``U`` spans a subspace that ``DH^T`` maps
        into itself along the path (``U^T DH = C U^T``; then ``dW/dtau = -C W - W C^T + a U^T S
        U``); this is checked at every point (``invariance_tol``) and a ``ValueError`` says so
        otherwise. Coordinates of one block of a block-diagonal ``DH`` qualify.
    max_full : int
        Largest ``P`` for the full ``P x P`` covariance; beyond it pass ``basis``.
    noise_samples : int >= 2
        Batches for per-batch clipping.
    seed : int or None
        Seeds the Monte-Carlo batches of per-batch clipping (None: a fresh random seed).
    method, rtol, atol, max_nfev
        The torchdiffeq solver (every form solves the ODE with them), its tolerances, and the
        most right-hand-side evaluations of that solve before giving up (``status = -1``): for
        ``integrator="joint"`` the evaluations of ``(H, DH, S)`` of the joint solve, first
        attempt and recovery of its outputs together (``result.nfev <= max_nfev``); otherwise
        those of :func:`~sa_clip.solve_ode` (it keeps the same bound). The evaluations at path
        points or quadrature nodes that follow are bounded by ``max_points``.
    max_steps : int
        Most SGD steps of the schedule that ``tau[-1]`` may span.
    chunk : int
        Path points whose ``DH`` and ``S`` are computed in one batched call (discrete form).
    max_elements : int
        Memory budget, in numbers, of one batched per-sample computation.
    invariance_tol : float
        Relative tolerance of the invariance check of ``basis``.
    integrator : ``"grid"`` | ``"joint"``
        How the continuous form is integrated (above).
    grid_step : float, optional
        ODE-time step of the ``"grid"`` integrator (and of ``"gaussian-continuous"``).
    quadrature : ``"auto"`` | ``"gauss-hermite"`` | ``"sigma"`` | ``"samples"``
        Nodes of the Gaussian closure (:func:`~sa_clip.gaussian_closure.quadrature_nodes`):
        ``"auto"`` takes Gauss-Hermite (``k`` per dimension, the largest ``k <= 12`` with
        ``k^P <= 64`` and at least 3: 8 x 8 for two parameters, ``3^5`` for five) up to
        ``P = 5``, and else 256 fixed antithetic samples.
    nodes : int, optional
        Gauss-Hermite points per dimension, or the number of samples.
    max_points : int
        The most evaluation points the call may need: SGD steps (discrete forms) or grid nodes
        and midpoints (grid integrator), times the quadrature nodes for the closure. Checked
        before any compute, so that a far ``tau`` or a tiny ``grid_step`` is refused with the
        numbers instead of running for hours or exhausting memory.

    Returns
    -------
    LinearNoiseResult
        ``tau (T,)``, ``mean (T, P)``, ``cov (T, P, P)`` (or ``(T, k, k)``), ``status``,
        ``message``, ``form``, ``nfev``, ``steps``, ``noise``, ``seconds``. A failed solve or a
        non-finite covariance is reported (``status = -1``), not raised; values from then on
        are NaN.

    Raises
    ------
    TypeError, ValueError
        For a ``field`` that is not a MeanField; a bad schedule; ``theta0`` not ``(P,)`` or
        not finite; ``tau`` not 1-D, finite, strictly increasing from 0, or beyond
        ``max_steps`` steps; ``batch_size < 1``; an unknown ``clip_per``, ``form``,
        ``integrator``, ``method`` or ``quadrature``; non-positive tolerances or ``grid_step``;
        more than ``max_points`` evaluation points;
        ``P > max_full`` without ``basis``; a ``basis`` of the wrong shape, without
        orthonormal columns, not invariant, or with ``clip_per="batch"``.

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> p = sc.problems.location_problem([-1.0, 1.0], theta0=2.0)     # H = theta, S = 1
    >>> r = sc.linear_noise(sc.MeanField(p, sc.NoClip()), "constant:0.1", p.theta0,
    ...                     torch.tensor([0.0, 20.0]))
    >>> round(float(r.cov[-1, 0, 0]), 4)          # a^2 S / (1 - (1 - a)^2) = 0.01 / 0.19
    0.0526
    """
    t0 = time.perf_counter()
    (sched, th0, times, m, grid_step, nodes, max_points, rtol, atol, max_nfev, max_full,
     noise_samples, max_steps, chunk, max_elements, invariance_tol, seed, U) = _check_arguments(
        field, schedule, theta0, tau, batch_size=batch_size, clip_per=clip_per, form=form,
        basis=basis, max_full=max_full, noise_samples=noise_samples, seed=seed, method=method,
        rtol=rtol, atol=atol, max_nfev=max_nfev, max_steps=max_steps, chunk=chunk,
        max_elements=max_elements, invariance_tol=invariance_tol, integrator=integrator,
        grid_step=grid_step, quadrature=quadrature, nodes=nodes, max_points=max_points)
    problem = field.problem
    grid, rates = _step_grid(sched, float(times[-1]), max_steps)
    z = w = None
    what = ""
    if form.startswith("gaussian"):
        z, w, what = _gc.quadrature_nodes(problem.P, quadrature, nodes, seed, problem.dtype,
                                          problem.device)
    q_nodes = 1 if z is None else z.shape[0]
    continuous = form in ("continuous", "gaussian-continuous")
    if continuous and integrator == "grid" and grid_step is not None:
        _grid_cost(times, grid_step, q_nodes, max_points)      # before DH(theta0) is computed
    noise = _Noise(field, m, clip_per, U, noise_samples, seed, max_elements, invariance_tol)
    h_fn = noise.batch_field if noise.batch else field
    if continuous and integrator == "grid" and grid_step is None:
        grid_step = _default_grid_step(noise, th0)
    if continuous and integrator == "grid":
        _grid_cost(times, grid_step, q_nodes, max_points)
    elif not continuous:
        _step_cost(times, len(rates), sched, form, q_nodes, max_points)
    config = {"batch_size": m, "clip_per": clip_per, "form": form, "schedule": sched.to_dict(),
              "method": method, "rtol": rtol, "atol": atol,
              "integrator": integrator if continuous else None}
    path = None
    if form == "discrete":
        mean, cov, nfev, status, message = _discrete(noise, h_fn, th0, times, grid, rates,
                                                     method, rtol, atol, max_nfev, chunk)
    elif form.startswith("gaussian"):
        config["quadrature"] = what
        if continuous:
            config["grid_step"] = grid_step
        mean, cov, path, nfev, status, message = _gaussian(
            noise, h_fn, th0, times, grid, rates, z, w, continuous, grid_step, method, rtol,
            atol, max_nfev, max_elements)
    elif integrator == "grid":
        mean, cov, nfev, status, message, grid_step = _continuous_grid(
            noise, h_fn, th0, times, grid, rates, method, rtol, atol, max_nfev, chunk, grid_step)
        config["grid_step"] = grid_step
    else:
        mean, cov, nfev, status, message = _continuous(noise, th0, times, grid, rates, method,
                                                       rtol, atol, max_nfev)
    return LinearNoiseResult(tau=times, mean=mean, cov=cov, basis=U, form=form, status=status,
                             message=message, nfev=nfev, steps=len(rates), noise=noise.noise,
                             seconds=time.perf_counter() - t0, config=config, path=path)


__all__ = ["linear_noise", "LinearNoiseResult", "FORMS"]
