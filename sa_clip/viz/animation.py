"""A cloud of SGD chains flowing over the phase portrait of ``d theta/d tau = -H(theta)``.

:func:`animate_chains` returns a :class:`matplotlib.animation.FuncAnimation`; saving it (GIF
via pillow, MP4 via ffmpeg) is the caller's job, e.g. :func:`sa_clip.cli.save_animation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation

from ..ode import OdeSolution
from ..plane import PlaneField
from ..trajectory import Trajectory
from ._style import ODE_COLOR, SGD_COLOR, figsize_for, figure_function, legend, to_numpy
from .dynamics import TAU_LABEL
from .phase import plot_phase_portrait


@figure_function
def animate_chains(pf: PlaneField, trajectory: Trajectory, *, ode: OdeSolution | None = None,
                   equilibria: Sequence | None = None, frames: int = 60, interval: int = 80,
                   tail: int = 6, figsize: tuple[float, float] = (5.6, 5.6),
                   title: str | None = None) -> FuncAnimation:
    """Animate the chains of ``trajectory`` (projected onto ``pf.plane``) over the portrait.

    Each frame shows every chain's position at one record (dots) with a short fading tail of
    the previous ``tail`` frames, the ODE solution up to the same ``tau`` (if given) and the
    ODE time in a corner. At most ``frames`` frames, at records evenly spaced in ODE time.

    Parameters
    ----------
    pf : PlaneField from :func:`sa_clip.plane.field_on_plane` (the background).
    trajectory : Trajectory, ``theta (chains, records, P)``.
    ode : OdeSolution on the trajectory's times (``theta (T, P)``), optional.

    Returns
    -------
    matplotlib.animation.FuncAnimation (its figure is ``anim._fig``).

    Example
    -------
    >>> import sa_clip as sc
    >>> from sa_clip.plane import Plane, field_on_plane
    >>> p = sc.problems.tanh_regression(); r = sc.NormClip(1.0)
    >>> pf = field_on_plane(sc.MeanField(p, r), Plane.coordinates(p), (-3, 3), (-3, 3), n=9)
    >>> run = sc.simulate_sgd(p, r, "harmonic:0.5", steps=20, chains=8, seed=0)
    >>> anim = animate_chains(pf, run, frames=5)
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"`trajectory` must be a sa_clip.Trajectory, got "
                        f"{type(trajectory).__name__}.")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"`frames` must be an integer >= 1, got {frames!r}.")
    fig, ax = plt.subplots(figsize=figsize_for(figsize), layout="constrained")
    # a lighter background than the still portrait (no loss contours): GIFs stay small
    plot_phase_portrait(pf, ax, equilibria=equilibria, colorbar=False, density=0.8,
                        loss_levels=None, title=title or "SGD chains flowing along −H",
                        limits="grid")
    xy = to_numpy(pf.plane.project(trajectory.theta))              # (chains, records, 2)
    tau = to_numpy(trajectory.tau)
    # frames evenly spaced in ODE time (decreasing steps crowd the records at late tau)
    picks = np.unique(np.searchsorted(tau, np.linspace(tau[0], tau[-1], frames)).clip(
        0, trajectory.records - 1))
    ode_xy = None
    if ode is not None:
        th = ode.theta if ode.theta.dim() == 2 else ode.theta[:, 0]
        ode_xy, ode_t = to_numpy(pf.plane.project(th)), to_numpy(ode.t)
    trails = [ax.plot([], [], ".", color=SGD_COLOR, ms=3, alpha=a)[0]
              for a in np.linspace(0.08, 0.3, max(tail, 0))]
    cloud, = ax.plot([], [], "o", color=SGD_COLOR, ms=4, mec="white", mew=0.4,
                     label=f"{trajectory.chains} SGD chains", zorder=6)
    ode_line, = ax.plot([], [], color=ODE_COLOR, lw=2.0, label="ODE solution", zorder=7)
    stamp = ax.text(0.02, 0.97, "", transform=ax.transAxes, va="top", fontsize="medium",
                    bbox=dict(boxstyle="round", fc="white", alpha=0.8))
    # the portrait's legend (streamlines, nullclines, equilibria) plus the moving parts
    old = ax.get_legend()
    legend(ax, handles=[cloud, ode_line, *(old.legend_handles if old else [])],
           loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)

    def update(i: int):
        r = picks[i]
        cloud.set_data(xy[:, r, 0], xy[:, r, 1])
        for j, line in enumerate(trails):
            back = picks[max(0, i - len(trails) + j)]
            line.set_data(xy[:, back, 0], xy[:, back, 1])
        if ode_xy is not None:
            upto = ode_t <= tau[r] + 1e-12
            ode_line.set_data(ode_xy[upto, 0], ode_xy[upto, 1])
        stamp.set_text(f"{TAU_LABEL} = {tau[r]:.2f}")
        return [cloud, ode_line, stamp, *trails]

    return FuncAnimation(fig, update, frames=len(picks), interval=interval, blit=False)


__all__ = ["animate_chains"]
