r"""Figures for the checkable theory: CLT fluctuation ellipses, Azuma bounds against the
empirical exceedance frequency, blow-up frequency of adaptive clipping, and basins of
attraction. Every function takes ``ax=None``, returns the axes, never saves, and is handed the
numbers (covariances from :mod:`sa_clip.fluctuations`, bounds from
:func:`sa_clip.azuma_log_bound`, ...); it only draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
from matplotlib.patches import Ellipse
from scipy.stats import chi2

from ._style import KIND_STYLE, ODE_COLOR, SGD_COLOR, figure_function, get_ax, legend, to_numpy


def _ellipse(cov: np.ndarray, center: np.ndarray, level: float, **kw) -> Ellipse:
    """The ``level`` probability ellipse of ``N(center, cov)`` in 2-D."""
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    r = np.sqrt(chi2.ppf(level, 2))
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    return Ellipse(center, 2 * r * np.sqrt(vals[1]), 2 * r * np.sqrt(vals[0]), angle=angle,
                   fill=False, **kw)


@figure_function
def plot_fluctuation_ellipses(errors, predicted, empirical=None, ax=None, *,
                              level: float = 0.95, max_points: int = 4000,
                              names: Sequence[str] = ("coordinate 1", "coordinate 2"),
                              title: str | None = None):
    r"""Scaled errors ``z_k = (theta_k(n) - theta*) / sqrt(a(n))`` of many chains, with the
    predicted CLT covariance ellipse (Lyapunov solution) and the empirical one.

    Parameters
    ----------
    errors : ``(chains, 2)``
        From :func:`sa_clip.trajectory_scaled_errors` (NaN rows, blown-up chains, are skipped).
    predicted : ``(2, 2)``
        :func:`sa_clip.clt_covariance`. ``empirical``: ``(2, 2)``, optional,
        :func:`sa_clip.empirical_covariance` of ``errors``.
    level : float
        Probability mass inside each ellipse (``z^T Sigma^{-1} z <= chi2_2(level)``).

    Example
    -------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(200, 2))
    >>> ax = plot_fluctuation_ellipses(z, np.eye(2), np.cov(z.T))
    """
    ax = get_ax(ax, figsize=(5.4, 5.0))
    z = to_numpy(errors)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"`errors` must have shape (chains, 2), got {z.shape}.")
    z = z[np.isfinite(z).all(1)]
    pred = to_numpy(predicted)
    ax.plot(z[:max_points, 0], z[:max_points, 1], ".", color=SGD_COLOR, ms=2.5, alpha=0.35,
            label=f"chains ({len(z)})")
    zero = np.zeros(2)
    ax.add_patch(_ellipse(pred, zero, level, color=ODE_COLOR, lw=2.2,
                          label=f"predicted (CLT), {level:.0%}"))
    if empirical is not None:
        ax.add_patch(_ellipse(to_numpy(empirical), z.mean(0) if len(z) else zero, level, color="k",
                              lw=1.5, ls="--", label=f"empirical, {level:.0%}"))
        inside = np.einsum("ki,ij,kj->k", z, np.linalg.pinv(pred), z) <= chi2.ppf(level, 2)
        ax.text(0.02, 0.02, f"inside predicted: {inside.mean():.1%} (expected {level:.0%})",
                transform=ax.transAxes, fontsize="small")
    ax.plot(0, 0, "+", color=ODE_COLOR, ms=10, mew=2, label=r"$\theta^*$")
    r = np.sqrt(chi2.ppf(max(level, 0.999), 2) * np.linalg.eigvalsh(pred).max())
    lim = max(r, np.abs(np.quantile(z, [0.001, 0.999], axis=0)).max()) if len(z) else r
    ax.set_xlim(-1.1 * lim, 1.1 * lim)
    ax.set_ylim(-1.1 * lim, 1.1 * lim)
    ax.set_aspect("equal")
    ax.set_xlabel(rf"$(\theta_1 - \theta_1^*)/\sqrt{{a(n)}}$  [{names[0]}]")
    ax.set_ylabel(rf"$(\theta_2 - \theta_2^*)/\sqrt{{a(n)}}$  [{names[1]}]")
    ax.set_title(title or "fluctuations around a stable equilibrium")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.85)
    return ax


@figure_function
def plot_azuma(radii, frequency, log_bounds: Mapping[str, object], ax=None, *,
               chains: int | None = None, title: str | None = None):
    r"""Empirical exceedance frequency ``P(||theta(s) - theta(0)|| > m)`` against the
    Hoeffding-Azuma bounds, as the radius ``m`` grows, on a log scale.

    Parameters
    ----------
    radii : ``(R,)`` radii ``m``.
    frequency : ``(R,)`` empirical frequencies (:func:`sa_clip.exceedance_frequency`); zeros
        are drawn at the resolution floor ``1/chains`` as open markers when ``chains`` is given.
    log_bounds : ``{label: (R,) natural-log bounds}``
        E.g. ``{"paper (15)": [...], "standard Azuma": [...]}`` from
        :func:`sa_clip.azuma_log_bound`; bounds above 1 are cut at 1 (``log 1 = 0``).

    Example
    -------
    >>> ax = plot_azuma([0.5, 1.0], [0.3, 0.1], {"paper (15)": [-0.2, -3.0]}, chains=100)
    """
    ax = get_ax(ax, figsize=(5.6, 4.2))
    m = to_numpy(radii)
    f = to_numpy(frequency)
    styles = ["-", "--", "-.", ":"]
    colors = ["#d73027", "#4575b4", "#1a9850", "#7b3294"]
    for k, (label, lb) in enumerate(log_bounds.items()):
        ax.plot(m, np.minimum(np.exp(to_numpy(lb)), 1.0), styles[k % 4], color=colors[k % 4], lw=2,
                label=f"bound: {label}")
    pos = f > 0
    ax.plot(m[pos], f[pos], "o", color="k", ms=5, label="empirical frequency")
    if chains:
        if (~pos).any():
            ax.plot(m[~pos], np.full((~pos).sum(), 1.0 / chains), "o", mfc="none", color="k",
                    ms=5, label=f"no exceedance in {chains} chains")
        ax.axhline(1.0 / chains, color="0.6", lw=0.8, ls=":")
    ax.set_yscale("log")
    low = min([1.0 / chains] if chains else [1.0] + list(f[pos]) or [1e-3])
    ax.set_ylim(max(low * 0.2, 1e-300), 1.5)
    ax.set_xlabel(r"radius $m$")
    ax.set_ylabel(r"$P(\|\theta(s) - \theta(0)\| > m)$")
    ax.set_title(title or "Hoeffding-Azuma bounds vs empirical exceedance")
    ax.legend(loc="lower left", fontsize="small", framealpha=0.85)
    return ax


@figure_function
def plot_blowup(lams, frequencies: Mapping[str, object], ax=None, *, chains: int | None = None,
                title: str | None = None):
    """Blow-up frequency against the clipping parameter ``lam``, one curve per rule.

    ``frequencies`` maps a label to ``(L,)`` frequencies (:attr:`sa_clip.BlowupResult.frequency`);
    with ``chains`` the binomial standard error is drawn as error bars.

    >>> ax = plot_blowup([1, 2, 4], {"adaptive": [0.0, 0.2, 0.9]}, chains=100)
    """
    ax = get_ax(ax, figsize=(5.6, 4.2))
    x = to_numpy(lams)
    markers = ["o", "s", "^", "D"]
    for k, (label, fr) in enumerate(frequencies.items()):
        f = to_numpy(fr)
        err = np.sqrt(f * (1 - f) / chains) if chains else None
        ax.errorbar(x, f, yerr=err, marker=markers[k % 4], capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(r"clipping parameter $\lambda$")
    ax.set_ylabel("fraction of chains that blew up")
    ax.set_title(title or "blow-up frequency")
    ax.legend(loc="upper left", fontsize="small")
    return ax


@figure_function
def plot_basins(a, b, labels, ax=None, *, equilibria: Sequence | None = None,
                names: Sequence[str] = ("a", "b"), alpha: float = 0.35,
                title: str | None = None):
    """Colour a grid by the equilibrium the ODE from each point reaches.

    Parameters
    ----------
    a, b : ``(na,)``, ``(nb,)`` grid coordinates. ``labels``: integer ``(nb, na)``, the index
        into ``equilibria`` reached from each grid point, ``-1`` for none.
    equilibria : list of :class:`sa_clip.Equilibrium` (2-D) or None placeholders, indexed like
        ``labels``, to name the colours and mark them.

    Draw it over a phase portrait (pass the same ``ax``) to see basins and flow together.

    >>> import numpy as np
    >>> ax = plot_basins(np.arange(3), np.arange(2), np.array([[0, 0, 1], [0, 1, 1]]))
    """
    ax = get_ax(ax)
    A, Bv, L = to_numpy(a), to_numpy(b), np.asarray(labels)
    n_eq = max(int(L.max()) + 1, len(equilibria or ()), 1)
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
    cols = ["#cccccc"] + [palette[k % len(palette)] for k in range(n_eq)]
    cmap = mcolors.ListedColormap(cols)
    norm = mcolors.BoundaryNorm(np.arange(-1.5, n_eq, 1.0), cmap.N)
    ax.pcolormesh(A, Bv, L, cmap=cmap, norm=norm, alpha=alpha, shading="nearest", zorder=0)
    from matplotlib.patches import Patch

    handles = []
    for k in range(n_eq):
        if (L == k).any():
            e = equilibria[k] if equilibria and k < len(equilibria) else None
            what = f"basin of {e.kind} eq. {k}" if e is not None else f"basin {k}"
            handles.append(Patch(color=cols[k + 1], alpha=alpha + 0.2, label=what))
    if (L < 0).any():
        handles.append(Patch(color=cols[0], alpha=alpha + 0.2, label="no equilibrium reached"))
    for k, e in enumerate(equilibria or ()):
        if e is None:                      # a placeholder keeps the numbering of the labels
            continue
        xy = to_numpy(e.theta)
        style = dict(KIND_STYLE.get(e.kind, KIND_STYLE["degenerate"]))
        style.pop("label")
        ax.plot(xy[0], xy[1], linestyle="none", ms=10, mec="k", zorder=6, **style)
        ax.annotate(str(k), xy[:2], xytext=(6, 6), textcoords="offset points", fontsize="small",
                    weight="bold", zorder=7)
    ax.set_xlim(A[0], A[-1])
    ax.set_ylim(Bv[0], Bv[-1])
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title or "basins of attraction of the ODE")
    # keep what a portrait drawn underneath put in its legend (streamlines, equilibria, ...)
    old = ax.get_legend()
    old_h = list(old.legend_handles) if old is not None else ax.get_legend_handles_labels()[0]
    legend(ax, handles=handles + old_h, loc="upper center", bbox_to_anchor=(0.5, -0.1),
           ncol=2, fontsize="x-small")
    return ax


__all__ = ["plot_fluctuation_ellipses", "plot_azuma", "plot_blowup", "plot_basins"]
