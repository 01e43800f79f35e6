"""Phase portraits of the limiting ODE ``d theta/d tau = -H(theta)`` on a plane."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.lines import Line2D

from ..plane import PlaneField
from ._style import KIND_STYLE, ODE_COLOR, SGD_COLOR, figure_function, get_ax, legend, to_numpy

#: the colour of ODE curves from starts other than the chains' own
OTHER_ODE_COLOR = "#8c510a"
SECTION_NOTE = ("P > 2: the arrows are −H projected on this plane, a section of the field, "
                "not a flow; ODE curves need not follow them.")


def _limits(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Axis limits around ``pts (n, 2)`` with a 8% margin, inside the grid ``a x b``."""
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) < 2:
        return (a[0], a[-1]), (b[0], b[-1])
    lo, hi = pts.min(0), pts.max(0)
    span = np.maximum(hi - lo, 0.05 * np.array([a[-1] - a[0], b[-1] - b[0]]))
    mid = (lo + hi) / 2
    lo, hi = mid - 0.58 * span, mid + 0.58 * span
    return ((max(lo[0], a[0]), min(hi[0], a[-1])), (max(lo[1], b[0]), min(hi[1], b[-1])))


@figure_function
def plot_phase_portrait(pf: PlaneField, ax=None, *, equilibria: Sequence | None = None,
                        ode_paths: torch.Tensor | None = None, chains: torch.Tensor | None = None,
                        loss_levels: int | None = 14, nullclines: bool = True,
                        density: float = 1.3, max_chains: int = 64, title: str | None = None,
                        colorbar: bool = True, start_ode: torch.Tensor | None = None,
                        limits: str = "auto"):
    """Draw ``-H`` on a plane: streamlines coloured by speed, loss contours, nullclines,
    equilibria marked by stability, and above them the SGD chains and ODE curves.

    Every line style is in the legend (loss contours and streamlines included). For a plane of
    a ``P > 2`` problem the figure says that the projected field is a section of the field,
    not a flow of its own (``pf.residual`` is not zero).

    Parameters
    ----------
    pf : PlaneField
        From :func:`sa_clip.plane.field_on_plane` (the field is computed there, not here).
    equilibria : list of :class:`sa_clip.Equilibrium`, optional
        Drawn at their projection, marker and colour by ``kind`` (saddles included).
    chains : tensor ``(chains, records, P)``, optional
        SGD chains (``Trajectory.theta``); at most ``max_chains`` are drawn.
    start_ode : tensor ``(T, P)``, optional
        The ODE solved from the chains' own start (``solve_ode(field, theta0, run.tau).theta``):
        drawn thick, "ODE from the chains' start". A single ``ode_paths`` that starts where
        all the chains start is drawn as such too.
    ode_paths : tensor ``(T, P)`` or ``(T, K, P)``, optional
        Other ODE solutions (``OdeSolution.theta``, e.g. from a ring of starts), projected onto
        the plane.
    limits : ``"auto"`` or ``"grid"``
        ``"auto"``: axis limits taken from the chains, ODE curves and equilibria (inside the
        grid of ``pf``); ``"grid"``: the whole grid.

    Returns
    -------
    matplotlib Axes

    Example
    -------
    >>> import sa_clip as sc
    >>> from sa_clip.plane import Plane, field_on_plane
    >>> p = sc.problems.tanh_regression()
    >>> pf = field_on_plane(sc.MeanField(p, sc.NormClip(1.0)), Plane.coordinates(p), (-3, 3),
    ...                     (-3, 3), n=9)
    >>> ax = plot_phase_portrait(pf)
    """
    if limits not in ("auto", "grid"):
        raise ValueError(f"`limits` must be 'auto' or 'grid', got {limits!r}.")
    ax = get_ax(ax)
    plane = pf.plane
    a, b = to_numpy(pf.a), to_numpy(pf.b)
    U, V, speed = to_numpy(pf.flow[..., 0]), to_numpy(pf.flow[..., 1]), to_numpy(pf.speed)
    handles: list[Line2D] = []
    if pf.loss is not None and loss_levels:
        _draw_loss_contours(ax, a, b, to_numpy(pf.loss), loss_levels, handles)
    _draw_streamlines(ax, a, b, U, V, speed, density, colorbar, handles)
    if nullclines:
        _draw_nullclines(ax, a, b, U, V, plane.names, handles)
    if start_ode is None and ode_paths is not None and chains is not None:
        start_ode, ode_paths = _split_start_ode(ode_paths, chains)
    drawn = []
    if chains is not None:
        drawn.append(_draw_chains(ax, plane, chains, max_chains, handles))
    drawn += _draw_ode_paths(ax, plane, ode_paths, start_ode, handles)
    drawn += _draw_equilibria(ax, plane, equilibria or (), handles)
    if limits == "auto" and drawn:
        (x0, x1), (y0, y1) = _limits(np.concatenate(drawn), a, b)
    else:
        (x0, x1), (y0, y1) = (a[0], a[-1]), (b[0], b[-1])
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(plane.label(0))
    ax.set_ylabel(plane.label(1))
    ax.set_title(title or r"phase portrait of $d\theta/d\tau = -H(\theta)$", fontsize="medium")
    resid = to_numpy(pf.residual)
    if np.nanmax(resid) > 1e-9 * max(float(np.nanmax(speed)), 1e-300):
        ax.text(0.01, 0.01, textwrap.fill(SECTION_NOTE, 60), transform=ax.transAxes,
                fontsize="x-small", va="bottom", zorder=6, gid="section-note",
                bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
    legend(ax, handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    return ax


# ---------------------------------------------------------------------------- the field
def _draw_loss_contours(ax, a: np.ndarray, b: np.ndarray, loss: np.ndarray, n_levels: int,
                        handles: list) -> None:
    """Grey contours of ``L`` at ``n_levels`` quantiles of its finite values on the grid."""
    levels = np.quantile(loss[np.isfinite(loss)], np.linspace(0.02, 0.98, n_levels))
    ax.contour(a, b, loss, levels=np.unique(levels), colors="0.6", linewidths=0.6,
               alpha=0.8, zorder=0)
    handles.append(Line2D([], [], color="0.6", lw=0.8, label="loss contours L(θ)"))


def _draw_streamlines(ax, a: np.ndarray, b: np.ndarray, U: np.ndarray, V: np.ndarray,
                      speed: np.ndarray, density: float, colorbar: bool, handles: list) -> None:
    """Streamlines of the projected ``-H`` coloured by its speed (and that colour bar)."""
    strm = ax.streamplot(a, b, U, V, color=speed, cmap="viridis", density=density,
                         linewidth=0.8, arrowsize=0.9, zorder=1)
    strm.lines.set_alpha(0.75)
    handles.append(Line2D([], [], color=strm.lines.get_cmap()(0.6), lw=1.0,
                          label="streamlines of −H (colour: speed)"))
    if colorbar:
        ax.figure.colorbar(strm.lines, ax=ax, label=r"speed $\|\Pi H\|$")


def _draw_nullclines(ax, a: np.ndarray, b: np.ndarray, U: np.ndarray, V: np.ndarray,
                     names: Sequence[str], handles: list) -> None:
    """The zero contour of each component of the flow, where it changes sign on the grid."""
    for comp, style, name in ((U, "--", names[0]), (V, ":", names[1])):
        if np.nanmin(comp) < 0 < np.nanmax(comp):
            ax.contour(a, b, comp, levels=[0.0], colors="k", linestyles=style,
                       linewidths=1.1, zorder=2)
            handles.append(Line2D([], [], color="k", ls=style, lw=1.1,
                                  label=f"nullcline d{name}/dτ = 0"))


# ---------------------------------------------------------------------------- on top of it
def _split_start_ode(ode_paths, chains) -> tuple:
    """``(start_ode, ode_paths)``: a single ODE path that starts where every chain starts is
    the ODE from the chains' own start (drawn and labelled as such); otherwise unchanged."""
    o, c0 = torch.as_tensor(ode_paths), torch.as_tensor(chains)[:, 0]
    o = o[:, 0] if o.dim() == 3 and o.shape[1] == 1 else o
    if o.dim() == 2 and bool(torch.isfinite(c0).all()) and bool(torch.allclose(
            c0.double(), o[0].double().expand_as(c0), rtol=1e-6, atol=1e-9)):
        return o, None
    return None, ode_paths


def _draw_chains(ax, plane, chains, max_chains: int, handles: list) -> np.ndarray:
    """At most ``max_chains`` SGD chains, a dot at each one's last record; their points."""
    c = to_numpy(plane.project(torch.as_tensor(chains)[:max_chains]))
    for k in range(c.shape[0]):
        ax.plot(c[k, :, 0], c[k, :, 1], color=SGD_COLOR, lw=1.1, alpha=0.55, zorder=3,
                gid="chain")
    ax.plot(c[:, -1, 0], c[:, -1, 1], "o", color=SGD_COLOR, mec="white", mew=0.5, ms=4,
            zorder=3.5, gid="chain-end")
    handles.append(Line2D([], [], color=SGD_COLOR, lw=1.1, marker="o", ms=4, mec="white",
                          label=f"SGD chains ({c.shape[0]}), dot: last record"))
    return c.reshape(-1, 2)


def _draw_ode_paths(ax, plane, ode_paths, start_ode, handles: list) -> list[np.ndarray]:
    """The other ODE solutions, then the one from the chains' start (thick); their points."""
    drawn = []
    for paths, color, lw, label, gid in (
            (ode_paths, OTHER_ODE_COLOR if start_ode is not None else ODE_COLOR, 1.6,
             "ODE solutions from other starts" if start_ode is not None else "ODE solution",
             "ode"),
            (start_ode, ODE_COLOR, 2.8, "ODE from the chains' start", "start-ode")):
        if paths is None:
            continue
        o = torch.as_tensor(paths)
        o = o.unsqueeze(1) if o.dim() == 2 else o
        pr = to_numpy(plane.project(o))
        for k in range(pr.shape[1]):
            ax.plot(pr[:, k, 0], pr[:, k, 1], color=color, lw=lw, zorder=4, gid=gid,
                    solid_capstyle="round")
            ax.plot(pr[0, k, 0], pr[0, k, 1], "o", color=color, mfc="white", ms=5, zorder=4.5)
        handles.append(Line2D([], [], color=color, lw=lw, marker="o", mfc="white", ms=5,
                              label=label + " (circle: start)"))
        drawn.append(pr.reshape(-1, 2))
    return drawn


def _draw_equilibria(ax, plane, equilibria: Sequence, handles: list) -> list[np.ndarray]:
    """Each equilibrium at its projection, styled by kind (one legend entry per kind)."""
    drawn, seen = [], set()
    for e in equilibria:
        xy = to_numpy(plane.project(e.theta))
        style = dict(KIND_STYLE.get(e.kind, KIND_STYLE["degenerate"]))
        label = style.pop("label")
        ax.plot(xy[0], xy[1], linestyle="none", ms=10, mec="k", zorder=5, gid="equilibrium",
                **style)
        if label not in seen:
            seen.add(label)
            handles.append(Line2D([], [], linestyle="none", ms=9, mec="k", label=label,
                                  **style))
        drawn.append(xy[None])
    return drawn
