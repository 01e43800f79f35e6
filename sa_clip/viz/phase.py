"""Phase portraits of the limiting ODE ``d theta/d tau = -H(theta)`` on a plane."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..plane import PlaneField
from ._style import KIND_STYLE, ODE_COLOR, SGD_COLOR, get_ax


def _np(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_phase_portrait(pf: PlaneField, ax=None, *, equilibria: Sequence | None = None,
                        ode_paths: torch.Tensor | None = None, chains: torch.Tensor | None = None,
                        loss_levels: int | None = 14, nullclines: bool = True,
                        density: float = 1.3, max_chains: int = 64, title: str | None = None,
                        colorbar: bool = True):
    """Draw ``-H`` on a plane: streamlines coloured by speed, loss contours, nullclines,
    equilibria marked by stability, ODE curves and SGD chains on top.

    Parameters
    ----------
    pf : PlaneField
        From :func:`sa_clip.plane.field_on_plane` (the field is computed there, not here).
    equilibria : list of :class:`sa_clip.Equilibrium`, optional
        Drawn at their projection, marker and colour by ``kind``.
    ode_paths : tensor ``(T, P)`` or ``(T, K, P)``, optional
        ODE solutions (``OdeSolution.theta``), projected onto the plane.
    chains : tensor ``(chains, records, P)``, optional
        SGD chains (``Trajectory.theta``); at most ``max_chains`` are drawn.

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
    ax = get_ax(ax)
    plane = pf.plane
    a, b = _np(pf.a), _np(pf.b)
    U, V, speed = _np(pf.flow[..., 0]), _np(pf.flow[..., 1]), _np(pf.speed)
    if pf.loss is not None and loss_levels:
        loss = _np(pf.loss)
        levels = np.quantile(loss[np.isfinite(loss)], np.linspace(0.02, 0.98, loss_levels))
        ax.contour(a, b, loss, levels=np.unique(levels), colors="0.6", linewidths=0.6,
                   alpha=0.8)
    strm = ax.streamplot(a, b, U, V, color=speed, cmap="viridis", density=density,
                         linewidth=1.0, arrowsize=1.0)
    if colorbar:
        ax.figure.colorbar(strm.lines, ax=ax, label=r"speed $\|\Pi H\|$")
    if nullclines:
        for comp, style, name in ((U, "--", plane.names[0]), (V, ":", plane.names[1])):
            if np.nanmin(comp) < 0 < np.nanmax(comp):
                ax.contour(a, b, comp, levels=[0.0], colors="k", linestyles=style,
                           linewidths=1.1)
                ax.plot([], [], "k" + style, lw=1.1, label=f"nullcline d{name}/dτ = 0")
    if chains is not None:
        c = _np(plane.project(torch.as_tensor(chains)[:max_chains]))
        for k in range(c.shape[0]):
            ax.plot(c[k, :, 0], c[k, :, 1], color=SGD_COLOR, lw=0.5, alpha=0.35,
                    label="SGD chains" if k == 0 else None)
        ax.plot(c[:, -1, 0], c[:, -1, 1], ".", color=SGD_COLOR, ms=3)
    if ode_paths is not None:
        o = torch.as_tensor(ode_paths)
        o = o.unsqueeze(1) if o.dim() == 2 else o
        pr = _np(plane.project(o))
        for k in range(pr.shape[1]):
            ax.plot(pr[:, k, 0], pr[:, k, 1], color=ODE_COLOR, lw=1.8,
                    label="ODE solution" if k == 0 else None)
            ax.plot(pr[0, k, 0], pr[0, k, 1], "o", color=ODE_COLOR, mfc="white", ms=5)
    for e in equilibria or ():
        xy = _np(plane.project(e.theta))
        style = dict(KIND_STYLE.get(e.kind, KIND_STYLE["degenerate"]))
        label = style.pop("label")
        seen = label in ax.get_legend_handles_labels()[1]
        ax.plot(xy[0], xy[1], linestyle="none", ms=9, mec="k", zorder=5,
                label=None if seen else label, **style)
    ax.set_xlim(a[0], a[-1])
    ax.set_ylim(b[0], b[-1])
    ax.set_xlabel(plane.names[0])
    ax.set_ylabel(plane.names[1])
    ax.set_title(title or r"phase portrait of $d\theta/d\tau = -H(\theta)$")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return ax
