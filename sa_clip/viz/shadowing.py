r"""The shadowing picture: how the interpolated SGD path is shadowed by restarted ODE flows.

Benaim's theorem does not say that the chains follow the ODE started at ``theta0`` forever. It
says that the interpolated path ``theta_bar`` stays close, over every window ``[s, s + T]``, to
the flow restarted at ``theta_bar(s)``, and closer as ``s`` grows:

.. math:: D_T(s) = \sup_{0 \le h \le T}
          \lVert \bar\theta(s + h) - \Phi_h(\bar\theta(s)) \rVert \to 0 .

:func:`plot_shadowing` draws exactly that, from one :func:`sa_clip.tracking_distance` call (its
gaps and kept flow segments; no further solve).
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .._validate import check_band, check_index
from ..plane import Plane, _param_name
from ..problem import Problem
from ..tracking import TrackingResult, select_chains
from ..trajectory import Trajectory
from ._style import (
    ODE_COLOR,
    SGD_COLOR,
    figure_function,
    legend,
    nan_quantiles,
    panel_grid,
    subplots,
    to_numpy,
)
from .dynamics import TAU_LABEL


def step_size_at(trajectory: Trajectory, s) -> np.ndarray:
    r"""The step size ``a(n(s))`` in force at ODE times ``s``: ``n(s)`` is the step with
    ``tau_n <= s < tau_{n+1}``.

    Taken from the schedule stored in the trajectory (``trajectory.meta["schedule"]``, as
    :func:`~sa_clip.simulate_sgd` records it), so it is exact whatever ``record_every``. A
    trajectory without a rebuildable schedule (none stored, or a ``FunctionSchedule``) falls
    back to the records: ``(tau_{r+1} - tau_r) / (n_{r+1} - n_r)``, the mean step over the
    record interval that contains ``s`` (exact only when every step is recorded).

    >>> import sa_clip as sc
    >>> run = sc.simulate_sgd(sc.problems.logistic2d(), sc.NoClip(), "constant:0.1", steps=5,
    ...                       chains=1, seed=0)
    >>> step_size_at(run, [0.0, 0.25]).round(6).tolist()
    [0.1, 0.1]
    """
    tau, steps = to_numpy(trajectory.tau), to_numpy(trajectory.steps)
    spec = trajectory.meta.get("schedule") if isinstance(trajectory.meta, dict) else None
    if isinstance(spec, dict) and spec.get("schedule") not in (None, "function") \
            and len(steps) and int(steps[-1]) >= 1:
        from ..schedules import schedule_from_dict
        sched = schedule_from_dict(spec)
        last = int(steps[-1])
        grid = sched.tau(last).numpy()                      # tau_0 .. tau_last
        n = np.clip(np.searchsorted(grid, np.asarray(to_numpy(s), dtype=np.float64),
                                    side="right") - 1, 0, last - 1)
        return sched.rates(last).numpy()[n]
    if len(tau) < 2:
        raise ValueError("`trajectory` needs at least 2 records to read the step size off.")
    a = np.diff(tau) / np.diff(steps)
    j = np.clip(np.searchsorted(tau, to_numpy(s), side="right") - 1, 0, len(a) - 1)
    return a[j]


def _default_plane(trajectory: Trajectory, problem: Problem | None) -> Plane:
    """The coordinate plane for P = 2, otherwise the PCA plane of all (finite) records."""
    theta = trajectory.theta
    p = theta.shape[-1]
    if p == 2:
        eye = torch.eye(2, dtype=theta.dtype, device=theta.device)
        names = tuple(_param_name(problem, k) if problem is not None else f"θ[{k}]"
                      for k in range(2))
        return Plane(torch.zeros(2, dtype=theta.dtype, device=theta.device), eye[0], eye[1],
                     names)
    return Plane.pca(theta.reshape(-1, p))


def _trend(s: np.ndarray, med: np.ndarray) -> str:
    """What the median ``D_T`` did from the first to the last start, in words."""
    ok = np.flatnonzero(np.isfinite(med) & (med > 0))
    if len(ok) < 2:
        return "too few finite D_T to say how it changes"
    first, last = ok[0], ok[-1]
    ratio = med[first] / med[last]
    where = f"from s = {s[first]:.3g} to s = {s[last]:.3g}"
    if ratio >= 1.5:
        return f"the median $D_T$ falls {ratio:.1f}× {where}"
    if ratio <= 1 / 1.5:
        return f"the median $D_T$ grows {1 / ratio:.1f}× {where}"
    return f"the median $D_T$ stays within a factor 1.5 {where}"


def _fit_line(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` against ``x`` (NaN if fewer than 2 distinct x)."""
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def _zoom_inset(ax, path, win_xy, seg_xy, ks, cols, title) -> None:
    """An inset that zooms on the last restart(s) (their segments are too short to see at the
    scale of the whole path), in the corner of ``ax`` that the lines leave emptiest."""
    pts = np.concatenate([np.concatenate([seg_xy[k], win_xy[k]]) for k in ks])
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) < 2:
        return
    lo, hi = pts.min(0), pts.max(0)
    pad = 0.12 * np.maximum(hi - lo, 1e-12)
    ax.get_xlim(), ax.get_ylim()                    # settle the autoscaled limits
    drawn = np.concatenate([path, win_xy.reshape(-1, 2), seg_xy.reshape(-1, 2)])
    xy = ax.transAxes.inverted().transform(ax.transData.transform(
        drawn[np.isfinite(drawn).all(1)]))
    size = 0.42

    def crowd(c: tuple[float, float]) -> int:
        return int(((xy >= np.array(c) - 0.03) & (xy <= np.array(c) + size + 0.03)).all(1).sum())

    corner = min([(0.56, 0.04), (0.04, 0.04), (0.56, 0.54), (0.04, 0.54)], key=crowd)
    ins = ax.inset_axes([*corner, size, size])
    for k, col in zip(ks, cols):
        ins.plot(win_xy[k, :, 0], win_xy[k, :, 1], color=col, lw=0.9)
        ins.plot(seg_xy[k, :, 0], seg_xy[k, :, 1], color=col, lw=3.0, alpha=0.75,
                 solid_capstyle="round")
        ins.plot(*win_xy[k, 0], "o", color=col, mec="k", mew=0.6, ms=6)
    ins.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ins.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ins.tick_params(labelsize=6)
    ins.xaxis.set_major_locator(MaxNLocator(3))     # long tick labels of a deep zoom
    ins.yaxis.set_major_locator(MaxNLocator(4))
    factor = (np.diff(ax.get_xlim())[0] / np.diff(ins.get_xlim())[0])
    ins.set_title(f"{title} (×{factor:.0f})", fontsize="x-small", pad=2)
    ax.indicate_inset_zoom(ins, edgecolor="0.4")


