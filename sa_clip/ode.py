r"""The limiting ODE ``d theta / d tau = -H(theta)`` (docs/theory.md#limiting-ode), by torchdiffeq.

``H`` is continuous but has kinks where a clipping factor switches (``||g_i|| = lam``).
Adaptive Runge-Kutta methods assume smoothness: a step that straddles a kink has a local error
of order ``h^2`` times the jump of ``DH``, and the embedded error estimate sees only part of it,
so the global error no longer falls in proportion to ``rtol``. Measured (``tests/test_ode.py``,
a 120-sample location problem started with every sample clipped, half of them crossing the
switch on a path of length 8): the defaults ``rtol=1e-7, atol=1e-9`` (tighter than
torchdiffeq's; 386 evaluations) stay within 5.4e-5 of a converged fixed-step RK4 reference
(7e-6 relative to the path), ``rtol=1e-9, atol=1e-11`` (2252 evaluations) within 2.1e-6.
That is far below the SGD fluctuations it is compared with; when it is not enough, or a solve
fails (``status = -1``, e.g. "underflow in dt"):

* tighten ``rtol``/``atol`` (error falls, more slowly than the tolerance), or
* use a fixed-step method with a small step, ``method="rk4", options={"step_size": 1e-2}``,
  whose error is set by the step (a kink costs accuracy only in the step that crosses it),
  and check it by halving the step.

In float32, tolerances below about ``1e-6`` are below round-off: pass ``rtol=1e-5`` or so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
from tqdm.auto import tqdm

from ._validate import as_tensor, check_nonneg_int, check_positive
from .io import check_array, load_npz, save_npz
from .meanfield import MeanField


class _TooManyEvaluations(RuntimeError):
    """Raised inside a solve that exceeds ``max_nfev`` (reported as ``status = -1``)."""


@dataclass
class OdeSolution:
    """Result of :func:`solve_ode`.

    Attributes
    ----------
    t : tensor ``(T,)``
        The requested times.
    theta : tensor ``(T, P)`` or ``(T, K, P)``
        The solution at ``t``, time first (like torchdiffeq); NaN when the solve failed.
    nfev : int
        Number of right-hand-side evaluations (each evaluates all ``K`` starts at once).
    status : int
        0 on success, -1 on failure (solver error, more than ``max_nfev`` evaluations, or a
        non-finite solution); the values computed before the failure are kept (see
        :func:`solve_ode`).
    message : str
        What happened.
    """

    t: torch.Tensor
    theta: torch.Tensor
    nfev: int
    status: int
    message: str

    @property
    def success(self) -> bool:
        return self.status == 0

    def save(self, path: str | os.PathLike, config: dict[str, Any] | None = None) -> None:
        """Write to ``path`` (``.npz`` + JSON metadata, atomic, no pickle; ``docs/format.md``),
        with an optional JSON-serialisable ``config`` describing the solve."""
        save_npz(path, {"t": self.t, "theta": self.theta},
                 {"kind": "OdeSolution", "nfev": self.nfev, "status": self.status,
                  "message": self.message, "config": config or {}})

    @classmethod
    def load(cls, path: str | os.PathLike) -> OdeSolution:
        """Read a file written by :meth:`save` (otherwise a ``ValueError`` naming the file)."""
        arrays, meta = load_npz(path, kind="OdeSolution")
        t = check_array(path, arrays, "t", shape=(None,))
        theta = check_array(path, arrays, "theta")
        if theta.ndim not in (2, 3) or theta.shape[0] != t.shape[0]:
            raise ValueError(f"{os.fspath(path)!r}: array 'theta' has shape {theta.shape}, "
                             f"expected ({t.shape[0]}, P) or ({t.shape[0]}, K, P).")
        for key, typ in (("nfev", int), ("status", int), ("message", str)):
            if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
                raise ValueError(f"{os.fspath(path)!r}: metadata {key!r} is "
                                 f"{meta.get(key)!r}, expected {typ.__name__}.")
        return cls(t=torch.from_numpy(np.array(t)), theta=torch.from_numpy(np.array(theta)),
                   nfev=meta["nfev"], status=meta["status"], message=meta["message"])


def check_times(t: Any, dtype: torch.dtype = torch.float64, device: Any = None,
                name: str = "t") -> torch.Tensor:
    """A 1-D, finite, strictly monotone (increasing or decreasing) tensor of times."""
    t = as_tensor(name, t)
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"`{name}` must be a non-empty 1-D tensor of times, got shape "
                         f"{tuple(t.shape)}.")
    t = t.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` must be finite, got {t.tolist()[:8]}...")
    if t.numel() > 1:
        d = t[1:] - t[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            raise ValueError(f"`{name}` must be strictly increasing or strictly decreasing.")
    return t


def solve_ode(field: MeanField | Callable[[torch.Tensor], torch.Tensor], theta0: Any, t: Any,
              *, method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9,
              options: dict[str, Any] | None = None, progress: bool = False,
              max_nfev: int | None = 1_000_000) -> OdeSolution:
    r"""Integrate ``d theta / d tau = -H(theta)`` from ``theta0`` and report ``theta(t)``.

    Main arguments
    --------------
    field : MeanField or callable
        ``H``: a :class:`~sa_clip.MeanField` or any callable ``theta -> H(theta)`` that accepts
        ``(P,)`` and ``(K, P)``.
    theta0 : ``(P,)`` or ``(K, P)``
        Start(s); ``K`` starts are integrated as one batched solve (the error control then
        uses the RMS norm over all of them).
    t : 1-D times, strictly monotone
        Output times; ``t[0]`` is the time of ``theta0``.

    Other arguments
    ---------------
    method : str
        A torchdiffeq method: ``"dopri5"`` (default), ``"dopri8"``, ``"bosh3"``, ``"rk4"``,
        ``"euler"``, ``"midpoint"``, ... Fixed-step methods step on the grid ``t`` unless
        ``options={"step_size": h}``.
    rtol, atol : float
        Tolerances of adaptive methods. Kinks of ``H`` (``||g_i|| = lam``) are handled by step
        rejection; if results look wrong, tighten them or use ``method="rk4"`` with a small
        ``step_size``.
    options : dict, optional
        Passed to ``torchdiffeq.odeint``.
    progress : bool
        A tqdm bar over ODE time.
    max_nfev : int or None
        Give up (``status = -1``) after this many evaluations of ``H``, so that a field the
        adaptive solver cannot get past (a discontinuity makes it take ever smaller steps)
        never hangs; ``None``: no limit.

    Returns
    -------
    OdeSolution
        ``t``, ``theta`` (time first: ``(T, P)`` or ``(T, K, P)``), ``nfev``, ``status``,
        ``message``. A failure is reported, not raised, and keeps what was computed:

        * the solver fails (step-size underflow, e.g. where ``H`` is not finite or jumps;
          more than ``max_nfev`` evaluations): the solve is redone output interval by output
          interval (``[t_i, t_{i+1}]``, each from the end of the previous one, adaptive
          steps landing on ``t_{i+1}`` instead of passing it) up to the
          interval that fails; ``theta`` holds those values (within the tolerances of the
          one-shot solve, not bit-equal to it) and NaN from the first time not reached,
          ``status = -1`` and ``message`` says which interval failed and why;
        * the solution becomes non-finite without an error (fixed-step methods): ``theta`` is
          returned as computed, ``status = -1``, and ``message`` gives the first time where it
          is not finite.

    Raises
    ------
    TypeError, ValueError
        For a field that is not callable, an unknown method, non-positive tolerances or
        ``max_nfev``, a
        ``theta0`` of the wrong shape or not finite, or times that are not 1-D, finite and
        strictly monotone.

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> p = sc.problems.location_problem([0.0, 1.0, 5.0], theta0=4.0)
    >>> sol = sc.solve_ode(sc.MeanField(p, sc.NormClip(1.0)), p.theta0, torch.linspace(0, 20, 5))
    >>> sol.success, sol.theta.shape
    (True, torch.Size([5, 1]))
    """
    if not callable(field):
        raise TypeError(f"`field` must be a MeanField or a callable theta -> H(theta), got "
                        f"{type(field).__name__}.")
    if method not in SOLVERS:
        raise ValueError(f"`method` must be one of {sorted(SOLVERS)}, got {method!r}.")
    rtol = check_positive("rtol", rtol)
    atol = check_positive("atol", atol)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}.")
    if isinstance(field, MeanField):
        th0, batched = field.problem.check_theta(theta0, "theta0")
        th0 = th0 if batched else th0[0]
    else:
        th0 = as_tensor("theta0", theta0)
        if not th0.is_floating_point():
            th0 = th0.to(torch.get_default_dtype())
        if th0.dim() not in (1, 2):
            raise ValueError(f"`theta0` must have shape (P,) or (K, P), got {tuple(th0.shape)}.")
    if not bool(torch.isfinite(th0).all()):
        raise ValueError("`theta0` must be finite.")
    times = check_times(t, dtype=torch.float64, device=th0.device)

    count = [0]
    bar = tqdm(total=float(abs(times[-1] - times[0])), disable=not progress, desc="solve_ode",
               unit="tau")
    t_start = float(times[0])

    def rhs(tau: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        if progress:
            bar.n = min(bar.total, abs(float(tau) - t_start))
            bar.refresh()
        h = field(th)
        if h.shape != th.shape:
            raise ValueError(f"`field` returned shape {tuple(h.shape)} for theta of shape "
                             f"{tuple(th.shape)}.")
        return -h

    if max_nfev is not None:
        max_nfev = check_nonneg_int("max_nfev", max_nfev, minimum=1)
    budget = [max_nfev]

    def limited(tau: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        if budget[0] is not None:
            if budget[0] <= 0:
                raise _TooManyEvaluations(f"more than max_nfev = {max_nfev} evaluations")
            budget[0] -= 1
        return rhs(tau, th)

    def solve(ts: torch.Tensor, y0: torch.Tensor, segment: bool = False) -> torch.Tensor:
        opts = options
        if segment and issubclass(SOLVERS[method], RKAdaptiveStepsizeODESolver) and not (
                options and ("step_t" in options or "jump_t" in options)):
            # adaptive steps may run past the end and interpolate back: land on it instead
            opts = {**(options or {}), "step_t": ts[-1:]}
        return odeint(limited, y0, ts, method=method, rtol=rtol, atol=atol, options=opts)

    status, message = 0, "success"
    try:
        with torch.no_grad():
            try:
                theta = solve(times, th0)
            except (AssertionError, RuntimeError) as exc:
                # keep what can be computed: redo interval by interval up to the failing one
                status = -1
                theta = torch.full((len(times), *th0.shape), float("nan"), dtype=th0.dtype,
                                   device=th0.device)
                theta[0] = th0
                budget[0] = max_nfev
                reached, why = 0, exc
                for i in range(len(times) - 1):
                    try:
                        y = solve(times[i:i + 2], theta[i], segment=True)[-1]
                    except (AssertionError, RuntimeError) as seg_exc:
                        why = seg_exc
                        break
                    theta[i + 1] = y
                    reached = i + 1
                    if not bool(torch.isfinite(y).all()):
                        break
                message = (f"solver failed ({type(why).__name__}: {why}) between t = "
                           f"{float(times[reached]):.6g} and t = "
                           f"{float(times[min(reached + 1, len(times) - 1)]):.6g}; theta kept "
                           f"at the first {reached + 1} of {len(times)} output times, NaN after")
        if status == 0:
            bad = ~torch.isfinite(theta.reshape(len(times), -1)).all(1)
            if bool(bad.any()):
                first = int(torch.nonzero(bad)[0])
                status, message = -1, (f"the solution became non-finite at t = "
                                       f"{float(times[first]):.6g} (output {first} of "
                                       f"{len(times)}); the values before are kept")
    finally:
        bar.close()
    return OdeSolution(t=times, theta=theta, nfev=count[0], status=status, message=message)


__all__ = ["solve_ode", "OdeSolution", "check_times"]
