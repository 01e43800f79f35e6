r"""The limiting ODE ``d theta / d tau = -H(theta)`` (SPEC section 4), integrated by torchdiffeq.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS
from tqdm.auto import tqdm

from ._validate import as_tensor, check_positive
from .meanfield import MeanField


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
        0 on success, -1 on failure (solver error or a non-finite solution).
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
              options: dict[str, Any] | None = None, progress: bool = False) -> OdeSolution:
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

    Returns
    -------
    OdeSolution
        ``t``, ``theta`` (time first: ``(T, P)`` or ``(T, K, P)``), ``nfev``, ``status``,
        ``message``. A solver failure is reported (``status = -1``, NaN ``theta``), not raised.

    Raises
    ------
    TypeError, ValueError
        For a field that is not callable, an unknown method, non-positive tolerances, a
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

    status, message = 0, "success"
    try:
        with torch.no_grad():
            theta = odeint(rhs, th0, times, method=method, rtol=rtol, atol=atol,
                           options=options)
        if not bool(torch.isfinite(theta).all()):
            status, message = -1, "the solution became non-finite"
    except (AssertionError, RuntimeError) as exc:
        theta = torch.full((len(times), *th0.shape), float("nan"), dtype=th0.dtype,
                           device=th0.device)
        status, message = -1, f"solver failed: {type(exc).__name__}: {exc}"
    finally:
        bar.close()
    return OdeSolution(t=times, theta=theta, nfev=count[0], status=status, message=message)


__all__ = ["solve_ode", "OdeSolution", "check_times"]
