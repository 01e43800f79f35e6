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

The code is split by responsibility: the settings and options live in
``_explore_options.py``, the computation (run in the worker thread) in
``_explore_compute.py``, the display check and the pictures written with no window
in ``_explore_io.py``; this module keeps the window (:class:`Explorer`,
:class:`Debouncer`) and the entry points, and every name of those modules is importable from
here as before.
"""

from __future__ import annotations

import argparse
import queue
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.widgets import Button, RadioButtons, Slider

from ._explore_compute import (  # noqa: F401  (re-exported: importable from here as before)
    BATCH_SAMPLES,
    EQ_MAX_ITER,
    FRAMES,
    GRID_NOTE_CELLS,
    ODE_POINTS,
    ChainState,
    FieldState,
    _batch_equilibria,
    _field_key,
    _in_box,
    build_problem,
    build_rule,
    compute_chains,
    compute_field,
    equilibrium_starts,
    grid_note,
    tracking_note,
)
from ._explore_io import (  # noqa: F401
    _NON_INTERACTIVE,
    WAYS_OUT,
    _interactive_backend,
    check_picture_path,
    display_problem,
    write_pictures,
)
from ._explore_options import (  # noqa: F401
    CLIP_PER_CHOICES,
    CLIP_PER_LABELS,
    DATA_SIZE,
    DEFAULT_EXTENT,
    DESCRIPTION,
    DPI,
    FIGSIZE,
    HELP,
    MAX_DPI,
    MAX_EXTENT,
    MAX_GRID,
    MAX_PIXELS,
    PROBLEMS_2D,
    PROG,
    QUICK,
    RULE_CHOICES,
    RULE_LABELS,
    SIZE,
    SLIDER_RANGES,
    Settings,
    add_arguments,
    figure_size,
    parse_size,
    settings_from_args,
)
from ._style import KIND_STYLE, ODE_COLOR, SGD_COLOR
from .phase import plot_phase_portrait

#: seconds a control must rest before the explorer recomputes
DEBOUNCE_S = 0.3


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
def _snapshot(settings: Settings, args: argparse.Namespace) -> int:
    figsize, dpi = figure_size(args)
    check_picture_path(args)
    # a Figure outside pyplot: no window on any backend, nothing left open
    ex = Explorer(settings, animate=False, figure=Figure(figsize=figsize))
    ex.status.set_text("")
    written = write_pictures(ex, args, dpi)
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
