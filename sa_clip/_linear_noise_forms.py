"""The integrators of :func:`sa_clip.linear_noise`: the SGD step grid, the discrete form
(one step at a time), the continuous form on a grid (RK4) or jointly with the ODE
(torchdiffeq), and the Gaussian moment closure's driver (:mod:`sa_clip.gaussian_closure`).

Split out of ``sa_clip/linear_noise.py``; import the names from there (they are re-exported).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch
from torchdiffeq import odeint

from . import gaussian_closure as _gc
from ._linear_noise_model import _Noise
from .ode import solve_ode
from .schedules import Schedule


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


def _default_grid_step(noise: _Noise, th0: torch.Tensor) -> float:
    """``min(0.05, 0.5 / ||DH(theta0)||)``."""
    J0 = noise.jacobians(th0[None])[0]
    norm = float(torch.linalg.matrix_norm(J0, 2)) if bool(torch.isfinite(J0).all()) else 0.0
    return min(0.05, 0.5 / max(norm, 1e-12))


# ---------------------------------------------------------------------------- the forms
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

