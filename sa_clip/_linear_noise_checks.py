"""Argument checks of :func:`sa_clip.linear_noise` and its up-front cost checks: the number
of evaluation points (``max_points``) of the step-by-step forms and of the grid of
``grid_step``, refused with the numbers before any compute.

Split out of ``sa_clip/linear_noise.py``; import the names from there (they are re-exported).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from . import gaussian_closure as _gc
from ._torchdiffeq import solver_names
from ._validate import as_tensor, check_choice, check_nonneg_int, check_positive
from .meanfield import CLIP_PER, MeanField
from .ode import check_times
from .schedules import Schedule, make_schedule

FORMS = ("discrete", "continuous", "gaussian", "gaussian-continuous")
INTEGRATORS = ("grid", "joint")


class _Checked(NamedTuple):
    """The arguments of :func:`sa_clip.linear_noise` after checking, converted."""

    sched: Schedule
    th0: torch.Tensor
    times: torch.Tensor
    m: int
    grid_step: float | None
    nodes: int | None
    max_points: int
    rtol: float
    atol: float
    max_nfev: int | None
    max_full: int
    noise_samples: int
    max_steps: int
    chunk: int
    max_elements: int
    invariance_tol: float
    seed: int | None
    U: torch.Tensor | None


def _check_arguments(field: Any, schedule: Any, theta0: Any, tau: Any, *, batch_size: Any,
                     clip_per: Any, form: Any, basis: Any, max_full: Any, noise_samples: Any,
                     seed: Any, method: Any, rtol: Any, atol: Any, max_nfev: Any,
                     max_steps: Any, chunk: Any, max_elements: Any, invariance_tol: Any,
                     integrator: Any, grid_step: Any, quadrature: Any, nodes: Any,
                     max_points: Any) -> _Checked:
    """Check every argument of :func:`sa_clip.linear_noise`, in its order; raise
    ``TypeError`` / ``ValueError`` with what to pass instead."""
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
    return _Checked(sched, th0, times, m, grid_step, nodes, max_points, rtol, atol, max_nfev,
                    max_full, noise_samples, max_steps, chunk, max_elements, invariance_tol,
                    seed, U)


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


def _step_cost(times: torch.Tensor, n_steps: int, sched: Schedule, form: str, q_nodes: int,
               max_points: int) -> None:
    """Refuse, before any step is computed, a step-by-step form (``"discrete"``,
    ``"gaussian"``) with more than ``max_points`` evaluation points (steps times quadrature
    nodes)."""
    closure = form.startswith("gaussian")
    if n_steps * q_nodes > max_points:
        raise ValueError(
            f"`tau` up to {float(times[-1]):.6g} spans {n_steps} SGD steps of {sched!r}; "
            f"form={form!r} evaluates {'H and S' if closure else 'DH and S'} at "
            f"{f'{q_nodes} nodes per step' if closure else 'every step'}: "
            f"{n_steps * q_nodes:.3g} points, more than `max_points` = {max_points}. Use "
            "form='continuous' (or 'gaussian-continuous'), whose cost depends on the ODE time "
            "covered, not on the steps; ask for earlier times; or raise `max_points`.")
