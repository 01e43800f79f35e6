r"""An interactive explorer of clipped SGD on the 2-parameter problems (``sa-clip explore``).

The window shows, on the parameter plane of a 2-parameter problem (``tanh``, ``logistic2d``):

* the streamlines of ``-H`` (``H`` evaluated on the whole ``G x G`` grid in one batched call),
  coloured by speed, with grey loss contours;
* the nullclines ``H_1 = 0`` (dashed) and ``H_2 = 0`` (dotted);
* the equilibria (zeros of ``H``) marked by stability (from :func:`sa_clip.find_equilibria`
  and the eigenvalues of ``DH``);
* a few dozen clipped-SGD chains (:func:`sa_clip.simulate_sgd`), animated, and the ODE
  ``d theta/d tau = -H(theta)`` from their start (:func:`sa_clip.solve_ode`) on the same ODE
  times, so the eye can compare where the chains are at ``tau`` with where the ODE is;
* a side panel: the tracking distance ``D_T(s)`` (:func:`sa_clip.tracking_distance`), median
  and 10-90% band over the chains.

Controls: sliders for ``lam``, ``eps``, the power schedule ``a(n) = a0 / (n + 1)^alpha`` and
the batch size ``M``; radio buttons for the clipping rule and for per-sample vs per-batch
clipping; buttons "new chains" (fresh SGD noise) and "play/pause"; a click on the plane moves
the common start of the chains and of the ODE there.

With per-batch clipping the chains average ``H_M(theta) = E[clip(mean of M gradients)]``, not
``H`` (docs/theory.md): the explorer then draws ``H_M`` estimated with a fixed set of random
batches (common random numbers, so the estimate is a smooth function of ``theta`` that an ODE
solver can integrate), and its zeros. With ``M = 1`` both are ``H``.

Only matplotlib's generic API is used (widgets, ``canvas.new_timer``, ``mpl_connect``), so it
runs on any interactive backend and in Jupyter with ipympl (``%matplotlib widget``)::

    from sa_clip.viz.explore import Explorer
    ex = Explorer(problem="tanh", lam=0.5)      # in a notebook: the figure is ex.fig

The window is 1024 x 768 pixels by default (``--size``, ``--dpi``), made for a projector.
A slider is read when it has rested for :data:`DEBOUNCE_S` (a drag is one recomputation,
not one per mouse motion); on an interactive backend the work then runs in a background
thread, the field is drawn as soon as it is ready and the chains after it, "computing..."
shows meanwhile, and a newer request cancels an older one (stale results are dropped).
Notes under the legend say when equilibria may be missed (coarse grid) and why ``D_T(s)``
is not falling where it is not.

From the shell::

    python -m sa_clip.viz.explore --problem tanh --rule adaptive --lam 0.5
    python -m sa_clip.viz.explore --lam 0.5 --snapshot explore.png     # no window, a PNG
    python -m sa_clip.viz.explore --gif explore.gif                    # the animation
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import scipy.optimize
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.widgets import Button, RadioButtons, Slider

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
from ._save import atomic_path, save_animation
from ._style import KIND_STYLE, ODE_COLOR, SGD_COLOR
from .phase import plot_phase_portrait

#: ``sa-clip explore --help`` (plain text: no reST markup in the terminal)
HELP = "interactive explorer of a 2-parameter problem (sliders, animated chains, D_T)"
DESCRIPTION = ("An interactive window on a 2-parameter problem: streamlines of -H, nullclines, "
               "equilibria by stability, animated SGD chains against the ODE from their start, "
               "and D_T(s); sliders for lam, eps, a0, alpha and the batch size, radio buttons "
               "for the rule and per-sample/per-batch clipping. --snapshot PATH writes one "
               "frame as a PNG and --gif PATH the animation, with no window.")

PROG = "sa-clip explore"
#: what ``--quick`` changes (options left at their defaults only)
QUICK = {"grid": 15, "chains": 12, "steps": 80}
#: the ready-made 2-parameter problems the explorer accepts
PROBLEMS_2D = ("tanh", "logistic2d")
#: the rules on the radio buttons (registry names of :func:`sa_clip.make_rule`)
RULE_CHOICES = ("norm", "adaptive", "layerwise", "unitwise", "value", "none")
RULE_LABELS = {"norm": "classic norm", "adaptive": "adaptive", "layerwise": "layer-wise",
               "unitwise": "unit-wise (AGC)", "value": "value", "none": "none (plain SGD)"}
CLIP_PER_CHOICES = ("sample", "batch")
CLIP_PER_LABELS = {"sample": "per-sample", "batch": "per-batch"}
#: slider ranges (a value given outside is accepted and the range grows to hold it)
SLIDER_RANGES = {"lam": (0.05, 5.0), "eps": (0.001, 1.0), "a0": (0.05, 2.0),
                 "alpha": (0.3, 1.0), "batch_size": (1, 32)}
#: samples in each problem's data set (the largest batch size)
DATA_SIZE = {"tanh": 64, "logistic2d": 100}
#: batches of the common-random-numbers estimate of H_M (per-batch clipping)
BATCH_SAMPLES = 32
#: records kept per run, the frames of the animation
FRAMES = 50
#: root-finding iterations per start (a start that wanders off a kink is given up early)
EQ_MAX_ITER = 40
DEFAULT_EXTENT = {"tanh": 3.0, "logistic2d": 5.0}
#: window / snapshot size in pixels at :data:`DPI` (fits a 1024 x 768 projector)
SIZE = (1024, 768)
DPI = 100
FIGSIZE = (SIZE[0] / DPI, SIZE[1] / DPI)
#: seconds a control must rest before the explorer recomputes
DEBOUNCE_S = 0.3
#: points of the ODE's own time grid (drawn smooth, not at the records' times)
ODE_POINTS = 400
#: largest accepted values (beyond them a grid, a view or a picture is not useful, only slow)
MAX_GRID = 200
MAX_EXTENT = 1e4
MAX_DPI = 600
MAX_PIXELS = 40_000_000
#: a grid coarser than ``extent / GRID_NOTE_CELLS`` per cell can miss equilibria (tanh: G = 11)
GRID_NOTE_CELLS = 12


@dataclass(frozen=True)
class Settings:
    """Everything the explorer draws depends on these (the controls change the first eight).

    ``a0``, ``alpha``: the power schedule ``a(n) = a0 / (n + 1)^alpha``; ``extent``: the plane
    shown is ``[-extent, extent]^2`` (default per problem: tanh 3, logistic2d 5); ``grid``:
    ``G``, points per side of the field grid;
    ``horizon``: ``T`` of ``D_T(s)`` (shortened to a third of the run's ODE time if the run is
    shorter than ``1.5 T``); ``starts``: start times ``s`` of ``D_T(s)``.
    """

    problem: str = "tanh"
    rule: str = "norm"
    lam: float = 1.0
    eps: float = 1e-3
    a0: float = 1.0
    alpha: float = 0.7
    batch_size: int = 1
    clip_per: str = "sample"
    chains: int = 24
    steps: int = 150
    seed: int = 0
    extent: float | None = None
    grid: int = 25
    horizon: float = 1.0
    starts: int = 8

    def check(self) -> Settings:
        """Raise ``ValueError`` naming the first bad option, its value and what is accepted."""
        if self.problem not in PROBLEMS_2D:
            extra = ""
            if self.problem in zoo.PROBLEMS:
                extra = " (it has more than 2 parameters; the explorer draws the plane itself)"
            raise ValueError(f"`--problem` must be one of {list(PROBLEMS_2D)}, got "
                             f"{self.problem!r}{extra}.")
        if self.rule not in RULE_CHOICES:
            raise ValueError(f"`--rule` must be one of {list(RULE_CHOICES)}, got {self.rule!r}.")
        if self.clip_per not in CLIP_PER_CHOICES:
            raise ValueError(f"`--clip-per` must be one of {list(CLIP_PER_CHOICES)}, got "
                             f"{self.clip_per!r}.")
        if self.extent is None:
            return replace(self, extent=DEFAULT_EXTENT[self.problem]).check()
        for name in ("lam", "eps", "a0", "alpha", "extent", "horizon"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v > 0):
                raise ValueError(f"`--{name}` must be a finite number > 0, got {v!r}.")
        if self.extent > MAX_EXTENT:
            raise ValueError(f"`--extent` must be at most {MAX_EXTENT:g} (the half-width of the "
                             f"square drawn), got {self.extent!r}.")
        for name, low in (("batch_size", 1), ("chains", 1), ("steps", 10), ("grid", 5),
                          ("starts", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"`--{name.replace('_', '-')}` must be an integer >= {low}, "
                                 f"got {v!r}.")
        if self.grid > MAX_GRID:
            raise ValueError(f"`--grid` must be at most {MAX_GRID} points per side (the field "
                             f"is evaluated at grid^2 points), got {self.grid}.")
        n = DATA_SIZE[self.problem]
        if self.batch_size > n:
            raise ValueError(f"`--batch-size` must be at most {n} (the {self.problem} data set "
                             f"has {n} samples), got {self.batch_size}.")
        if self.chains > 1000:
            raise ValueError(f"`--chains` must be at most 1000, got {self.chains}.")
        if self.steps > 1_000_000:
            raise ValueError(f"`--steps` must be at most 1000000, got {self.steps}.")
        return self


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


# ---------------------------------------------------------------------------- the window
class Debouncer:
    """Call ``fn`` once a burst of :meth:`trigger` calls has rested ``delay_s`` seconds.

    The waiting is a matplotlib timer of the canvas (``canvas.new_timer``, single shot,
    restarted by each trigger), so it runs on the GUI thread of any backend. On a canvas with
    no event loop (Agg) the timer never fires: :meth:`flush` runs the pending call at once,
    which is also how a test drives it deterministically, with no sleeping.
    """

    def __init__(self, canvas, fn, delay_s: float = DEBOUNCE_S):
        self.fn = fn
        self.pending = False
        self.timer = canvas.new_timer(interval=max(1, int(round(delay_s * 1000))))
        self.timer.single_shot = True
        self.timer.add_callback(self.flush)

    def trigger(self) -> None:
        """Ask for a call; an earlier one still waiting is merged into this one."""
        self.pending = True
        self.timer.stop()
        self.timer.start()

    def flush(self) -> None:
        """Run the pending call now (nothing if none is pending)."""
        self.timer.stop()
        if self.pending:
            self.pending = False
            self.fn()


class Explorer:
    """The interactive figure. Build it with keyword options (those of :class:`Settings`);
    it computes and draws at once. ``fig`` is the figure, ``sliders``/``radios``/``buttons``
    the widgets (keys: ``lam eps a0 alpha batch_size``, ``rule clip_per``,
    ``new_chains play``), ``equilibria`` the equilibria drawn, ``notes`` the notes shown,
    ``last_update_s`` the seconds the last recomputation took, ``recomputations`` how many
    were started.

    ``debounce_s``: the controls recompute once they have rested that long (default
    :data:`DEBOUNCE_S` on an interactive backend, 0 = at once otherwise); ``background``:
    compute in a worker thread (default: on an interactive backend) so the window stays live.
    Without an event loop (Agg), :meth:`flush` runs a waiting recomputation, :meth:`wait`
    joins the worker and :meth:`poll` draws what it delivered.

    Driving it from code (what the widgets do)::

        ex = Explorer(problem="tanh", lam=1.0, chains=8, steps=100, grid=15)
        ex.sliders["lam"].set_val(0.5)          # recomputes H, equilibria, chains, ODE, D_T
        ex.radios["rule"].set_active(1)         # adaptive
        ex.fig.savefig("explore.png")
    """

    def __init__(self, settings: Settings | None = None, *, animate: bool = True,
                 figure: Figure | None = None, debounce_s: float | None = None,
                 background: bool | None = None, **options: Any):
        base = settings or Settings()
        unknown = set(options) - {f.name for f in fields(Settings)}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; accepted: "
                            f"{[f.name for f in fields(Settings)]}.")
        self.settings = replace(base, **options).check()
        self.problem = build_problem(self.settings)
        self.theta0 = self.problem.theta0.clone()
        self.frame = 0
        self.playing = False
        self.last_update_s = float("nan")
        self.recomputations = 0
        self.notes: list[str] = []
        self._fs: FieldState | None = None
        self._cs: ChainState | None = None
        self._chain_artists: list = []
        self._gen = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending_field = False
        self._t0 = 0.0
        self._build_figure(figure)
        # live: a window shows this figure (pyplot manages it on an interactive backend)
        live = _interactive_backend() and getattr(self.fig.canvas, "manager", None) is not None
        self.background = live if background is None else bool(background)
        self.debouncer = Debouncer(self.fig.canvas, self.flush,
                                   DEBOUNCE_S if debounce_s is None else debounce_s)
        self.debounce = (live if debounce_s is None else debounce_s > 0)
        # blitting (matplotlib's generic API) where the canvas supports it and a window shows
        # it: an animation frame then redraws the chains only, not the streamlines
        self.blit = bool(animate and _interactive_backend()
                         and getattr(self.fig.canvas, "supports_blit", False))
        self._background = None
        self.fig.canvas.mpl_connect("draw_event", self._on_draw)
        self.timer = self.fig.canvas.new_timer(interval=80)
        self.timer.add_callback(self._advance)
        self.poll_timer = self.fig.canvas.new_timer(interval=50)
        self.poll_timer.add_callback(self.poll)
        self.recompute()                  # the first picture at once, in this thread
        if animate:
            self.play()

    # ------------------------------------------------------------------ results as attributes
    rule = property(lambda self: self._fs.rule)
    meanfield = property(lambda self: self._fs.meanfield)
    field = property(lambda self: self._fs.field)
    batch_field = property(lambda self: self._fs.batch_field)
    pf = property(lambda self: self._fs.pf)
    eq_starts = property(lambda self: self._fs.eq_starts)
    equilibria = property(lambda self: self._fs.equilibria)
    _field_key = property(lambda self: self._fs.key)
    schedule = property(lambda self: self._cs.schedule)
    run = property(lambda self: self._cs.run)
    ode = property(lambda self: self._cs.ode)
    horizon = property(lambda self: self._cs.horizon)
    tracking = property(lambda self: self._cs.tracking)

    # ------------------------------------------------------------------ layout and widgets
    def _build_figure(self, figure: Figure | None) -> None:
        s = self.settings
        self.fig = figure if figure is not None else plt.figure(figsize=FIGSIZE)
        self.ax = self.fig.add_axes((0.065, 0.37, 0.42, 0.55))
        self.cax = self.fig.add_axes((0.50, 0.40, 0.012, 0.49))
        self.ax_dt = self.fig.add_axes((0.665, 0.655, 0.315, 0.265))
        self.ax_legend = self.fig.add_axes((0.575, 0.465, 0.42, 0.125))
        self.ax_legend.set_axis_off()
        self.note_text = self.fig.text(0.58, 0.45, "", ha="left", va="top", fontsize=8,
                                       color="#8c2d04", wrap=True)
        self.status = self.fig.text(0.995, 0.005, "", ha="right", va="bottom", fontsize=8,
                                    color="0.35")
        self.sliders: dict[str, Slider] = {}
        specs = [("lam", r"$\lambda$ (clip)", False), ("eps", r"$\epsilon$ (adaptive)", False),
                 ("a0", r"$a_0$ (step $a_0/(n+1)^\alpha$)", False),
                 ("alpha", r"$\alpha$ (decay)", False), ("batch_size", "batch size M", True)]
        for k, (name, label, integer) in enumerate(specs):
            lo, hi = SLIDER_RANGES[name]
            v = getattr(s, name)
            lo, hi = min(lo, v), max(hi, v)
            ax = self.fig.add_axes((0.20, 0.225 - 0.045 * k, 0.27, 0.032))
            sl = Slider(ax, label, lo, hi, valinit=v, valstep=1 if integer else None,
                        valfmt="%d" if integer else "%.3g")
            sl.label.set_fontsize(9)
            sl.on_changed(lambda _v, name=name: self._on_control(name))
            self.sliders[name] = sl
        self.radios: dict[str, RadioButtons] = {}
        self.fig.text(0.575, 0.265, "clipping rule", fontsize=9, weight="bold")
        ax = self.fig.add_axes((0.575, 0.03, 0.17, 0.23))
        self.radios["rule"] = RadioButtons(ax, [RULE_LABELS[r] for r in RULE_CHOICES],
                                           active=RULE_CHOICES.index(s.rule))
        self.fig.text(0.765, 0.265, "clip", fontsize=9, weight="bold")
        ax = self.fig.add_axes((0.765, 0.16, 0.21, 0.10))
        self.radios["clip_per"] = RadioButtons(ax, [CLIP_PER_LABELS[c] for c in CLIP_PER_CHOICES],
                                               active=CLIP_PER_CHOICES.index(s.clip_per))
        for name, radio in self.radios.items():
            for t in radio.labels:
                t.set_fontsize(9)
            radio.on_clicked(lambda _label, name=name: self._on_control(name))
        self.buttons: dict[str, Button] = {
            "new_chains": Button(self.fig.add_axes((0.765, 0.09, 0.21, 0.055)), "new chains"),
            "play": Button(self.fig.add_axes((0.765, 0.025, 0.21, 0.055)), "play / pause"),
        }
        self.buttons["new_chains"].on_clicked(lambda _e: self.new_chains())
        self.buttons["play"].on_clicked(lambda _e: self.toggle_play())
        self.fig.text(0.01, 0.005, "click on the plane: start the chains and the ODE there",
                      fontsize=8, color="0.3", va="bottom")
        self.fig.canvas.mpl_connect("button_press_event", self._on_click)

    def _read_controls(self) -> Settings:
        sl, rd = self.sliders, self.radios
        rule = RULE_CHOICES[[RULE_LABELS[r] for r in RULE_CHOICES].index(
            rd["rule"].value_selected)]
        clip_per = CLIP_PER_CHOICES[[CLIP_PER_LABELS[c] for c in CLIP_PER_CHOICES].index(
            rd["clip_per"].value_selected)]
        return replace(self.settings, lam=float(sl["lam"].val), eps=float(sl["eps"].val),
                       a0=float(sl["a0"].val), alpha=float(sl["alpha"].val),
                       batch_size=int(round(sl["batch_size"].val)), rule=rule,
                       clip_per=clip_per).check()

    def _on_control(self, _name: str) -> None:
        self.settings = self._read_controls()
        self.request()

    def _on_click(self, event) -> None:
        if event.inaxes is not self.ax or event.xdata is None or event.button != 1:
            return
        toolbar = getattr(self.fig.canvas, "toolbar", None)
        if toolbar is not None and getattr(toolbar, "mode", ""):
            return                                  # zooming or panning, not a new start
        self.theta0 = torch.tensor([event.xdata, event.ydata], dtype=self.problem.dtype)
        self.request(field=False)

    # ------------------------------------------------------------------ scheduling the work
    def request(self, *, field: bool = True) -> None:
        """Ask for a recomputation (what the controls do): debounced, then run by
        :meth:`flush`; "computing..." shows until it is drawn."""
        self._pending_field |= field
        self.debouncer.pending = True
        self.status.set_text("computing…")
        self.fig.canvas.draw_idle()
        if self.debounce:
            self.debouncer.trigger()
        else:
            self.debouncer.flush()

    def flush(self) -> None:
        """Start the waiting recomputation now (the debounce timer calls this)."""
        self.debouncer.pending = False
        field, self._pending_field = self._pending_field, False
        self._start(field)

    def _start(self, field: bool) -> None:
        self._gen += 1                              # cancels any older work in flight
        self.recomputations += 1
        gen, s, theta0 = self._gen, self.settings, self.theta0.clone()
        fs = None if field or self._fs is None or self._fs.key != _field_key(s) else self._fs
        self._t0 = time.perf_counter()
        if self.background:
            self._thread = threading.Thread(target=self._work, args=(gen, s, theta0, fs),
                                            name="sa-clip-explore", daemon=True)
            self._thread.start()
            self.poll_timer.start()
        else:
            self._work(gen, s, theta0, fs)
            self.poll()

    def _work(self, gen: int, s: Settings, theta0: torch.Tensor, fs: FieldState | None) -> None:
        """The computation (worker thread or inline); posts ("field"|"chains"|"error", gen,
        value) to the queue and gives up as soon as a newer request exists."""
        try:
            if fs is None or fs.key != _field_key(s):
                fs = compute_field(self.problem, s)
                if gen != self._gen:
                    return
                self._queue.put(("field", gen, fs))
            cs = compute_chains(self.problem, s, theta0, fs)
            if gen == self._gen:
                self._queue.put(("chains", gen, (fs, cs)))
        except Exception as exc:                    # shown in the window, not lost
            self._queue.put(("error", gen, exc))

    def wait(self, timeout: float = 600.0) -> bool:
        """Join the worker thread (if any); True when nothing is running any more."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def poll(self) -> None:
        """Draw what the worker delivered (on the GUI thread; the poll timer calls this)."""
        while True:
            try:
                kind, gen, value = self._queue.get_nowait()
            except queue.Empty:
                break
            if gen != self._gen:
                continue                            # a stale result: a newer one is coming
            if kind == "error":
                self.status.set_text(f"error: {' '.join(str(value).split())[:120]}")
                self.poll_timer.stop()
            elif kind == "field":
                self._fs = value
                self._draw_field()
                self.status.set_text("computing the chains…")
            else:
                self._fs, self._cs = value
                if getattr(self, "_drawn_key", None) != self._fs.key:
                    self._draw_field()
                self._draw_chains()
                self.last_update_s = time.perf_counter() - self._t0
                self.status.set_text(f"updated in {self.last_update_s:.2f} s")
                self.poll_timer.stop()
        self.fig.canvas.draw_idle()

    def recompute(self, *, field: bool = True) -> None:
        """Recompute now, in this thread (the field part only when the rule, ``lam``, ``eps``
        or the per-batch field changed, or ``field``), then redraw; records
        ``last_update_s``."""
        background, self.background = self.background, False
        try:
            self._pending_field = False
            self.debouncer.pending = False
            self._start(field or self._fs is None)
        finally:
            self.background = background
        if self._cs is None:                        # the computation failed: say why
            raise RuntimeError(self.status.get_text())

    def new_chains(self) -> None:
        """Fresh SGD noise (the next seed); the field and equilibria are kept."""
        self.settings = replace(self.settings, seed=self.settings.seed + 1)
        self.request(field=False)

    # ------------------------------------------------------------------ drawing
    def _labels(self) -> tuple[str, str]:
        s = self.settings
        what = "H_M" if self.batch_field else "H"
        rule = RULE_LABELS[s.rule] + ("" if s.rule == "none" else f", λ = {s.lam:.3g}")
        if s.rule in ("adaptive", "layerwise", "unitwise"):
            rule += f", ε = {s.eps:.3g}"
        return what, f"{rule}; {CLIP_PER_LABELS[s.clip_per]} clipping, M = {s.batch_size}"

    def _draw_field(self) -> None:
        """The field part: streamlines, contours, nullclines, equilibria, colour bar."""
        ax = self.ax
        ax.cla()
        self._chain_artists = []
        what, rule = self._labels()
        plot_phase_portrait(self.pf, ax, equilibria=None, loss_levels=10, colorbar=False,
                            density=0.7, title="")
        strm = next(c for c in ax.collections if isinstance(c, LineCollection)
                    and c.get_array() is not None)
        self.cax.cla()
        self.fig.colorbar(strm, cax=self.cax, label=f"speed ‖{what}‖")
        self.eq_artists = []
        seen: set[str] = set()
        for e in self.equilibria:
            style = dict(KIND_STYLE.get(e.kind, KIND_STYLE["degenerate"]))
            label = style.pop("label")
            if self.batch_field:
                label += " of H_M"
            (art,) = ax.plot([float(e.theta[0])], [float(e.theta[1])], linestyle="none", ms=10,
                             mec="k", zorder=6, label=None if label in seen else label, **style)
            seen.add(label)
            self.eq_artists.append(art)
        # the portrait's legend sits under the plane; it moves to the legend panel instead
        prev = ax.get_legend()
        self._field_handles = list(prev.legend_handles) if prev is not None else []
        if prev is not None:
            prev.remove()
        for h in self._field_handles:
            h.set_label(h.get_label().replace("−H", f"−{what}"))
        s = self.settings
        ax.set_xlim(-s.extent, s.extent)
        ax.set_ylim(-s.extent, s.extent)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{self.problem.name}: streamlines of −{what}\n{rule}", fontsize=10)
        ax.tick_params(labelsize=8)
        self._drawn_key = self._fs.key
        self._draw_legend()
        self._draw_notes()

    def _draw_chains(self) -> None:
        """The chain part: trails, heads, the ODE (its own fine grid), start and D_T."""
        ax, s = self.ax, self.settings
        for art in self._chain_artists:
            art.remove()
        c = self.run.theta.double().numpy()
        o = self.ode.theta.double().numpy()
        self.trails = LineCollection([], colors=SGD_COLOR, linewidths=0.8, alpha=0.45,
                                     zorder=3)
        ax.add_collection(self.trails)
        (self.heads,) = ax.plot(c[:, 0, 0], c[:, 0, 1], "o", color=SGD_COLOR, ms=4.5, mec="white",
                                mew=0.5, zorder=4, label=f"SGD chains ({s.chains})")
        (self.ode_line,) = ax.plot(o[:1, 0], o[:1, 1], color=ODE_COLOR, lw=2.4, zorder=5,
                                   label="ODE from the start")
        (self.ode_head,) = ax.plot(o[:1, 0], o[:1, 1], "o", color=ODE_COLOR, ms=8, mec="k",
                                   zorder=6)
        (star,) = ax.plot(o[0, 0], o[0, 1], "*", color="k", ms=13, mfc="yellow", zorder=7,
                          label="start (click to move)")
        self._chain_artists = [self.trails, self.heads, self.ode_line, self.ode_head, star]
        ax.set_xlim(-s.extent, s.extent)
        ax.set_ylim(-s.extent, s.extent)
        self._draw_tracking()
        self._draw_legend()
        self._draw_notes()
        self.frame = self.run.tau.shape[0] - 1 if not self.playing else 0
        self._animated = [self.trails, self.heads, self.ode_line, self.ode_head, self.dt_cursor]
        for art in self._animated:
            art.set_animated(self.blit)
        self._show_frame()

    def _draw_legend(self) -> None:
        ours, _ = self.ax.get_legend_handles_labels()
        self.ax_legend.cla()
        self.ax_legend.set_axis_off()
        self.ax_legend.legend(handles=self._field_handles + ours, loc="upper left", ncol=2,
                              fontsize=8, frameon=False, borderaxespad=0.0,
                              columnspacing=1.0, handlelength=1.8)

    def _draw_notes(self) -> None:
        self.notes = [n for n in (self._fs.note if self._fs is not None else "",
                                  self._cs.note if self._cs is not None and
                                  getattr(self, "_chain_artists", None) else "") if n]
        self.note_text.set_text("\n".join(textwrap.fill(n, 70) for n in self.notes))

    def _draw_tracking(self) -> None:
        ax, r = self.ax_dt, self.tracking
        ax.cla()
        sv = r.start.double().numpy()
        d = r.distance.double().numpy()
        ok = np.isfinite(d).any(0)
        if ok.any():
            with np.errstate(all="ignore"):
                lo, med, hi = (np.nanquantile(d[:, ok], q, axis=0) for q in (0.1, 0.5, 0.9))
            ax.fill_between(sv[ok], lo, hi, color=SGD_COLOR, alpha=0.2, lw=0,
                            label="10–90% of chains")
            ax.plot(sv[ok], med, "o-", color=SGD_COLOR, ms=4, lw=1.8, label="median")
            if np.nanmin(lo) > 0:
                ax.set_yscale("log")
        self.dt_cursor = ax.axvline(0.0, color=ODE_COLOR, lw=1, alpha=0.7)
        ax.set_xlabel("start time s (ODE time τ)", fontsize=9)
        ax.set_ylabel(rf"$D_T(s)$, T = {self.horizon:.3g}", fontsize=9)
        a2 = "" if self.schedule.satisfies_a2 else "  [(A2) fails: α ≤ 1/2]"
        ax.set_title(r"tracking $D_T(s)=\sup_{h\leq T}\|\bar\theta(s+h)-\Phi_h(\bar\theta(s))\|$"
                     + a2, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="upper right")

    def _show_frame(self) -> None:
        k = self.frame
        c = self.run.theta.double().numpy()
        o = self.ode.theta.double().numpy()
        tau_k = float(self.run.tau[k])
        j = int(np.searchsorted(self.ode.t.double().numpy(), tau_k, side="right"))
        j = max(1, j)
        self.trails.set_segments([c[i, :k + 1] for i in range(c.shape[0])])
        self.heads.set_data(c[:, k, 0], c[:, k, 1])
        self.ode_line.set_data(o[:j, 0], o[:j, 1])
        self.ode_head.set_data(o[j - 1:j, 0], o[j - 1:j, 1])
        self.dt_cursor.set_xdata([tau_k] * 2)

    # ------------------------------------------------------------------ animation
    def _on_draw(self, _event) -> None:
        if self.blit:
            self._background = self.fig.canvas.copy_from_bbox(self.fig.bbox)
            self._draw_animated()

    def _draw_animated(self) -> None:
        for art in getattr(self, "_animated", ()):
            self.fig.draw_artist(art)

    def _advance(self) -> None:
        n = self.run.tau.shape[0]
        self.frame = (self.frame + 1) % n
        self._show_frame()
        canvas = self.fig.canvas
        if self.blit and self._background is not None:
            canvas.restore_region(self._background)
            self._draw_animated()
            canvas.blit(self.fig.bbox)
        else:
            canvas.draw_idle()

    def play(self) -> None:
        """Start the animation from the first record (no-op on non-interactive backends)."""
        self.playing = True
        self.frame = 0
        self._show_frame()
        self.timer.start()

    def pause(self) -> None:
        self.playing = False
        self.timer.stop()

    def toggle_play(self) -> None:
        """The "play/pause" button."""
        if self.playing:
            self.pause()
        else:
            self.playing = True
            self.timer.start()

    def animation(self):
        """A matplotlib ``FuncAnimation`` over the records (what ``--gif`` saves)."""
        from matplotlib.animation import FuncAnimation

        def frame(k: int):
            self.frame = k
            self._show_frame()
            return self._animated

        return FuncAnimation(self.fig, frame, frames=self.run.tau.shape[0], blit=False,
                             repeat=False)


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the explorer's options to ``parser`` (what ``sa-clip explore`` takes)."""
    d = Settings()
    g = parser.add_argument_group("explorer options (the controls start at these values)")
    g.add_argument("--problem", default=d.problem,
                   help=f"2-parameter problem: {', '.join(PROBLEMS_2D)} (default {d.problem})")
    g.add_argument("--rule", default=d.rule,
                   help=f"clipping rule: {', '.join(RULE_CHOICES)} (default {d.rule})")
    g.add_argument("--lam", type=float, default=d.lam, help=f"threshold lambda ({d.lam})")
    g.add_argument("--eps", type=float, default=d.eps, help=f"epsilon of adaptive rules "
                                                            f"({d.eps})")
    g.add_argument("--a0", type=float, default=d.a0,
                   help=f"step size a(n) = a0 / (n + 1)^alpha: a0 (default {d.a0})")
    g.add_argument("--alpha", type=float, default=d.alpha, help=f"alpha (default {d.alpha})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"samples per SGD step M (default {d.batch_size})")
    g.add_argument("--clip-per", default=d.clip_per,
                   help="sample (clip each gradient, default) or batch (clip the batch mean)")
    g.add_argument("--chains", type=int, default=d.chains, help=f"SGD chains ({d.chains})")
    g.add_argument("--steps", type=int, default=d.steps, help=f"SGD steps ({d.steps})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    g.add_argument("--extent", type=float, default=d.extent,
                   help="half-width of the square drawn (default: tanh 3, logistic2d 5)")
    g.add_argument("--grid", type=int, default=d.grid, help=f"grid points per side ({d.grid})")
    g.add_argument("--horizon", type=float, default=d.horizon, help=f"T of D_T(s) "
                                                                    f"({d.horizon})")
    g.add_argument("--snapshot", metavar="PATH",
                   help="render once with no window and write a PNG to PATH")
    g.add_argument("--gif", metavar="PATH",
                   help="render the animation of the chains with no window and write a GIF "
                        "to PATH (for a lecture machine without Python)")
    g.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", metavar="WxH",
                   help=f"window / picture size in pixels at --dpi {DPI} "
                        f"(default {SIZE[0]}x{SIZE[1]}, a projector)")
    g.add_argument("--dpi", type=int, default=DPI,
                   help=f"dots per inch: text and lines scale with it, the layout does not; the "
                        f"picture is WxH * dpi/{DPI} pixels (default {DPI})")
    g.add_argument("--quick", action="store_true",
                   help="a coarser grid and fewer, shorter chains, for a slow machine: "
                        + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    return parser


_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def _interactive_backend() -> bool:
    """Whether pyplot's backend shows figures live (a GUI or ipympl), not as images."""
    name = matplotlib.get_backend().lower()
    return "inline" not in name and name.rsplit(".", 1)[-1] not in _NON_INTERACTIVE


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` named by parsed options (``ValueError`` for a bad one)."""
    names = {f.name for f in fields(Settings)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if getattr(args, "quick", False):          # --quick changes only what was left at default
        default = Settings()
        values.update({k: v for k, v in QUICK.items() if values.get(k) == getattr(default, k)})
    return Settings(**values).check()


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)``; ``ValueError`` naming ``--size`` otherwise."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"`--size` must be WIDTHxHEIGHT in pixels, e.g. 1024x768, got "
                         f"{text!r}.") from None
    if not (320 <= w <= 8192 and 240 <= h <= 8192):
        raise ValueError(f"`--size` must be between 320x240 and 8192x8192 pixels, got {text!r}.")
    return w, h


def figure_size(args: argparse.Namespace) -> tuple[tuple[float, float], int]:
    """``(figsize in inches, dpi)`` from ``--size`` and ``--dpi``, checked: the layout is
    that of ``--size`` at :data:`DPI`, the picture ``size * dpi / DPI`` pixels."""
    w, h = parse_size(getattr(args, "size", f"{SIZE[0]}x{SIZE[1]}"))
    dpi = getattr(args, "dpi", DPI)
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= MAX_DPI:
        raise ValueError(f"`--dpi` must be an integer in [20, {MAX_DPI}], got {dpi!r}.")
    pixels = w * h * (dpi / DPI) ** 2
    if pixels > MAX_PIXELS:
        raise ValueError(f"`--dpi` {dpi} with `--size` {w}x{h} makes a picture of "
                         f"{pixels / 1e6:.0f} million pixels; at most {MAX_PIXELS / 1e6:.0f} "
                         "million are accepted: lower --dpi or --size.")
    return (w / DPI, h / DPI), dpi


def display_problem() -> str | None:
    """Why no window can open here, or None. matplotlib falls back to Agg without a word
    when the backend asked for (``MPLBACKEND=TkAgg``) needs a display that is missing; this
    names the cause instead of the fallback."""
    backend = matplotlib.get_backend()
    asked = os.environ.get("MPLBACKEND", "")
    name = backend.lower()
    if "ipympl" in name or "widget" in name or "nbagg" in name:
        return None
    headless = (sys.platform.startswith("linux")
                and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")))
    if headless:
        return ("there is no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
                + (f", which the backend MPLBACKEND={asked!r} needs" if asked else ""))
    if not _interactive_backend():
        return (f"matplotlib's backend {backend!r} draws only images"
                + (f" (MPLBACKEND={asked!r})" if asked else "")
                + "; set MPLBACKEND to a GUI backend such as TkAgg or QtAgg")
    return None


WAYS_OUT = ("Ways out: (1) --snapshot PATH.png or --gif PATH.gif write the picture or the "
            "animation with no window; (2) in Jupyter: pip install 'sa-clip[explore]' (ipympl), "
            "then %matplotlib widget and sa_clip.viz.explore.Explorer(); (3) over SSH: connect "
            "with ssh -X (X forwarding) so that DISPLAY is set.")


def _snapshot(settings: Settings, args: argparse.Namespace) -> int:
    figsize, dpi = figure_size(args)
    path = args.snapshot or args.gif
    suffix = ".png" if args.snapshot else ".gif"
    if not str(path).lower().endswith(suffix):
        opt = "--snapshot" if args.snapshot else "--gif"
        raise ValueError(f"`{opt}` must name a {suffix} file, got {path!r}.")
    # a Figure outside pyplot: no window on any backend, nothing left open
    ex = Explorer(settings, animate=False, figure=Figure(figsize=figsize))
    ex.status.set_text("")
    if args.snapshot:
        with atomic_path(args.snapshot) as tmp:   # a full disk leaves the old file whole
            ex.fig.savefig(tmp, dpi=dpi, format="png")
    if args.gif:
        save_animation(ex.animation(), args.gif, fps=8, dpi=dpi)
    written = " and ".join(p for p in (args.snapshot, args.gif) if p)
    print(f"wrote {written} (update took {ex.last_update_s:.2f} s)")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the explorer (``sa-clip explore``). With ``--snapshot PATH`` / ``--gif PATH``
    render with no window and write a PNG / GIF (atomically: an existing file is replaced
    only by a complete one); otherwise open the window (needs a display and an interactive
    backend). Raises ``ValueError`` for a bad option (the CLI turns it into one line and exit
    code 2), naming the missing display and the ways out when no window can open."""
    settings = settings_from_args(args)
    figsize, _ = figure_size(args)
    if getattr(args, "snapshot", None) or getattr(args, "gif", None):
        return _snapshot(settings, args)
    why = display_problem()
    if why is not None:
        raise ValueError(f"the explorer window cannot open: {why}. {WAYS_OUT}")
    ex = Explorer(settings, figure=plt.figure(figsize=figsize))
    plt.show()
    return 0 if ex is not None else 1


def run(argv: Sequence[str] | None = None) -> int:
    """``python -m sa_clip.viz.explore [options]``: parse, run, one-line errors (exit 2)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog=PROG, description="Interactive explorer of clipped SGD on a 2-parameter problem."))
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (ValueError, TypeError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


__all__ = ["Explorer", "Settings", "Debouncer", "FieldState", "ChainState", "compute_field",
           "compute_chains", "equilibrium_starts", "grid_note", "tracking_note", "add_arguments",
           "main", "run", "settings_from_args", "figure_size", "display_problem", "parse_size"]

if __name__ == "__main__":
    sys.exit(run())
