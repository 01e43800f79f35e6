"""The explorer's computation (``sa_clip.viz.explore``): the field part
(:func:`compute_field`: ``H`` or ``H_M`` on the grid and its equilibria, :class:`FieldState`)
and the chain part (:func:`compute_chains`: the SGD chains, the ODE from their start and
``D_T(s)``, :class:`ChainState`), with the notes shown under the legend (:func:`grid_note`,
:func:`tracking_note`). Pure functions of :class:`Settings`, no drawing: the explorer runs them
in a worker thread. Split out of ``explore.py``, which re-exports every name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize
import torch

from .. import problems as zoo
from ..batchfield import FixedBatchField
from ..clipping import ClipRule, make_rule
from ..equilibria import Equilibrium, classify, find_equilibria
from ..meanfield import MeanField
from ..ode import solve_ode
from ..plane import Plane, PlaneField
from ..problem import Problem
from ..schedules import PowerLaw
from ..sgd import simulate_sgd
from ..tracking import tracking_distance
from ._explore_options import Settings

#: batches of the common-random-numbers estimate of H_M (per-batch clipping)
BATCH_SAMPLES = 32
#: records kept per run, the frames of the animation
FRAMES = 50
#: root-finding iterations per start (a start that wanders off a kink is given up early)
EQ_MAX_ITER = 40
#: points of the ODE's own time grid (drawn smooth, not at the records' times)
ODE_POINTS = 400
#: a grid coarser than ``extent / GRID_NOTE_CELLS`` per cell can miss equilibria (tanh: G = 11)
GRID_NOTE_CELLS = 12


def build_problem(settings: Settings) -> Problem:
    """The ready-made 2-parameter problem named by ``settings.problem``."""
    return zoo.make_problem(settings.problem)


def build_rule(settings: Settings) -> ClipRule:
    """The clipping rule of ``settings`` (``eps`` only where the rule has one)."""
    if settings.rule == "none":
        return make_rule("none")
    return make_rule(settings.rule, lam=settings.lam, eps=settings.eps)


def equilibrium_starts(pf: PlaneField, max_starts: int = 5) -> torch.Tensor:
    """Root-finding starts for the equilibria shown: the grid points where the speed
    ``||H||`` is a local minimum over its 3 x 3 neighbourhood (not on the border), slowest
    first, at most ``max_starts``; shape ``(K, 2)`` (plane coordinates = parameters for
    2-parameter problems). Cheap (the grid is already computed); a zero of ``H`` in a valley
    that a coarse grid does not resolve can be missed (on the tanh toy the default ``G = 25``
    finds all three, ``G = 11`` does not): raise ``grid``.
    """
    sp = pf.speed.double()
    pooled = -torch.nn.functional.max_pool2d(-sp[None, None], 3, 1, 1)[0, 0]
    mask = sp <= pooled
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = False
    rows, cols = torch.nonzero(mask, as_tuple=True)
    order = sp[rows, cols].argsort()[:max_starts]
    a, b = pf.a[cols[order]], pf.b[rows[order]]
    return pf.plane.center + a[:, None] * pf.plane.d1 + b[:, None] * pf.plane.d2


def _in_box(theta: torch.Tensor, extent: float) -> bool:
    return bool(theta.abs().max() <= extent)


def _batch_equilibria(hm: FixedBatchField, starts: torch.Tensor, *, tol: float = 1e-9,
                      merge_tol: float = 1e-6) -> list[Equilibrium]:
    """Zeros of the fixed-batch estimate of ``H_M`` (scipy ``hybr`` from each start), merged
    and classified by the eigenvalues of its finite-difference Jacobian, as
    :func:`sa_clip.find_equilibria` does for ``H``."""
    dt = hm.problem.dtype

    def fun(x: np.ndarray) -> np.ndarray:
        return hm(torch.as_tensor(x, dtype=dt)).double().numpy()

    found: list[Equilibrium] = []
    for x0 in starts.double().cpu().numpy():
        h0 = float(np.linalg.norm(fun(x0)))
        sol = scipy.optimize.root(fun, x0, method="hybr", options={"maxfev": 200})
        res = float(np.linalg.norm(fun(sol.x)))
        if not np.all(np.isfinite(sol.x)) or res > tol * max(1.0, h0):
            continue
        theta = torch.as_tensor(sol.x, dtype=dt)
        if any(float((e.theta - theta).norm()) <= merge_tol * max(1.0, float(theta.norm()))
               for e in found):
            continue
        ev = np.linalg.eigvals(hm.jacobian(theta).double().numpy())
        kind, shape = classify(ev)
        found.append(Equilibrium(theta, res, ev, kind, shape, float("nan")))
    return found


# ---------------------------------------------------------------------------- the computation
@dataclass
class FieldState:
    """What the field part computed (``H`` or ``H_M`` on the grid, and its equilibria)."""

    key: tuple
    rule: ClipRule
    meanfield: MeanField
    field: Any
    batch_field: bool
    pf: PlaneField
    eq_starts: torch.Tensor
    equilibria: list
    note: str


@dataclass
class ChainState:
    """What the chain part computed: the run, the ODE on its own fine grid, ``D_T(s)``."""

    schedule: PowerLaw
    run: Any
    ode: Any
    horizon: float
    tracking: Any
    note: str


def _field_key(s: Settings) -> tuple:
    batch = s.clip_per == "batch" and s.batch_size > 1 and s.rule != "none"
    return (s.rule, s.lam if s.rule != "none" else None, s.eps if s.rule != "none" else None,
            batch, s.batch_size if batch else None, s.extent, s.grid)


def grid_note(grid: int, extent: float, found: int) -> str:
    """The note shown when equilibria may be missed: a grid coarser than
    ``extent / GRID_NOTE_CELLS`` per cell (the root-finding starts are the grid's slow points,
    so a zero in a valley narrower than a cell can be missed), or no equilibrium found."""
    h = 2 * extent / (grid - 1)
    if h > extent / GRID_NOTE_CELLS:
        return (f"Equilibria may be missed: the grid is coarse (G = {grid}, cell {h:.2g}); "
                "raise --grid.")
    if found == 0:
        return "No equilibrium found in view: there may be one outside, or in a narrow valley."
    return ""


def compute_field(problem: Problem, s: Settings) -> FieldState:
    """``H`` (or ``H_M``) on the ``G x G`` grid in one batched call, and its equilibria."""
    p = problem
    batch = _field_key(s)[3]
    rule = build_rule(s)
    meanfield = MeanField(p, rule)
    field = (FixedBatchField(meanfield, s.batch_size, samples=BATCH_SAMPLES, seed=s.seed)
             if batch else meanfield)
    plane = Plane.coordinates(p)
    a = torch.linspace(-s.extent, s.extent, s.grid, dtype=p.dtype)
    flat = plane.points(a, a).reshape(-1, p.P)
    flow = (-field(flat)).reshape(s.grid, s.grid, 2)          # ONE batched call on the grid
    pf = PlaneField(plane, a, a, flow, flow.norm(dim=-1),
                    p.loss(flat).reshape(s.grid, s.grid),
                    torch.zeros(s.grid, s.grid, dtype=p.dtype))
    starts = equilibrium_starts(pf)
    if not len(starts):
        eq = []
    elif batch:
        eq = _batch_equilibria(field, starts)
    else:
        eq = find_equilibria(meanfield, starts=starts, max_iter=EQ_MAX_ITER)
    eq = [e for e in eq if _in_box(e.theta, s.extent)]
    return FieldState(_field_key(s), rule, meanfield, field, batch, pf, starts, eq,
                      grid_note(s.grid, s.extent, len(eq)))


def tracking_note(tracking, ode, field, theta0: torch.Tensor, rule: str,
                  horizon: float) -> str:
    """Why ``D_T(s)`` is not falling, when its median at the last start is not below the one
    at the first: the chains are far from an equilibrium (``||H||`` at the ODE's end is more
    than a tenth of its start), the threshold grows with ``||theta||`` (relative rules), or
    the run is short (it covers fewer than 10 horizons ``T``). Empty when it falls."""
    d = tracking.distance.double().numpy()
    ok = np.isfinite(d).any(0)
    if ok.sum() < 2:
        return ""
    with np.errstate(all="ignore"):
        med = np.nanmedian(d[:, ok], axis=0)
    if med[-1] < med[0]:
        return ""
    why = []
    h0 = float(field(theta0).norm())
    h1 = float(field(ode.theta[-1]).norm())
    if math.isfinite(h1) and h1 > 0.1 * h0:
        why.append(f"far from equilibrium (‖H‖ at the ODE's end is {h1 / max(h0, 1e-300):.0%}"
                   " of its start)")
    if rule in ("adaptive", "layerwise", "unitwise"):
        why.append("the threshold λ·max(‖θ‖, ε) grows with ‖θ‖")
    tau_last = float(ode.t[-1])
    if tau_last < 10 * horizon:
        why.append(f"the horizon is short (τ ends at {tau_last:.3g} = "
                   f"{tau_last / horizon:.2g} T): more steps or a larger a0")
    return "D_T(s) is not falling: " + ("; ".join(why) if why else
                                        "the chains have not settled yet") + "."


def compute_chains(problem: Problem, s: Settings, theta0: torch.Tensor,
                   fs: FieldState) -> ChainState:
    """The SGD chains, the ODE from their start on its own fine grid, and ``D_T(s)``."""
    schedule = PowerLaw(s.a0, s.alpha)
    run = simulate_sgd(problem, fs.rule, schedule, steps=s.steps, chains=s.chains,
                       batch_size=s.batch_size, clip_per=s.clip_per, seed=s.seed,
                       theta0=theta0, field=fs.meanfield,
                       record_every=max(1, s.steps // FRAMES))
    tau_last = float(run.tau[-1])
    t_ode = torch.linspace(0.0, tau_last, ODE_POINTS, dtype=torch.float64)
    ode = solve_ode(fs.field, theta0, t_ode, rtol=1e-5, atol=1e-7)
    horizon = s.horizon if tau_last >= 1.5 * s.horizon else tau_last / 3
    starts = torch.linspace(0.0, tau_last - horizon, s.starts, dtype=torch.float64)
    tracking = tracking_distance(run, fs.field, horizon=horizon, starts=starts, n_grid=20,
                                 rtol=1e-4, atol=1e-6)
    note = tracking_note(tracking, ode, fs.field, theta0, s.rule, horizon)
    return ChainState(schedule, run, ode, horizon, tracking, note)

