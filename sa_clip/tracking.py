r"""How closely SGD chains track the ODE flow: the asymptotic-pseudotrajectory distance.

.. math:: D_T(s) = \sup_{0 \le h \le T} \big\lVert \bar\theta(s + h)
          - \Phi_h(\bar\theta(s)) \big\rVert ,

with ``theta_bar`` the piecewise-linear interpolation of a chain in ODE time and ``Phi_h`` the
flow of ``d theta/d tau = -H`` (docs/theory.md#tracking). Theory (Benaim 1999, Theorem 1 of the
paper): ``D_T(s) -> 0`` as ``s -> inf`` for every fixed ``T`` under (A2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchdiffeq import odeint

from ._validate import check_nonneg_int, check_positive
from .io import check_array, load_npz, save_npz
from .meanfield import MeanField
from .ode import check_times
from .trajectory import Trajectory


@dataclass
class TrackingResult:
    """Result of :func:`tracking_distance`.

    Attributes
    ----------
    start : float64 tensor ``(S,)``
        Start times ``s`` (ODE time).
    distance : tensor ``(chains, S)``
        ``D_T(s)`` per chain and start; NaN where the window ``[s, s+T]`` reaches a blow-up.
    horizon : float
        ``T``.
    h : float64 tensor
        The grid of offsets ``h`` the supremum was taken over.
    nfev : int
        Right-hand-side evaluations of the one batched solve.
    status, message : int, str
        0 / "success", or -1 and what failed (then ``distance`` is NaN).
    """

    start: torch.Tensor
    distance: torch.Tensor
    horizon: float
    h: torch.Tensor
    nfev: int = 0
    status: int = 0
    message: str = "success"

    @property
    def median(self) -> torch.Tensor:
        """Median over chains of ``D_T(s)``, ignoring NaN (blown-up chains): shape ``(S,)``."""
        return torch.nanmedian(self.distance, dim=0).values

    def save(self, path: str | os.PathLike, config: dict[str, Any] | None = None) -> None:
        """Write to ``path`` (``.npz`` + JSON metadata, atomic, no pickle; ``docs/format.md``)."""
        save_npz(path, {"start": self.start, "distance": self.distance, "h": self.h},
                 {"kind": "TrackingResult", "horizon": self.horizon, "nfev": self.nfev,
                  "status": self.status, "message": self.message, "config": config or {}})

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrackingResult:
        """Read a file written by :meth:`save` (otherwise a ``ValueError`` naming the file)."""
        arrays, meta = load_npz(path, kind="TrackingResult")
        start = check_array(path, arrays, "start", shape=(None,))
        dist = check_array(path, arrays, "distance", shape=(None, start.shape[0]))
        h = check_array(path, arrays, "h", shape=(None,))
        for key, typ in (("horizon", float), ("nfev", int), ("status", int), ("message", str)):
            v = meta.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float) if typ is float else typ):
                raise ValueError(f"{os.fspath(path)!r}: metadata {key!r} is {v!r}, expected "
                                 f"{typ.__name__}.")
        return cls(start=torch.from_numpy(np.array(start)), distance=torch.from_numpy(
            np.array(dist)), horizon=float(meta["horizon"]), h=torch.from_numpy(np.array(h)),
            nfev=meta["nfev"], status=meta["status"], message=meta["message"])

    def quantile(self, q: float) -> torch.Tensor:
        """``q``-quantile over chains (NaN ignored), shape ``(S,)``."""
        return torch.nanquantile(self.distance.double(), q, dim=0)


def _inf_norm(x: torch.Tensor) -> torch.Tensor:
    return x.abs().max()


def tracking_distance(trajectory: Trajectory,
                      field: MeanField | Callable[[torch.Tensor], torch.Tensor], *,
                      horizon: float, starts: Any = None, n_grid: int = 50,
                      method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-8,
                      max_elements: int = 2 ** 24) -> TrackingResult:
    r"""``D_T(s)`` for every chain of ``trajectory`` and every start time ``s``.

    The supremum over ``h in [0, T]`` is taken over ``n_grid`` evenly spaced offsets plus every
    record time inside the window (where ``theta_bar`` has its corners). All ``chains x S``
    flows are ONE batched ODE solve from the ``(chains * S, P)`` start points on the common
    offset grid (integrated in consecutive pieces of the grid so memory stays below
    ``max_elements`` numbers; the step-size control uses the max-norm, so every start meets
    the tolerances, not just their average).

    Main arguments
    --------------
    trajectory : Trajectory
    field : MeanField or callable ``theta -> H(theta)`` accepting ``(K, P)``
    horizon : float > 0
        ``T``; at most the trajectory's last ODE time.
    starts : 1-D times, optional
        Default: 20 points evenly spaced in ``[0, tau_last - T]``.

    Other arguments
    ---------------
    n_grid : int >= 2
    method, rtol, atol : passed to ``torchdiffeq.odeint``.
    max_elements : int
        Memory budget of one piece of the grid.

    Returns
    -------
    TrackingResult
        ``start (S,)``, ``distance (chains, S)`` (NaN for windows reaching a chain's blow-up),
        ``median`` over chains.

    Raises
    ------
    TypeError, ValueError
        For a non-Trajectory, ``horizon <= 0`` or longer than the run, starts outside
        ``[0, tau_last - T]`` or not 1-D/finite/increasing, ``n_grid < 2``.

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d()
    >>> rule = sc.NormClip(1.0)
    >>> run = sc.simulate_sgd(p, rule, "harmonic:1.0", steps=50, chains=3, seed=0)
    >>> res = sc.tracking_distance(run, sc.MeanField(p, rule), horizon=1.0, starts=[0.0, 2.0])
    >>> res.distance.shape
    torch.Size([3, 2])
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"`trajectory` must be a sa_clip.Trajectory, got "
                        f"{type(trajectory).__name__}.")
    if not callable(field):
        raise TypeError(f"`field` must be a MeanField or a callable, got {type(field).__name__}.")
    horizon = check_positive("horizon", horizon)
    n_grid = check_nonneg_int("n_grid", n_grid, minimum=2)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    tau = trajectory.tau.to(torch.float64)
    last = float(tau[-1])
    if horizon > last:
        raise ValueError(f"`horizon` = {horizon} exceeds the trajectory's ODE time {last}: "
                         "run more steps or use a shorter horizon.")
    if starts is None:
        s = torch.linspace(0.0, last - horizon, 20, dtype=torch.float64, device=tau.device)
    else:
        s = check_times(starts, device=tau.device, name="starts")
        if s.numel() > 1 and not bool((s[1:] > s[:-1]).all()):
            raise ValueError("`starts` must be strictly increasing.")
        if float(s.min()) < 0 or float(s.max()) > last - horizon + 1e-12 * max(1.0, last):
            raise ValueError(f"`starts` must lie in [0, tau_last - horizon] = [0, "
                             f"{last - horizon}], got values in [{float(s.min())}, "
                             f"{float(s.max())}].")
    n_s, chains = s.numel(), trajectory.chains

    # the common offset grid: n_grid points plus every record time inside some window
    rel = (tau[None, :] - s[:, None]).reshape(-1)
    rel = rel[(rel > 0) & (rel < horizon)]
    h = torch.unique(torch.cat([torch.linspace(0.0, horizon, n_grid, dtype=torch.float64,
                                               device=tau.device), rel]))

    x0 = trajectory.interpolate(s)                                  # (C, S, P)
    p = x0.shape[-1]
    y0 = x0.reshape(chains * n_s, p)
    finite = torch.isfinite(y0).all(1, keepdim=True)
    y0 = torch.where(finite, y0, trajectory.theta[:, :1].expand(-1, n_s, -1).reshape(-1, p))
    y0 = torch.where(torch.isfinite(y0), y0, torch.zeros_like(y0))  # placeholder, masked below

    count = [0]

    def rhs(_t: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return -field(th)

    dist = torch.zeros(chains, n_s, dtype=x0.dtype, device=x0.device)
    piece = max(2, max_elements // max(1, chains * n_s * p))
    status, message = 0, "success"
    y, i = y0, 0
    try:
        with torch.no_grad():
            while True:
                j = min(i + piece, len(h))
                grid = h[i:j]
                sol = odeint(rhs, y, grid, method=method, rtol=rtol, atol=atol,
                             options={"norm": _inf_norm})
                times = (s[:, None] + grid[None, :]).clamp(max=last)      # (S, L)
                bar = trajectory.interpolate(times.reshape(-1)).reshape(chains, n_s, -1, p)
                flow = sol.reshape(len(grid), chains, n_s, p).permute(1, 2, 0, 3)
                d = (bar - flow).norm(dim=-1).amax(-1)
                dist = torch.maximum(dist, d) if i else d     # NaN propagates
                y = sol[-1]
                if j >= len(h):
                    break
                i = j - 1
    except (AssertionError, RuntimeError) as exc:
        dist = torch.full_like(dist, float("nan"))
        status, message = -1, f"ODE solve failed: {type(exc).__name__}: {exc}"
    dist = torch.where(finite.reshape(chains, n_s), dist, float("nan"))
    return TrackingResult(start=s, distance=dist, horizon=horizon, h=h, nfev=count[0],
                          status=status, message=message)


__all__ = ["tracking_distance", "TrackingResult"]
