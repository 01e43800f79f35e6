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

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import torch
from torch.func import vjp, vmap
from torchdiffeq import odeint

from . import gaussian_closure as _gc
from ._torchdiffeq import solver_names
from ._validate import as_tensor, check_choice, check_nonneg_int, check_positive
from .batchfield import FixedBatchField
from .meanfield import CLIP_PER, MeanField
from .ode import check_times, solve_ode
from .problem import iter_chunks
from .schedules import Schedule, make_schedule

FORMS = ("discrete", "continuous", "gaussian", "gaussian-continuous")
INTEGRATORS = ("grid", "joint")


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


# ---------------------------------------------------------------------------- the noise model
class _Noise:
    """``H``, ``DH`` and the one-step noise covariance ``S`` at many points, for one problem,
    rule, batch size and clipping granularity (projected on ``U`` when given)."""

    def __init__(self, field: MeanField, batch_size: int, clip_per: str, basis: torch.Tensor |
                 None, noise_samples: int, seed: int | None, max_elements: int,
                 invariance_tol: float):
        self.field, self.problem, self.rule = field, field.problem, field.rule
        self.m, self.clip_per, self.U = batch_size, clip_per, basis
        self.max_elements, self.invariance_tol = max_elements, invariance_tol
        p = self.problem
        self.batch = clip_per == "batch" and batch_size > 1
        self.noise = "exact"
        if self.batch:
            if p.N ** batch_size <= noise_samples:     # every ordered batch, each once
                idx = torch.cartesian_prod(*[torch.arange(p.N)] * batch_size).reshape(
                    -1, batch_size)
            else:
                gen = torch.Generator()
                gen.manual_seed(int(seed)) if seed is not None else gen.seed()
                idx = torch.randint(p.N, (noise_samples, batch_size), generator=gen)
                self.noise = f"monte carlo ({noise_samples} batches)"
            # H_M, S_M over fixed batches (common random numbers): a smooth, deterministic H_M
            self.fixed = FixedBatchField(field, batch_size, index=idx,
                                         max_elements=max_elements)

    def batch_field(self, th: torch.Tensor) -> torch.Tensor:
        return self.fixed(th)

    # -- the three quantities at K points ----------------------------------------------------
    def moments(self, th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H (K, P), S (K, P, P))``, ``S`` projected to ``(K, k, k)`` with a basis."""
        if self.batch:
            u = self.fixed.directions(th)                                # (K, B, P)
            h = u.mean(1)
            d = u - h[:, None]
            if self.U is not None:
                d = d @ self.U
            denom = u.shape[1] if self.noise == "exact" else u.shape[1] - 1
            return h, d.transpose(1, 2) @ d / denom
        if self.U is None:       # the field's own moments: its engine, chunks and shards
            h, second = self.field.update_moments(th)
            return h, (second - h[:, :, None] * h[:, None, :]) / self.m
        p, rule = self.problem, self.rule
        k = th.shape[0]
        q = self.U.shape[1]
        first = th.new_zeros(k, p.P)
        second = th.new_zeros(k, q, q)

        def clipped(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return rule.clip(p.per_sample_grads(t, x, y), t, p.layout)

        chunk = max(1, self.max_elements // max(1, k * p.P))
        with torch.no_grad():
            for s in iter_chunks(p.N, chunk):
                x, y = p.data(s)
                u = vmap(clipped, in_dims=(0, None, None))(th, x, y)       # (K, B, P)
                first += u.sum(1)
                u = u @ self.U                                               # (K, B, k)
                second += u.transpose(1, 2) @ u
        h = first / p.N
        hq = h @ self.U
        return h, (second / p.N - hq[:, :, None] * hq[:, None, :]) / self.m

    def jacobians(self, th: torch.Tensor) -> torch.Tensor:
        """``DH`` at ``K`` points, ``(K, P, P)``; with a basis the ``(K, k, k)`` matrix ``C``
        with ``U^T DH = C U^T`` (after checking that this closes)."""
        p = self.problem
        if self.U is not None:
            return torch.stack([self._projected_jacobian(t) for t in th])
        if self.batch:      # central differences of the deterministic fixed-batch H_M
            return self.fixed.jacobian(th)
        per = max(1, p.N * p.P * p.P)
        rows = max(1, self.max_elements * 4 // per)
        return torch.cat([self.field.jacobian(th[s]) for s in iter_chunks(th.shape[0], rows)])

    def _projected_jacobian(self, th: torch.Tensor) -> torch.Tensor:
        p, rule, U = self.problem, self.rule, self.U

        def h_of(t: torch.Tensor) -> torch.Tensor:
            total = torch.zeros_like(t)
            for s in iter_chunks(p.N, max(1, self.max_elements // max(1, p.P))):
                x, y = p.data(s)
                total = total + rule.clip(p.per_sample_grads(t, x, y), t, p.layout).sum(0)
            return total / p.N

        _, pull = vjp(h_of, th)
        g = torch.stack([pull(U[:, j])[0] for j in range(U.shape[1])])      # (k, P) = U^T J
        c = g @ U                                                            # (k, k)
        resid = float(torch.linalg.norm(g - c @ U.T))
        scale = float(torch.linalg.norm(g))
        if resid > self.invariance_tol * max(scale, 1e-300):
            raise ValueError(
                f"`basis` does not span a subspace invariant under DH^T at theta = "
                f"{_short(th)} (||U^T DH - C U^T|| = {resid:.3g} vs ||U^T DH|| = {scale:.3g}, "
                f"tolerance `invariance_tol` = {self.invariance_tol:g}): the projected "
                "covariance U^T V U then depends on directions outside the basis and obeys no "
                "closed equation. Pass a basis that DH^T maps into itself (e.g. the coordinates "
                "of one block of a block-diagonal DH, or left eigenvectors of DH at an "
                "equilibrium), or drop `basis` (full covariance, P <= `max_full`).")
        return c


def _short(t: torch.Tensor) -> str:
    v = t.reshape(-1)[:4].tolist()
    return "[" + ", ".join(f"{x:.4g}" for x in v) + (", ...]" if t.numel() > 4 else "]")


# ---------------------------------------------------------------------------- the step grid
def _step_grid(schedule: Schedule, tau_end: float, max_steps: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step times ``tau_0..tau_n`` and rates ``a_0..a_{n-1}`` with ``tau_n >= tau_end``."""
    n = 64
    while True:
        n = min(n, max_steps)
        grid = schedule.tau(n)
        if float(grid[-1]) >= tau_end * (1 - 1e-12):
            last = int(torch.searchsorted(grid, torch.tensor([tau_end * (1 - 1e-12)],
                                                             dtype=grid.dtype)))
            return grid[:last + 1], schedule.rates(last)
        if n == max_steps:
            raise ValueError(f"`tau` reaches {tau_end:.6g}, beyond the {max_steps} steps of "
                             f"{schedule!r} (which reach tau = {float(grid[-1]):.6g}); raise "
                             "`max_steps` or ask for earlier times.")
        n *= 4


