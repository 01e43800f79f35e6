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

From the shell::

    python -m sa_clip.viz.explore --problem tanh --rule adaptive --lam 0.5
    python -m sa_clip.viz.explore --lam 0.5 --snapshot explore.png     # no window, a PNG
"""

from __future__ import annotations

import argparse
import math
import sys
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
from ._style import KIND_STYLE, ODE_COLOR, SGD_COLOR
from .phase import plot_phase_portrait

#: ``sa-clip explore --help`` (plain text: no reST markup in the terminal)
HELP = "interactive explorer of a 2-parameter problem (sliders, animated chains, D_T)"
DESCRIPTION = ("An interactive window on a 2-parameter problem: streamlines of -H, nullclines, "
               "equilibria by stability, animated SGD chains against the ODE from their start, "
               "and D_T(s); sliders for lam, eps, a0, alpha and the batch size, radio buttons "
               "for the rule and per-sample/per-batch clipping. --snapshot PATH writes one "
               "frame as a PNG with no window.")

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
#: batches of the common-random-numbers estimate of H_M (per-batch clipping)
BATCH_SAMPLES = 32
#: records kept per run, the frames of the animation
FRAMES = 50
#: root-finding iterations per start (a start that wanders off a kink is given up early)
EQ_MAX_ITER = 40
DEFAULT_EXTENT = {"tanh": 3.0, "logistic2d": 5.0}
FIGSIZE = (13.5, 8.0)


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
        for name, low in (("batch_size", 1), ("chains", 1), ("steps", 10), ("grid", 5),
                          ("starts", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"`--{name.replace('_', '-')}` must be an integer >= {low}, "
                                 f"got {v!r}.")
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


class Explorer:
    """The interactive figure. Build it with keyword options (those of :class:`Settings`);
    it computes and draws at once. ``fig`` is the figure, ``sliders``/``radios``/``buttons``
    the widgets (keys: ``lam eps a0 alpha batch_size``, ``rule clip_per``,
    ``new_chains play``), ``equilibria`` the equilibria drawn, ``last_update_s`` the seconds
    the last recomputation took.

    Driving it from code (what the widgets do)::

        ex = Explorer(problem="tanh", lam=1.0, chains=8, steps=100, grid=15)
        ex.sliders["lam"].set_val(0.5)          # recomputes H, equilibria, chains, ODE, D_T
        ex.radios["rule"].set_active(1)         # adaptive
        ex.fig.savefig("explore.png")
    """

    def __init__(self, settings: Settings | None = None, *, animate: bool = True,
                 figure: Figure | None = None, **options: Any):
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
        self._field_key: tuple | None = None
        self._build_figure(figure)
        # blitting (matplotlib's generic API) where the canvas supports it and a window shows
        # it: an animation frame then redraws the chains only, not the streamlines
        self.blit = bool(animate and _interactive_backend()
                         and getattr(self.fig.canvas, "supports_blit", False))
        self._background = None
        self.fig.canvas.mpl_connect("draw_event", self._on_draw)
        self.timer = self.fig.canvas.new_timer(interval=80)
        self.timer.add_callback(self._advance)
        self.recompute()
        if animate:
            self.play()

    # ------------------------------------------------------------------ layout and widgets
    def _build_figure(self, figure: Figure | None) -> None:
        s = self.settings
        self.fig = figure if figure is not None else plt.figure(figsize=FIGSIZE)
        self.ax = self.fig.add_axes((0.09, 0.33, 0.36, 0.60))
        self.cax = self.fig.add_axes((0.475, 0.33, 0.01, 0.60))
        self.ax_dt = self.fig.add_axes((0.66, 0.60, 0.31, 0.33))
        self.status = self.fig.text(0.995, 0.005, "", ha="right", va="bottom", fontsize=8,
                                    color="0.35")
        self.sliders: dict[str, Slider] = {}
        specs = [("lam", r"$\lambda$ (clip)", False), ("eps", r"$\epsilon$ (adaptive)", False),
                 ("a0", r"$a_0$ in $a(n)=a_0/(n+1)^\alpha$", False),
                 ("alpha", r"$\alpha$", False), ("batch_size", "batch size M", True)]
        for k, (name, label, integer) in enumerate(specs):
            lo, hi = SLIDER_RANGES[name]
            v = getattr(s, name)
            lo, hi = min(lo, v), max(hi, v)
            ax = self.fig.add_axes((0.20, 0.215 - 0.045 * k, 0.33, 0.03))
            sl = Slider(ax, label, lo, hi, valinit=v, valstep=1 if integer else None,
                        valfmt="%d" if integer else "%.3g")
            sl.label.set_fontsize(10)
            sl.on_changed(lambda _v, name=name: self._on_control(name))
            self.sliders[name] = sl
        self.radios: dict[str, RadioButtons] = {}
        self.fig.text(0.66, 0.50, "clipping rule", fontsize=10, weight="bold")
        ax = self.fig.add_axes((0.66, 0.22, 0.15, 0.27))
        self.radios["rule"] = RadioButtons(ax, [RULE_LABELS[r] for r in RULE_CHOICES],
                                           active=RULE_CHOICES.index(s.rule))
        self.fig.text(0.83, 0.50, "clip", fontsize=10, weight="bold")
        ax = self.fig.add_axes((0.83, 0.38, 0.14, 0.11))
        self.radios["clip_per"] = RadioButtons(ax, [CLIP_PER_LABELS[c] for c in CLIP_PER_CHOICES],
                                               active=CLIP_PER_CHOICES.index(s.clip_per))
        for name, radio in self.radios.items():
            radio.on_clicked(lambda _label, name=name: self._on_control(name))
        self.buttons: dict[str, Button] = {
            "new_chains": Button(self.fig.add_axes((0.83, 0.29, 0.14, 0.06)), "new chains"),
            "play": Button(self.fig.add_axes((0.83, 0.22, 0.14, 0.06)), "play / pause"),
        }
        self.buttons["new_chains"].on_clicked(lambda _e: self.new_chains())
        self.buttons["play"].on_clicked(lambda _e: self.toggle_play())
        self.fig.text(0.66, 0.17, "click on the plane: start the chains and the ODE there",
                      fontsize=9, color="0.3")
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
        self.recompute()

    def _on_click(self, event) -> None:
        if event.inaxes is not self.ax or event.xdata is None or event.button != 1:
            return
        toolbar = getattr(self.fig.canvas, "toolbar", None)
        if toolbar is not None and getattr(toolbar, "mode", ""):
            return                                  # zooming or panning, not a new start
        self.theta0 = torch.tensor([event.xdata, event.ydata], dtype=self.problem.dtype)
        self.recompute(field=False)

    # ------------------------------------------------------------------ computing
    def _field_part(self) -> None:
        """``H`` (or ``H_M``) on the grid and its equilibria; skipped when unchanged."""
        s = self.settings
        batch = s.clip_per == "batch" and s.batch_size > 1 and s.rule != "none"
        key = (s.rule, s.lam if s.rule != "none" else None, s.eps if s.rule != "none" else None,
               batch, s.batch_size if batch else None, s.extent, s.grid)
        if key == self._field_key:
            return
        p = self.problem
        self.rule = build_rule(s)
        self.meanfield = MeanField(p, self.rule)
        self.field = (FixedBatchField(self.meanfield, s.batch_size, samples=BATCH_SAMPLES,
                                      seed=s.seed) if batch
                      else self.meanfield)
        self.batch_field = batch
        plane = Plane.coordinates(p)
        a = torch.linspace(-s.extent, s.extent, s.grid, dtype=p.dtype)
        flat = plane.points(a, a).reshape(-1, p.P)
        minus_h = -self.field(flat)                        # ONE batched call on the grid
        flow = minus_h.reshape(s.grid, s.grid, 2)
        self.pf = PlaneField(plane, a, a, flow, flow.norm(dim=-1),
                             p.loss(flat).reshape(s.grid, s.grid),
                             torch.zeros(s.grid, s.grid, dtype=p.dtype))
        self.eq_starts = equilibrium_starts(self.pf)
        if batch:
            eq = _batch_equilibria(self.field, self.eq_starts) if len(self.eq_starts) else []
        else:
            eq = find_equilibria(self.meanfield, starts=self.eq_starts,
                                 max_iter=EQ_MAX_ITER) if len(
                self.eq_starts) else []
        self.equilibria = [e for e in eq if _in_box(e.theta, s.extent)]
        self._field_key = key

    def _chain_part(self) -> None:
        s = self.settings
        self.schedule = PowerLaw(s.a0, s.alpha)
        self.run = simulate_sgd(self.problem, self.rule, self.schedule, steps=s.steps,
                                chains=s.chains, batch_size=s.batch_size, clip_per=s.clip_per,
                                seed=s.seed, theta0=self.theta0, field=self.meanfield,
                                record_every=max(1, s.steps // FRAMES))
        tau = self.run.tau
        self.ode = solve_ode(self.field, self.theta0, tau, rtol=1e-4, atol=1e-6)
        tau_last = float(tau[-1])
        self.horizon = s.horizon if tau_last >= 1.5 * s.horizon else tau_last / 3
        starts = torch.linspace(0.0, tau_last - self.horizon, s.starts, dtype=torch.float64)
        self.tracking = tracking_distance(self.run, self.field, horizon=self.horizon,
                                          starts=starts, n_grid=20, rtol=1e-4, atol=1e-6)

    def recompute(self, *, field: bool = True) -> None:
        """Recompute what the settings changed (the field part only when the rule, ``lam``,
        ``eps`` or the per-batch field changed), then redraw. Records ``last_update_s``."""
        t0 = time.perf_counter()
        if field or not hasattr(self, "pf"):
            self._field_part()
        self._chain_part()
        self.frame = self.run.tau.shape[0] - 1 if not self.playing else 0
        self._draw()
        self.last_update_s = time.perf_counter() - t0
        self.status.set_text(f"updated in {self.last_update_s:.2f} s")
        self.fig.canvas.draw_idle()

    def new_chains(self) -> None:
        """Fresh SGD noise (the next seed); the field and equilibria are kept."""
        self.settings = replace(self.settings, seed=self.settings.seed + 1)
        self.recompute(field=False)

    # ------------------------------------------------------------------ drawing
    def _draw(self) -> None:
        s, ax = self.settings, self.ax
        ax.cla()
        what = "H_M" if self.batch_field else "H"
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
            (art,) = ax.plot([float(e.theta[0])], [float(e.theta[1])], linestyle="none", ms=11,
                             mec="k", zorder=6, label=None if label in seen else label, **style)
            seen.add(label)
            self.eq_artists.append(art)
        c = self.run.theta.double().numpy()
        o = self.ode.theta.double().numpy()
        self.trails = LineCollection([], colors=SGD_COLOR, linewidths=0.8, alpha=0.45,
                                     zorder=3)
        ax.add_collection(self.trails)
        (self.heads,) = ax.plot(c[:, 0, 0], c[:, 0, 1], "o", color=SGD_COLOR, ms=4.5, mec="white",
                                mew=0.5, zorder=4, label=f"SGD chains ({s.chains})")
        (self.ode_line,) = ax.plot(o[:1, 0], o[:1, 1], color=ODE_COLOR, lw=2.4, zorder=5,
                                   label="ODE from the chains' start")
        (self.ode_head,) = ax.plot(o[:1, 0], o[:1, 1], "o", color=ODE_COLOR, ms=8, mec="k",
                                   zorder=6)
        ax.plot(o[0, 0], o[0, 1], "*", color="k", ms=13, mfc="yellow", zorder=7, label="start")
        ax.set_xlim(-s.extent, s.extent)
        ax.set_ylim(-s.extent, s.extent)
        ax.set_aspect("equal", adjustable="box")
        rule = RULE_LABELS[s.rule] + ("" if s.rule == "none" else f", λ = {s.lam:.3g}")
        if s.rule in ("adaptive", "layerwise"):
            rule += f", ε = {s.eps:.3g}"
        per = f", {CLIP_PER_LABELS[s.clip_per]} clipping, M = {s.batch_size}"
        ax.set_title(f"{self.problem.name}: streamlines of −{what}, {rule}{per}", fontsize=11)
        # the portrait's own entries (streamlines, loss contours, nullclines) first, then ours
        prev = ax.get_legend()
        handles = list(prev.legend_handles) if prev is not None else []
        ours, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + ours, loc="upper left", fontsize=7, framealpha=0.9)
        self._draw_tracking()
        self._animated = [self.trails, self.heads, self.ode_line, self.ode_head, self.dt_cursor]
        for art in self._animated:
            art.set_animated(self.blit)
        self._show_frame()

    def _draw_tracking(self) -> None:
        ax, r = self.ax_dt, self.tracking
        ax.cla()
        sv = r.start.double().numpy()
        d = r.distance.double().numpy()
        ok = np.isfinite(d).any(0)
        if ok.any():
            lo, med, hi = (np.nanquantile(d[:, ok], q, axis=0) for q in (0.1, 0.5, 0.9))
            ax.fill_between(sv[ok], lo, hi, color=SGD_COLOR, alpha=0.2, lw=0,
                            label="10–90% of chains")
            ax.plot(sv[ok], med, "o-", color=SGD_COLOR, ms=4, lw=1.8, label="median")
            ax.set_yscale("log")
        self.dt_cursor = ax.axvline(0.0, color=ODE_COLOR, lw=1, alpha=0.7)
        ax.set_xlabel("start time s (ODE time τ)")
        ax.set_ylabel(rf"$D_T(s)$, T = {self.horizon:.3g}")
        a2 = "" if self.schedule.satisfies_a2 else "  [(A2) fails: α ≤ 1/2]"
        ax.set_title(r"tracking $D_T(s)=\sup_{h\leq T}\|\bar\theta(s+h)-\Phi_h(\bar\theta(s))\|$"
                     + a2, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="upper right")

    def _show_frame(self) -> None:
        k = self.frame
        c = self.run.theta.double().numpy()
        o = self.ode.theta.double().numpy()
        self.trails.set_segments([c[j, :k + 1] for j in range(c.shape[0])])
        self.heads.set_data(c[:, k, 0], c[:, k, 1])
        self.ode_line.set_data(o[:k + 1, 0], o[:k + 1, 1])
        self.ode_head.set_data(o[k:k + 1, 0], o[k:k + 1, 1])
        self.dt_cursor.set_xdata([float(self.run.tau[k])] * 2)

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
    g.add_argument("--dpi", type=int, default=110, help="resolution of the snapshot (110)")
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


def main(args: argparse.Namespace) -> int:
    """Run the explorer (``sa-clip explore``). With ``--snapshot PATH`` render once with no
    window and write a PNG; otherwise open the window (needs an interactive backend).
    Raises ``ValueError`` for a bad option (the CLI turns it into one line and exit code 2)."""
    settings = settings_from_args(args)
    if args.snapshot:
        if not str(args.snapshot).lower().endswith(".png"):
            raise ValueError(f"`--snapshot` must name a .png file, got {args.snapshot!r}.")
        if args.dpi < 20:
            raise ValueError(f"`--dpi` must be an integer >= 20, got {args.dpi!r}.")
        # a Figure outside pyplot: no window on any backend, nothing left open
        ex = Explorer(settings, animate=False, figure=Figure(figsize=FIGSIZE))
        ex.status.set_text("")
        ex.fig.savefig(args.snapshot, dpi=args.dpi)
        print(f"wrote {args.snapshot} (update took {ex.last_update_s:.2f} s)")
        return 0
    if not _interactive_backend():
        raise ValueError(f"matplotlib backend {matplotlib.get_backend()!r} cannot open a "
                         "window: set MPLBACKEND (e.g. TkAgg, QtAgg) or use --snapshot PATH.")
    ex = Explorer(settings)
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


__all__ = ["Explorer", "Settings", "equilibrium_starts", "add_arguments",
           "main", "run", "settings_from_args"]

if __name__ == "__main__":
    sys.exit(run())
