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

The default tolerances follow the dtype of the problem (:func:`default_tolerances`): the
values above in float64; in float32, whose round-off (about ``1e-7`` relative in ``H``, more
after many steps) makes ``rtol=1e-7`` unreachable (the solver would shrink its steps chasing
noise), ``rtol=1e-4, atol=1e-6``; in float16/bfloat16 ``1e-2, 1e-4``. Pass ``rtol``/``atol``
to choose others.

Long solves say what they cost (:mod:`sa_clip._cost`): after timing the first evaluations of
``H`` (not the very first, which pays one-off costs) the solve prints a rough estimate of the
whole (``progress=None``, the default: only when it exceeds a few seconds), then a progress
bar over ODE time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchdiffeq import odeint

from . import _torchdiffeq
from ._cost import Meter, check_progress, duration, ode_evaluations
from ._validate import as_tensor, check_nonneg_int, check_positive
from .io import check_array, load_npz, save_npz
from .meanfield import MeanField, check_theta


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
    max_nfev : int or None
        The evaluation budget of the solve (one budget for the first attempt and any
        recovery after a failure; ``nfev <= max_nfev``).
    """

    t: torch.Tensor
    theta: torch.Tensor
    nfev: int
    status: int
    message: str
    max_nfev: int | None = None

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


#: Default ``(rtol, atol)`` of :func:`solve_ode` by dtype (see :func:`default_tolerances`).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9), torch.float32: (1e-4, 1e-6),
    torch.float16: (1e-2, 1e-4), torch.bfloat16: (1e-2, 1e-4)}


def default_tolerances(dtype: torch.dtype, table: dict[torch.dtype, tuple[float, float]]
                       | None = None) -> tuple[float, float]:
    """``(rtol, atol)`` for a solve in ``dtype``: well above its round-off, far below the SGD
    fluctuations the ODE is compared with. Float64 ``(1e-7, 1e-9)``, float32 ``(1e-4, 1e-6)``
    (``rtol=1e-7`` is below float32 round-off), float16/bfloat16 ``(1e-2, 1e-4)``.

    >>> default_tolerances(torch.float32)
    (0.0001, 1e-06)
    """
    table = TOLERANCES if table is None else table
    return table.get(dtype, table[torch.float64])


def resolve_tolerances(rtol: Any, atol: Any, dtype: torch.dtype,
                       table: dict[torch.dtype, tuple[float, float]] | None = None
                       ) -> tuple[float, float]:
    """The checked ``rtol``, ``atol``; each None takes :func:`default_tolerances` of ``dtype``."""
    d_rtol, d_atol = default_tolerances(dtype, table)
    return (d_rtol if rtol is None else check_positive("rtol", rtol),
            d_atol if atol is None else check_positive("atol", atol))


def solve_ode(field: MeanField | Callable[[torch.Tensor], torch.Tensor], theta0: Any, t: Any,
              *, solver: str = "dopri5", rtol: float | None = None, atol: float | None = None,
              options: dict[str, Any] | None = None, progress: bool | None = None,
              max_nfev: int | None = 1_000_000, method: str | None = None) -> OdeSolution:
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
    solver : str
        A torchdiffeq method: ``"dopri5"`` (default), ``"dopri8"``, ``"bosh3"``, ``"rk4"``,
        ``"euler"``, ``"midpoint"``, ... Fixed-step methods step on the grid ``t`` unless
        ``options={"step_size": h}``. ``method=`` is accepted as its old name.
    rtol, atol : float or None
        Tolerances of adaptive methods; None (default): by the dtype of ``theta0``
        (:func:`default_tolerances`: ``1e-7, 1e-9`` in float64, ``1e-4, 1e-6`` in float32).
        Kinks of ``H`` (``||g_i|| = lam``) are handled by step rejection; if results look
        wrong, tighten them or use ``solver="rk4"`` with a small ``step_size``.
    options : dict, optional
        Passed to ``torchdiffeq.odeint``.
    progress : bool or None
        ``True``: print a cost estimate to stderr (after timing the first evaluations of
        ``H``: about ``n`` evaluations x the time of one; ``n`` from the tolerance and the span
        of ``t``, a rough figure, see :func:`sa_clip._cost.ode_evaluations`) and show a tqdm
        bar over ODE time. ``None`` (default): the same only when the estimate exceeds a few
        seconds (never when the environment sets ``SA_CLIP_PROGRESS=0``). ``False``: silent.
    max_nfev : int or None
        Give up (``status = -1``) after this many evaluations of ``H``, so that a field the
        adaptive solver cannot get past (a discontinuity makes it take ever smaller steps)
        never hangs; ``None``: no limit. One budget covers the whole call (reported as
        ``OdeSolution.max_nfev``): the first attempt may use all of it but a reserve of
        ``min(max_nfev // 4, 32 (T - 1))`` evaluations, kept to recover its outputs if it fails.

    Returns
    -------
    OdeSolution
        ``t``, ``theta`` (time first: ``(T, P)`` or ``(T, K, P)``), ``nfev``, ``status``,
        ``message``. A failure is reported, not raised, and keeps what was computed:

        * the solver fails (step-size underflow, e.g. where ``H`` is not finite or jumps;
          more than ``max_nfev`` evaluations): the outputs it had passed are recovered, each
          from the start of the accepted step that straddles it (a step or two, adaptive steps
          landing on the output instead of passing it), the next ones interval by interval
          from the previous output, up to the interval that fails or the end of the budget;
          ``theta`` holds those values (within the tolerances of the one-shot solve, not
          bit-equal to it) and NaN from the first time not reached, ``status = -1`` and
          ``message`` says which interval failed, why, and how the evaluations were spent;
        * the solution becomes non-finite without an error (fixed-step methods): ``theta`` is
          returned as computed, ``status = -1``, and ``message`` gives the first time where it
          is not finite.

    Raises
    ------
    TypeError, ValueError
        For a field that is not callable, an unknown solver, non-positive tolerances or
        ``max_nfev``, a ``theta0`` of the wrong shape, complex or not finite, or times that are
        not 1-D, finite and strictly monotone.

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
    arg = "solver"
    if method is not None:
        if solver != "dopri5" and solver != method:
            raise ValueError(f"`method` is the old name of `solver`: pass one of them, got "
                             f"solver={solver!r} and method={method!r}.")
        solver, arg = method, "method"
    names = _torchdiffeq.solver_names()
    if solver not in names:
        raise ValueError(f"`{arg}` must be one of {names}, got {solver!r}.")
    progress = check_progress(progress)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}.")
    if isinstance(field, MeanField):
        th0, batched = check_theta(field.problem, theta0, "theta0")
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
    rtol, atol = resolve_tolerances(rtol, atol, th0.dtype)
    if max_nfev is not None:
        max_nfev = check_nonneg_int("max_nfev", max_nfev, minimum=1)
    meter = progress if isinstance(progress, Meter) else _ode_meter(
        progress, solver, rtol, times, options, 1 if th0.dim() == 1 else th0.shape[0],
        max_nfev)
    rhs = _Rhs(field, max_nfev, meter, float(times[0]), times, solver)

    def solve(ts: torch.Tensor, y0: torch.Tensor, segment: bool = False) -> torch.Tensor:
        opts = options
        if segment and _torchdiffeq.is_adaptive_rk(solver) and not (
                options and ("step_t" in options or "jump_t" in options)):
            # adaptive steps may run past the end and interpolate back: land on it instead
            opts = {**(options or {}), "step_t": ts[-1:]}
        return odeint(rhs, y0, ts, method=solver, rtol=rtol, atol=atol, options=opts)

    status, message = 0, "success"
    try:
        with torch.no_grad():
            try:
                theta = solve(times, th0)
            except (AssertionError, RuntimeError) as exc:
                status = -1
                theta, message = _recover(solve, rhs, times, th0, exc)
        if status == 0:
            bad = ~torch.isfinite(theta.reshape(len(times), -1)).all(1)
            if bool(bad.any()):
                first = int(torch.nonzero(bad)[0])
                status, message = -1, (f"the solution became non-finite at t = "
                                       f"{float(times[first]):.6g} (output {first} of "
                                       f"{len(times)}); the values before are kept")
    finally:
        if meter is not progress:
            meter.close()
    return OdeSolution(t=times, theta=theta, nfev=rhs.count, status=status, message=message,
                       max_nfev=max_nfev)


def _ode_meter(progress: bool | None, solver: str, rtol: float, times: torch.Tensor,
               options: dict[str, Any] | None, starts: int, max_nfev: int | None) -> Meter:
    """The cost estimate and bar of one :func:`solve_ode` call."""
    span = float(abs(times[-1] - times[0]))
    n = ode_evaluations(solver, rtol, span, len(times), options)
    n = n if max_nfev is None else min(n, max_nfev)
    flows = "" if starts == 1 else f"{starts} starts at once, "
    rough = "" if solver in ("euler", "midpoint", "heun2", "heun3", "rk4") else \
        f" (rough: from rtol = {rtol:g} and the span {span:.3g})"

    def describe(sec: float) -> str:
        return f"{flows}about {n} evaluations{rough} x {duration(sec)}"

    return Meter("solve_ode", progress, units=n, describe=describe, total=span, unit="tau")


class _Rhs:
    """``-H`` for torchdiffeq, with one evaluation budget and, for adaptive and fixed-grid
    solvers, the start of the step that straddles each output time (to recover the outputs
    after a failure without integrating from the start again)."""

    def __init__(self, field: Any, max_nfev: int | None, meter: Meter, t_start: float,
                 times: torch.Tensor, solver: str):
        self.field, self.max_nfev, self.meter, self.t_start = field, max_nfev, meter, t_start
        self.times = times
        self.sign = 1.0 if len(times) < 2 or float(times[-1]) >= float(times[0]) else -1.0
        self.count = 0
        # the first attempt keeps a reserve for recovering its outputs should it fail
        self.limit = None if max_nfev is None else \
            max_nfev - min(max_nfev // 4, 32 * max(1, len(times) - 1))
        self.anchors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = True
        if _torchdiffeq.is_adaptive_rk(solver):
            self.callback_accept_step = self._step
        elif _torchdiffeq.is_fixed_grid(solver):
            self.callback_step = self._step

    def __call__(self, tau: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        if self.limit is not None and self.count >= self.limit:
            first = "" if self.limit == self.max_nfev else " (in the first attempt: all but " \
                f"the {self.max_nfev - self.limit} kept to recover the outputs)"
            raise _TooManyEvaluations(f"more than max_nfev = {self.max_nfev} evaluations{first}")
        self.count += 1
        if isinstance(self.field, MeanField):
            h = self.field._evaluate(th if th.dim() == 2 else th[None])
            h = h if th.dim() == 2 else h[0]
        else:
            h = self.field(th)
        self.meter.tick(abs(float(tau) - self.t_start) + getattr(self.meter, "origin", 0.0))
        if h.shape != th.shape:
            raise ValueError(f"`field` returned shape {tuple(h.shape)} for theta of shape "
                             f"{tuple(th.shape)}.")
        return -h

    def _step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        """An accepted step from ``t0`` (state ``y0``) of length ``dt``: anchor the outputs it
        reaches."""
        if not self.recording:
            return
        a, b = self.sign * float(t0), self.sign * float(t0) + abs(float(dt))
        rel = self.sign * self.times
        hit = [i for i in torch.nonzero((rel > a) & (rel <= b)).reshape(-1).tolist()
               if i not in self.anchors]
        if hit:         # one copy of the step's start for all the outputs it reaches
            anchor = (t0.detach().to(self.times).reshape(()), y0.detach().clone())
            for i in hit:
                self.anchors[i] = anchor


def _recover(solve: Callable[..., torch.Tensor], rhs: _Rhs, times: torch.Tensor,
             th0: torch.Tensor, exc: BaseException) -> tuple[torch.Tensor, str]:
    """After a failed one-shot solve: recompute the outputs that can be reached within what is
    left of the budget, each from its anchor (or the previous output), up to the first failure.
    """
    rhs.recording, rhs.limit = False, rhs.max_nfev
    used_first = rhs.count
    theta = torch.full((len(times), *th0.shape), float("nan"), dtype=th0.dtype,
                       device=th0.device)
    theta[0] = th0
    reached, why = 0, exc
    for i in range(1, len(times)):
        t_a, y_a = rhs.anchors.get(i, (times[i - 1], theta[i - 1]))
        try:
            y = y_a if bool(t_a == times[i]) else solve(torch.stack([t_a, times[i]]), y_a,
                                                         segment=True)[-1]
        except (AssertionError, RuntimeError) as seg_exc:
            why = seg_exc
            break
        theta[i] = y
        reached = i
        if not bool(torch.isfinite(y).all()):
            break
    budget = "" if rhs.max_nfev is None else f" of max_nfev = {rhs.max_nfev}"
    message = (f"solver failed ({type(why).__name__}: {why}) between t = "
               f"{float(times[reached]):.6g} and t = "
               f"{float(times[min(reached + 1, len(times) - 1)]):.6g}; theta kept at the first "
               f"{reached + 1} of {len(times)} output times, NaN after; {rhs.count} "
               f"evaluations{budget} ({used_first} in the first attempt, "
               f"{rhs.count - used_first} recovering the outputs)")
    return theta, message


__all__ = ["solve_ode", "OdeSolution", "check_times", "default_tolerances", "TOLERANCES"]