def _rate_at(grid: torch.Tensor, rates: torch.Tensor) -> Callable[[float], float]:
    """``a(tau)``: piecewise linear through ``(tau_n + a_n / 2, a_n)``, flat beyond the ends.

    Continuous (so adaptive solvers see no jumps) and integrating to ``a_n^2`` over step ``n``
    up to the second difference of ``a``: the noise a step injects."""
    mid = (grid[:-1] + rates / 2).tolist()
    vals = rates.tolist()

    def rate(t: float) -> float:
        i = bisect.bisect_right(mid, t)
        if i == 0:
            return vals[0]
        if i >= len(mid):
            return vals[-1]
        w = (t - mid[i - 1]) / (mid[i] - mid[i - 1])
        return vals[i - 1] + w * (vals[i] - vals[i - 1])

    return rate


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
    if not isinstance(field, MeanField):
        raise TypeError(f"`field` must be a sa_clip.MeanField, got {type(field).__name__}.")
    problem = field.problem
    sched = make_schedule(schedule)
    th0, batched = problem.check_theta(theta0, "theta0")
    if batched:
        raise ValueError(f"`theta0` must have shape (P,) = ({problem.P},): one start for all "
                         f"chains, got {tuple(th0.shape)}.")
    th0 = th0[0]
    if not bool(torch.isfinite(th0).all()):
        raise ValueError("`theta0` must be finite.")
    times = check_times(tau, dtype=torch.float64, name="tau")
    if float(times[0]) != 0.0:
        raise ValueError(f"`tau[0]` must be 0, the ODE time of `theta0` (step 0), got "
                         f"{float(times[0])!r}.")
    if times.numel() > 1 and not bool((times[1:] > times[:-1]).all()):
        raise ValueError("`tau` must be strictly increasing.")
    m = check_nonneg_int("batch_size", batch_size, minimum=1)
    check_choice("clip_per", clip_per, CLIP_PER)
    check_choice("form", form, FORMS)
    check_choice("integrator", integrator, INTEGRATORS)
    if grid_step is not None:
        grid_step = check_positive("grid_step", grid_step)
    check_choice("quadrature", quadrature, _gc.QUADRATURES)
    if form == "gaussian-continuous" and integrator != "grid":
        raise ValueError(f"form='gaussian-continuous' is integrated on the grid (RK4 with "
                         f"`grid_step`), got `integrator` = {integrator!r}: use "
                         "integrator='grid'.")
    if nodes is not None:
        nodes = check_nonneg_int("nodes", nodes, minimum=1)
    max_points = check_nonneg_int("max_points", max_points, minimum=1)
    if method not in solver_names():
        raise ValueError(f"`method` must be one of {solver_names()}, got {method!r}.")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    if max_nfev is not None:
        max_nfev = check_nonneg_int("max_nfev", max_nfev, minimum=1)
    max_full = check_nonneg_int("max_full", max_full, minimum=1)
    noise_samples = check_nonneg_int("noise_samples", noise_samples, minimum=2)
    max_steps = check_nonneg_int("max_steps", max_steps, minimum=1)
    chunk = check_nonneg_int("chunk", chunk, minimum=1)
    max_elements = check_nonneg_int("max_elements", max_elements, minimum=1)
    invariance_tol = check_positive("invariance_tol", invariance_tol)
    if seed is not None:
        seed = check_nonneg_int("seed", seed)
    U = None
    if basis is not None:
        U = as_tensor("basis", basis, dtype=problem.dtype, device=problem.device)
        if U.dim() == 1:
            U = U[:, None]
        if U.dim() != 2 or U.shape[0] != problem.P or not 1 <= U.shape[1] <= problem.P:
            raise ValueError(f"`basis` must have shape (P, k) = ({problem.P}, k) with "
                             f"1 <= k <= {problem.P}, got {tuple(U.shape)}.")
        gram = U.T @ U
        err = float((gram - torch.eye(U.shape[1], dtype=U.dtype, device=U.device)).abs().max())
        if not math.isfinite(err) or err > 1e-8:
            raise ValueError(f"`basis` must have orthonormal columns (U^T U = I; off by {err:.3g})"
                             ": orthonormalise it, e.g. with torch.linalg.qr(basis).Q.")
        if form.startswith("gaussian"):
            raise ValueError(f"`basis` (the projected variant) is not available with form="
                             f"{form!r}: the closure needs H and S at points spread over all P "
                             "directions; use quadrature='samples' (cost: `nodes` evaluations "
                             "of H and S per step) or drop `basis`.")
        if clip_per == "batch" and m > 1:
            raise ValueError("`basis` (the projected variant) is available for "
                             "clip_per='sample' only; per-batch clipping needs the full DH_M by "
                             "differences: drop `basis`.")
    elif problem.P > max_full:
        raise ValueError(
            f"P = {problem.P} parameters exceeds `max_full` = {max_full}: the full covariance "
            f"is a P x P matrix per time (and DH costs P evaluations of H). Pass `basis` (P, k) "
            "spanning a subspace that DH^T maps into itself (e.g. one block of a "
            "block-diagonal DH) to get U^T V U without P x P matrices, or raise `max_full`.")

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
    elif not continuous and len(rates) * q_nodes > max_points:
        raise ValueError(
            f"`tau` up to {float(times[-1]):.6g} spans {len(rates)} SGD steps of {sched!r}; "
            f"form={form!r} evaluates {'DH and S' if z is None else 'H and S'} at "
            f"{'every step' if z is None else f'{q_nodes} nodes per step'}: "
            f"{len(rates) * q_nodes:.3g} points, more than `max_points` = {max_points}. Use "
            "form='continuous' (or 'gaussian-continuous'), whose cost depends on the ODE time "
            "covered, not on the steps; ask for earlier times; or raise `max_points`.")
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