@figure_function
def plot_shadowing(trajectory: Trajectory, result: TrackingResult, *, chain: int = 0,
                   plane: Plane | None = None, problem: Problem | None = None,
                   n_show: int = 6, band: tuple[float, float] = (0.1, 0.9),
                   cmap: str = "plasma", zoom: bool = True, title: str | None = None,
                   context: str | None = None,
                   figsize: tuple[float, float] = (15.5, 4.8)):
    r"""The shadowing picture in three panels, all from one :func:`sa_clip.tracking_distance`.

    (a) One chain's interpolated path ``theta_bar(t)`` on a 2-D view (the parameter plane for
        2-parameter problems, otherwise the run's PCA plane, axes with their share of the
        variance), with the flow segments ``Phi_h(theta_bar(s_k))``, ``h in [0, T]``,
        restarted on the path at ``n_show`` start times ``s_k`` and coloured by ``s_k``: later
        segments hug the path more tightly.
    (b) The gap ``||theta_bar(s_k + h) - Phi_h(theta_bar(s_k))||`` against ``h``, the median
        over chains, one curve per shown ``s_k``; each curve's maximum is marked (the maximum
        of one chain's gap is its ``D_T(s_k)``).
    (c) ``D_T(s)`` against ``s`` on log axes: the median over chains and its quantile band,
        with the rate theory predicts as a reference line ``C sqrt(a(n(s)))``, ``C`` fitted by
        least squares in log space; the fitted log-log slopes of ``D_T`` and of the reference
        are printed in the panel.

    Why ``sqrt(a)``: over a window ``[s, s + T]`` that covers the steps ``n .. m``, the
    interpolated path differs from the restarted flow by (i) the accumulated martingale noise
    ``sum_{k=n}^{m} a(k) M(k+1)``, whose size is ``sqrt(sum a(k)^2) ~ sqrt(a(n) T)`` because
    ``sum a(k) = T`` and ``a`` barely changes within the window, and (ii) the discretisation
    error of the Euler-like recursion, ``~ a(n) T`` (times ``e^{LT}``, Gronwall). For small
    steps the noise term dominates, so ``D_T(s) ~ C sqrt(a(n(s)))`` (Kushner & Yin 2003,
    ch. 10; Benaim 1999, Prop. 4.1). For ``a(n) = a0 (n+1)^{-alpha}``, ``0 < alpha < 1``,
    ``tau ~ n^{1-alpha}`` and the reference falls like ``s^{-alpha / (2 (1 - alpha))}``; for
    harmonic steps like ``e^{-s/2}``; for constant steps it is flat (no tracking in the limit).
    ``a(n(s))`` comes from the schedule stored in the trajectory (:func:`step_size_at`).

    Parameters
    ----------
    trajectory : Trajectory
        The run ``result`` was computed from.
    result : TrackingResult
        From ``tracking_distance(trajectory, field, ..., keep_paths=[chain])`` (it must hold
        ``gap`` and the flow segments of ``chain``).
    chain : int
        The chain drawn in panel (a).
    plane : Plane, optional
        The 2-D view of panel (a) (default: see above).
    problem : Problem, optional
        Names the axes of the parameter plane.
    n_show : int
        How many start times get a flow segment and a gap curve (evenly spread over all).
    zoom : bool
        Add an inset to (a) that zooms on the last restart.
    title, context : str, optional
        The figure title; by default it says what the median ``D_T`` did (computed from
        ``result``), after ``context`` (e.g. the problem and the schedule) if given.

    Returns
    -------
    matplotlib Figure

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d(); r = sc.NormClip(1.0)
    >>> run = sc.simulate_sgd(p, r, "power:1.0,0.6", steps=200, chains=4, seed=0)
    >>> res = sc.tracking_distance(run, sc.MeanField(p, r), horizon=1.0, keep_paths=1,
    ...                            starts=[0.5, 2.0, 4.0])
    >>> fig = plot_shadowing(run, res, problem=p)
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"`trajectory` must be a sa_clip.Trajectory, got "
                        f"{type(trajectory).__name__}.")
    if not isinstance(result, TrackingResult):
        raise TypeError(f"`result` must be a sa_clip.TrackingResult, got "
                        f"{type(result).__name__}.")
    if result.gap is None:
        raise ValueError("`result` has no `gap`: call sa_clip.tracking_distance(..., "
                         "keep_gap=True, keep_paths=[chain]).")
    _check_same_run(trajectory, result)
    if result.chains is not None and result.distance.shape[0] != trajectory.chains:
        trajectory = select_chains(trajectory, result.chains)    # tracking_distance(chains=)
    if result.distance.shape[0] != trajectory.chains:
        raise ValueError(f"`result` is for {result.distance.shape[0]} chains, `trajectory` has "
                         f"{trajectory.chains}: pass the run the result was computed from.")
    band = check_band(band)
    chain = check_index("chain", chain, trajectory.chains, what="a chain index")
    if isinstance(n_show, bool) or not isinstance(n_show, int) or n_show < 1:
        raise ValueError(f"`n_show` must be an integer >= 1, got {n_show!r}.")
    segs = result.path(chain)                                        # (S, G, P), may raise
    plane = plane if plane is not None else _default_plane(trajectory, problem)

    s = to_numpy(result.start)
    h = to_numpy(result.offsets)
    n_s = len(s)
    show = np.unique(np.round(np.linspace(0, n_s - 1, min(n_show, n_s))).astype(int))
    if s.min() > 0 and s.max() > 10 * s.min():      # starts spread over decades
        norm = LogNorm(vmin=s.min(), vmax=s.max())
    else:
        norm = Normalize(vmin=s.min(), vmax=s.max() if s.max() > s.min() else s.min() + 1)
    # without the palest end of the map, which vanishes on white
    colors = ListedColormap(plt.get_cmap(cmap)(np.linspace(0.0, 0.85, 256)))
    # two panels across at most in the talk style: 2 x 2, the fourth cell holds (a)'s legend
    two_rows = panel_grid(3)[0] > 1
    fig, axes = subplots(4 if two_rows else 3, figsize, width_ratios=(1.15, 1, 1))
    ax_a, ax_b, ax_c = axes[:3]
    legend_ax = axes[3] if two_rows else None

    # the three panels share the start times s_k, the offsets h and one colour per s_k
    _panel_path(fig, ax_a, trajectory, result, segs, plane, chain, s, h, show, norm, colors,
                zoom, legend_ax)
    n_ok = _panel_gap(ax_b, trajectory, result, h, s, show, norm, colors)
    med = _panel_rate(ax_c, trajectory, result, s, show, norm, colors, band, n_ok)
    claim = f"the SGD path against the ODE restarted on it: {_trend(s, med)}"
    text = title or (f"{context}\n{claim}" if context else f"Shadowing: {claim}")
    if two_rows:
        text = "\n".join(textwrap.fill(line, 70) for line in text.split("\n"))
    fig.suptitle(text, fontsize="large")
    return fig


def _check_same_run(trajectory: Trajectory, result: TrackingResult) -> None:
    """Refuse a result of another run (its id, or windows past the end of this run), and a
    result with no finite distance (every chain blew up) with a message that says so."""
    key = trajectory.run_key()
    if result.run_id is not None and key not in (result.run_id, result.tracked_id):
        # (the whole run, or the run restricted to the tracked chains: select_chains)
        raise ValueError("`result` was computed from another run than `trajectory` (its "
                         "run_id differs from trajectory.run_key()): pass the run the result "
                         "was computed from (the whole run also for a result of "
                         "tracking_distance(..., chains=...)).")
    end = float(result.start.max()) + float(result.horizon) if result.start.numel() else 0.0
    last = float(trajectory.tau[-1])
    if end > last * (1 + 1e-9) + 1e-12:
        raise ValueError(f"`result`'s windows reach ODE time {end:.6g}, past the end of "
                         f"`trajectory` ({last:.6g}): the result belongs to another run.")
    if not bool(torch.isfinite(result.distance).any()):
        blown = int((trajectory.blowup_step >= 0).sum())
        raise ValueError(f"`result` has no finite tracking distance to draw: {blown} of "
                         f"{trajectory.chains} chains blew up and every window of the others "
                         "(if any) reaches a blow-up or the solver failed; lower the step "
                         "sizes or use a clipping rule.")


def _panel_path(fig, ax_a, trajectory, result, segs, plane, chain, s, h, show, norm, colors,
                zoom, legend_ax=None) -> None:
    """Panel (a): one chain's path with the flow restarted on it at the shown ``s_k``; its
    legend under it, or in ``legend_ax``."""
    n_s = len(s)
    # (a) the chain's interpolated path and the restarted flow segments
    path = to_numpy(plane.project(trajectory.theta[chain]))          # (R, 2)
    tau = to_numpy(trajectory.tau)
    ax_a.plot(path[:, 0], path[:, 1], color="0.6", lw=0.8, alpha=0.8, zorder=1, gid="path")
    seg_xy = to_numpy(plane.project(segs))                           # (S, G, 2)
    # the path over each window [s_k, s_k + T], where it is compared with the segment
    win_xy = to_numpy(plane.project(trajectory.interpolate(
        (result.start[:, None] + result.offsets[None, :]).clamp(max=float(tau[-1])).reshape(-1),
        chains=[chain])[0])).reshape(n_s, len(h), 2)
    starts_xy = win_xy[:, 0]
    for k in show:
        col = colors(norm(s[k]))
        ax_a.plot(win_xy[k, :, 0], win_xy[k, :, 1], color=col, lw=0.9, zorder=2, gid="window")
        ax_a.plot(seg_xy[k, :, 0], seg_xy[k, :, 1], color=col, lw=3.0, alpha=0.75, zorder=3,
                  solid_capstyle="round", gid="segment")
        ax_a.plot(*starts_xy[k], "o", color=col, mec="k", mew=0.6, ms=6, zorder=4)
    if zoom and len(show) >= 2:
        _zoom_inset(ax_a, path, win_xy, seg_xy, show[-1:], [colors(norm(s[show[-1]]))],
                    f"zoom: the last restart, s = {s[show[-1]]:.3g}")
    ax_a.set_xlabel(plane.label(0))
    ax_a.set_ylabel(plane.label(1))
    ax_a.set_title(f"(a) chain {chain}: SGD path and the ODE restarted on it", fontsize="medium")
    handles = [Line2D([], [], color="0.6", lw=0.8, label=r"SGD path $\bar\theta(t)$"),
               Line2D([], [], color=colors(0.55), lw=0.9,
                      label=r"the same path on $[s_k, s_k+T]$"),
               Line2D([], [], color=colors(0.55), lw=3.0, alpha=0.75,
                      label=rf"ODE from $\bar\theta(s_k)$ for $h\leq T$ = {result.horizon:g}"),
               Line2D([], [], ls="none", marker="o", color=colors(0.55), mec="k",
                      label=r"restart point $\bar\theta(s_k)$")]
    if legend_ax is not None:
        legend_ax.set_axis_off()
        legend(legend_ax, handles=handles, loc="center")
    else:
        legend(ax_a, handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.colorbar(ScalarMappable(norm=norm, cmap=colors), ax=ax_a,
                 label=f"start time $s_k$ ({TAU_LABEL})", pad=0.01)


def _panel_gap(ax_b, trajectory, result, h, s, show, norm, colors) -> int:
    """Panel (b): the median gap against ``h`` per shown ``s_k``; returns the number of chains
    without a blow-up."""
    # (b) the gap against h, median over chains
    med_gap = nan_quantiles(to_numpy(result.gap), (0.5,))[0]        # (S, G), like (c)
    n_ok = int(np.isfinite(to_numpy(result.distance)).all(1).sum())
    pos = h > 0
    for k in show:
        col = colors(norm(s[k]))
        g = med_gap[k]
        ax_b.plot(h[pos], g[pos], color=col, lw=1.8, gid="gap")
        if np.isfinite(g).any():
            m = int(np.nanargmax(g))
            ax_b.plot(h[m], g[m], "o", color=col, mec="k", mew=0.6, ms=5)
    ax_b.set_yscale("log")
    ax_b.set_xlabel(r"time since the restart $h$")
    ax_b.set_ylabel(r"gap $\|\bar\theta(s_k+h)-\Phi_h(\bar\theta(s_k))\|$")
    ax_b.set_title(f"(b) gap, median over {trajectory.chains} chains", fontsize="medium")
    legend(ax_b, handles=[Line2D([], [], color="0.4", lw=1.8,
                                 label="one curve per start time $s_k$ (colour)"),
                          Line2D([], [], ls="none", marker="o", color="0.4", mec="k",
                                 label="maximum over $h$")], loc="lower right")
    ax_b.grid(True, which="both", alpha=0.25)
    return n_ok


def _panel_rate(ax_c, trajectory, result, s, show, norm, colors, band, n_ok):
    """Panel (c): ``D_T(s)`` on log axes with the fitted ``C sqrt(a(n(s)))``; returns the
    median ``D_T`` per start."""
    # (c) D_T(s) on log axes with the sqrt(a(n(s))) reference
    lo, med, hi = nan_quantiles(to_numpy(result.distance), (band[0], 0.5, band[1]))
    ok = (s > 0) & np.isfinite(med) & (med > 0)
    ax_c.fill_between(s[ok], lo[ok], hi[ok], color=SGD_COLOR, alpha=0.2, lw=0,
                      label=f"{band[0]:.0%}–{band[1]:.0%} of chains")
    ax_c.plot(s[ok], med[ok], "-", color=SGD_COLOR, lw=1.6, zorder=3, gid="median",
              label=rf"median $D_T(s)$ over chains, T = {result.horizon:g}")
    for k in show:
        if ok[k]:
            ax_c.plot(s[k], med[k], "o", color=colors(norm(s[k])), mec="k", mew=0.6, ms=6,
                      zorder=4)
    text = "no start time s > 0 with a finite D_T"
    if ok.sum() >= 2:
        root_a = np.sqrt(step_size_at(trajectory, s[ok]))
        const = float(np.exp(np.mean(np.log(med[ok]) - np.log(root_a))))
        ax_c.plot(s[ok], const * root_a, "--", color=ODE_COLOR, lw=1.8, zorder=2, gid="reference",
                  label=rf"theory: $C\sqrt{{a(n(s))}}$, C = {const:.3g} fitted")
        slope = _fit_line(np.log(s[ok]), np.log(med[ok]))
        ref = _fit_line(np.log(s[ok]), np.log(root_a))
        text = (f"fitted log-log slope of the median: {slope:.2f}\n"
                rf"slope of $\sqrt{{a(n(s))}}$: {ref:.2f}")
    ax_c.text(0.03, 0.04, text, transform=ax_c.transAxes, fontsize="small", va="bottom",
              bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
    ax_c.set_xscale("log")
    ax_c.set_yscale("log")
    # minor tick labels of a log axis spanning one or two decades collide: majors only, plain
    ax_c.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_c.xaxis.set_minor_formatter(NullFormatter())
    ax_c.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_c.set_xlabel(f"start time s ({TAU_LABEL}, log)")
    ax_c.set_ylabel(r"$D_T(s)=\sup_{h\leq T}$ gap")
    ax_c.set_title(f"(c) tracking distance, {n_ok} chains without blow-up",
                   fontsize="medium")
    legend(ax_c, loc="upper right")
    ax_c.grid(True, which="both", alpha=0.25)
    return med


__all__ = ["plot_shadowing", "step_size_at"]