def _default_grid_step(noise: _Noise, th0: torch.Tensor) -> float:
    """``min(0.05, 0.5 / ||DH(theta0)||)``."""
    J0 = noise.jacobians(th0[None])[0]
    norm = float(torch.linalg.matrix_norm(J0, 2)) if bool(torch.isfinite(J0).all()) else 0.0
    return min(0.05, 0.5 / max(norm, 1e-12))


def _grid_cost(times: torch.Tensor, grid_step: float, q_nodes: int, max_points: int) -> None:
    """Refuse, before any work, a grid with more than ``max_points`` evaluation points."""
    span = float(times[-1] - times[0])
    pieces = sum(max(1.0, math.ceil(float(times[i + 1] - times[i]) / grid_step - 1e-9))
                 if math.isfinite(float(times[i + 1] - times[i]) / grid_step) else math.inf
                 for i in range(len(times) - 1))
    points = (2 * pieces + 1) * q_nodes
    if not points <= max_points:
        raise ValueError(
            f"`grid_step` = {grid_step:.6g} over tau in [0, {span:.6g}] gives {points:.3g} "
            f"evaluation points ({2 * pieces + 1:.3g} grid nodes and midpoints"
            f"{f' x {q_nodes} quadrature nodes' if q_nodes > 1 else ''}), more than "
            f"`max_points` = {max_points}: pass a larger `grid_step` (default "
            "min(0.05, 0.5 / ||DH(theta0)||)), ask for earlier times, or raise `max_points`.")


def _first_bad(cov: torch.Tensor, times: torch.Tensor) -> tuple[int, str]:
    bad = ~torch.isfinite(cov.reshape(len(cov), -1)).all(1)
    if not bool(bad.any()):
        return 0, "success"
    i = int(torch.nonzero(bad)[0])
    cov[i:] = float("nan")
    return -1, (f"the covariance became non-finite at tau = {float(times[i]):.6g} (output {i} "
                f"of {len(times)}); the values before are kept")


def _discrete(noise: _Noise, h_fn, th0, times, grid, rates, method, rtol, atol, max_nfev,
              chunk):
    n_steps = len(rates)
    both = torch.unique(torch.cat([grid, times]))            # sorted
    sol = solve_ode(h_fn, th0, both, method=method, rtol=rtol, atol=atol, max_nfev=max_nfev)
    path = sol.theta                                         # (len(both), P)
    at_grid = path[torch.searchsorted(both, grid)]
    mean = path[torch.searchsorted(both, times)]
    # where each output lies: step n and fraction s of step n (s = 0 on the grid)
    n_out = (torch.searchsorted(grid, times, right=True) - 1).clamp(max=n_steps)
    s_out = torch.zeros_like(times)
    inside = n_out < n_steps
    s_out[inside] = (times[inside] - grid[n_out[inside]]) / rates[n_out[inside]]
    s_out[s_out < 1e-9] = 0.0
    q = noise.U.shape[1] if noise.U is not None else th0.numel()
    eye = torch.eye(q, dtype=th0.dtype, device=th0.device)
    cov = torch.full((len(times), q, q), float("nan"), dtype=th0.dtype, device=th0.device)
    want: dict[int, list[int]] = {}
    for j, n in enumerate(n_out.tolist()):
        want.setdefault(n, []).append(j)
    V = torch.zeros(q, q, dtype=th0.dtype, device=th0.device)
    status, message = sol.status, sol.message
    for start in range(0, n_steps, chunk):
        stop = min(start + chunk, n_steps)
        th = at_grid[start:stop]
        ok = torch.isfinite(th).all(1)
        if not bool(ok.all()):          # the solve failed: go on up to the path's last point
            stop = start + int(torch.nonzero(~ok)[0])
            th = th[:stop - start]
            if stop == start:
                break
        J = noise.jacobians(th)
        _, S = noise.moments(th)
        a = rates[start:stop].to(th0)
        A = eye - a[:, None, None] * J
        Q = (a * a)[:, None, None] * S
        for i in range(stop - start):
            n = start + i
            V_next = A[i] @ V @ A[i].T + Q[i]
            for j in want.get(n, ()):
                s = float(s_out[j])
                C = V @ A[i].T
                cov[j] = ((1 - s) ** 2 * V + s * s * V_next + s * (1 - s) * (C + C.T)
                          if s else V)
            V = V_next
        if stop - start < chunk and stop < n_steps:
            break
    else:
        for j in want.get(n_steps, ()):
            cov[j] = V
    cov = (cov + cov.transpose(1, 2)) / 2
    if status == 0:
        status, message = _first_bad(cov, times)
    else:
        _first_bad(cov, times)
    return mean, cov, n_steps, status, message


def _fine_grid(times: torch.Tensor, grid_step: float) -> tuple[torch.Tensor, list[int]]:
    """Every output interval cut into equal pieces of at most ``grid_step``, each with a
    midpoint: the points and the index of each output among them."""
    pts, node_of = [times[:1]], [0]
    for i in range(len(times) - 1):
        k = max(1, math.ceil(float(times[i + 1] - times[i]) / grid_step - 1e-9))
        pts.append(torch.linspace(float(times[i]), float(times[i + 1]), 2 * k + 1,
                                  dtype=times.dtype)[1:])
        node_of.append(node_of[-1] + 2 * k)
    out = torch.cat(pts)
    out[torch.tensor(node_of)] = times                      # outputs exactly as requested
    return out, node_of


def _continuous_grid(noise: _Noise, h_fn, th0, times, grid, rates, method, rtol, atol,
                     max_nfev, chunk, grid_step):
    """``theta`` by :func:`solve_ode` on a grid, then RK4 for ``V`` on that grid with ``J``,
    ``S`` evaluated in batches at the nodes and midpoints (see :func:`linear_noise`)."""
    rate = _rate_at(grid, rates)
    if grid_step is None:
        grid_step = _default_grid_step(noise, th0)
    pts, node_of = _fine_grid(times, grid_step)
    sol = solve_ode(h_fn, th0, pts, method=method, rtol=rtol, atol=atol, max_nfev=max_nfev)
    path = sol.theta
    mean = path[torch.tensor(node_of)]
    q = noise.U.shape[1] if noise.U is not None else th0.numel()
    cov = torch.full((len(times), q, q), float("nan"), dtype=th0.dtype, device=th0.device)
    cov[0] = 0.0
    out_at = {n // 2: j for j, n in enumerate(node_of)}    # interval index -> output
    V = torch.zeros(q, q, dtype=th0.dtype, device=th0.device)
    n_int = (len(pts) - 1) // 2
    a_all = torch.tensor([rate(float(t)) for t in pts], dtype=th0.dtype, device=th0.device)

    def F(J: torch.Tensor, S: torch.Tensor, a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        JW = J @ W
        return -JW - JW.T + a * S

    nfev = 0
    step = max(1, chunk // 2)
    for k0 in range(0, n_int, step):
        k1 = min(k0 + step, n_int)
        th = path[2 * k0:2 * k1 + 1]
        if not bool(torch.isfinite(th).all()):
            break
        J = noise.jacobians(th)
        _, S = noise.moments(th)
        nfev += len(th)
        for k in range(k0, k1):
            i = 2 * (k - k0)
            h = pts[2 * k + 2] - pts[2 * k]
            a0, am, a1 = a_all[2 * k], a_all[2 * k + 1], a_all[2 * k + 2]
            r1 = F(J[i], S[i], a0, V)
            r2 = F(J[i + 1], S[i + 1], am, V + h / 2 * r1)
            r3 = F(J[i + 1], S[i + 1], am, V + h / 2 * r2)
            r4 = F(J[i + 2], S[i + 2], a1, V + h * r3)
            V = V + h / 6 * (r1 + 2 * r2 + 2 * r3 + r4)
            if k + 1 in out_at:
                cov[out_at[k + 1]] = V
    cov = (cov + cov.transpose(1, 2)) / 2
    status, message = sol.status, sol.message
    bad_status, bad_message = _first_bad(cov, times)
    if status == 0 and bad_status:
        status, message = bad_status, bad_message
    return mean, cov, nfev, status, message, grid_step


def _gaussian(noise: _Noise, h_fn, th0, times, grid, rates, z, w, continuous, grid_step,
              method, rtol, atol, max_nfev, max_elements):
    """The Gaussian moment closure (``sa_clip.gaussian_closure``), per SGD step or by RK4 on
    the grid of the continuous form; also the noise-free path at ``times`` (for the mean
    shift): the ODE path (continuous), the steps ``theta - a H(theta)`` (discrete)."""
    closure = _gc.Closure(noise.moments, z, w, max_elements)
    P = th0.numel()
    sol = None
    if continuous:
        sol = solve_ode(h_fn, th0, times, method=method, rtol=rtol, atol=atol,
                        max_nfev=max_nfev)
        path = sol.theta
    else:
        path = torch.full((len(times), P), float("nan"), dtype=th0.dtype, device=th0.device)
    mean = torch.full((len(times), P), float("nan"), dtype=th0.dtype, device=th0.device)
    cov = torch.full((len(times), P, P), float("nan"), dtype=th0.dtype, device=th0.device)
    m, V = th0.clone(), torch.zeros(P, P, dtype=th0.dtype, device=th0.device)

    def finite(*ts: torch.Tensor) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in ts)

    if not continuous:
        n_steps = len(rates)
        n_out = (torch.searchsorted(grid, times.contiguous(), right=True) - 1).clamp(max=n_steps)
        want: dict[int, list[int]] = {}
        for j, n in enumerate(n_out.tolist()):
            want.setdefault(n, []).append(j)
        free = th0.clone()
        for n in range(n_steps):
            a = float(rates[n])
            m1, V1, cross, free1 = _gc.discrete_step(closure, m, V, a, free)
            for j in want.get(n, ()):
                s = float((times[j] - grid[n]) / a)
                if s < 1e-9:
                    mean[j], cov[j], path[j] = m, V, free
                else:       # the linearly interpolated path between steps n and n + 1
                    mean[j] = (1 - s) * m + s * m1
                    path[j] = (1 - s) * free + s * free1
                    cov[j] = ((1 - s) ** 2 * V + s * s * V1
                              + s * (1 - s) * (cross + cross.T))
            m, V, free = m1, V1, free1
            if not finite(m, V, free):
                break
        else:
            for j in want.get(n_steps, ()):
                mean[j], cov[j], path[j] = m, V, free
    else:
        rate = _rate_at(grid, rates)
        pts, node_of = _fine_grid(times, grid_step)
        out_at = {n: j for j, n in enumerate(node_of)}
        mean[0], cov[0] = m, V
        for k in range((len(pts) - 1) // 2):
            t_a, t_m, t_b = (float(t) for t in pts[2 * k:2 * k + 3])
            h = t_b - t_a
            r1 = _gc.rhs(closure, m, V, rate(t_a))
            r2 = _gc.rhs(closure, m + h / 2 * r1[0], V + h / 2 * r1[1], rate(t_m))
            r3 = _gc.rhs(closure, m + h / 2 * r2[0], V + h / 2 * r2[1], rate(t_m))
            r4 = _gc.rhs(closure, m + h * r3[0], V + h * r3[1], rate(t_b))
            m = m + h / 6 * (r1[0] + 2 * r2[0] + 2 * r3[0] + r4[0])
            V = V + h / 6 * (r1[1] + 2 * r2[1] + 2 * r3[1] + r4[1])
            V = (V + V.T) / 2
            if 2 * k + 2 in out_at:
                mean[out_at[2 * k + 2]], cov[out_at[2 * k + 2]] = m, V
            if not finite(m, V):
                break
    cov = (cov + cov.transpose(1, 2)) / 2
    status, message = _first_bad(cov, times)
    mean[torch.isnan(cov.reshape(len(times), -1)).any(1)] = float("nan")
    if sol is not None and sol.status != 0:
        message = (f"{message}; the ODE path (for the mean shift) failed: {sol.message}"
                   if status else f"the ODE path (for the mean shift) failed: {sol.message}")
        status = -1
    return mean, cov, path, closure.nfev, status, message


def _continuous(noise: _Noise, th0, times, grid, rates, method, rtol, atol, max_nfev):
    rate = _rate_at(grid, rates)
    q = noise.U.shape[1] if noise.U is not None else th0.numel()
    count = [0]
    # max_nfev bounds the evaluations of both attempts together: the first may use all but a
    # reserve (as solve_ode keeps) to recover the outputs it had passed if it fails
    reserve = 0 if max_nfev is None else min(max_nfev // 4, 32 * max(1, len(times) - 1))
    limit = [None if max_nfev is None else max_nfev - reserve]

    class _Budget(RuntimeError):
        pass

    def rhs(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        if limit[0] is not None and count[0] >= limit[0]:
            raise _Budget(f"more than max_nfev = {max_nfev} evaluations"
                          + (" (in the first attempt: all but a reserve of "
                             f"{reserve} kept to recover its outputs)"
                             if limit[0] < max_nfev else ""))
        count[0] += 1
        th, V = state
        h, S = noise.moments(th[None])
        J = noise.jacobians(th[None])[0]
        JV = J @ V
        return -h[0], -JV - JV.T + rate(float(t)) * S[0]

    V0 = torch.zeros(q, q, dtype=th0.dtype, device=th0.device)
    mean = torch.full((len(times), th0.numel()), float("nan"), dtype=th0.dtype,
                      device=th0.device)
    cov = torch.full((len(times), q, q), float("nan"), dtype=th0.dtype, device=th0.device)
    status, message = 0, "success"
    try:
        with torch.no_grad():
            mean, cov = odeint(rhs, (th0, V0), times, method=method, rtol=rtol, atol=atol)
    except (AssertionError, RuntimeError) as exc:
        # keep what can be computed: output interval by output interval, up to the failure
        mean[0], cov[0] = th0, V0
        state, reached, why = (th0, V0), 0, exc
        limit[0] = max_nfev
        for i in range(len(times) - 1):
            try:
                with torch.no_grad():
                    out = odeint(rhs, state, times[i:i + 2], method=method, rtol=rtol, atol=atol)
            except (AssertionError, RuntimeError) as seg:
                why = seg
                break
            state = (out[0][-1], out[1][-1])
            mean[i + 1], cov[i + 1] = state
            reached = i + 1
        status = -1
        message = (f"solver failed ({type(why).__name__}: {why}) after tau = "
                   f"{float(times[reached]):.6g}; kept the first {reached + 1} of {len(times)} "
                   "output times, NaN after")
    cov = (cov + cov.transpose(1, 2)) / 2
    bad_status, bad_message = _first_bad(cov, times)
    if status == 0 and bad_status:
        status, message = bad_status, bad_message
    return mean, cov, count[0], status, message


__all__ = ["linear_noise", "LinearNoiseResult", "FORMS"]
