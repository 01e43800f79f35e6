r"""ODE against SGD on the ODE time axis ``tau``: coordinates, tracking distance, clipping,
martingale noise.

Every function here draws arrays that the engines computed (:class:`~sa_clip.Trajectory`,
:class:`~sa_clip.OdeSolution`, :class:`~sa_clip.TrackingResult`); the only arithmetic is
summarising an ensemble of chains for display (median, quantile band, moving average).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import norm

from .._validate import check_band
from ..ode import OdeSolution
from ..plane import Plane, _param_name
from ..problem import Problem
from ..tracking import TrackingResult
from ..trajectory import Trajectory
from ._style import (
    ODE_COLOR,
    SGD_COLOR,
    figure_function,
    get_ax,
    legend,
    nan_quantiles,
    subplots,
    to_numpy,
)

TAU_LABEL = "ODE time τ"




@figure_function
def plot_ensemble(t, values, ax=None, *, band: tuple[float, float] = (0.1, 0.9),
                  n_faint: int = 5, color: str = SGD_COLOR, label: str = "SGD chains",
                  logy: bool = False, show_band: bool = True):
    """Median over chains (solid), a quantile band, and a few chains drawn faintly.

    Parameters
    ----------
    t : ``(T,)`` times (ODE time ``tau``).
    values : ``(chains, T)``; NaN entries (blown-up chains) are ignored.
    band : the lower and upper quantiles of the shaded band (drawn if ``show_band``).
    n_faint : how many individual chains to draw thinly (the first ones).

    Returns
    -------
    matplotlib Axes

    Example
    -------
    >>> import numpy as np
    >>> ax = plot_ensemble(np.arange(4.0), np.ones((3, 4)))
    """
    ax = get_ax(ax, figsize=(6.4, 4.0))
    t, v = to_numpy(t), to_numpy(values)
    if v.ndim != 2 or v.shape[1] != t.shape[0]:
        raise ValueError(f"`values` must have shape (chains, len(t)) = (chains, {t.shape[0]}), "
                         f"got {v.shape}.")
    band = check_band(band)
    lo, med, hi = nan_quantiles(v, (band[0], 0.5, band[1]))
    for k in range(min(n_faint, v.shape[0])):
        ax.plot(t, v[k], color=color, lw=0.6, alpha=0.3)
    if show_band:
        ax.fill_between(t, lo, hi, color=color, alpha=0.2, lw=0,
                        label=f"{label}: {band[0]:.0%}–{band[1]:.0%} of chains")
    ax.plot(t, med, color=color, lw=1.8, label=f"{label}: median of {v.shape[0]}")
    if logy:
        ax.set_yscale("log")
    return ax


def _component(problem: Problem | None, plane: Plane | None, coord: int,
               theta: torch.Tensor) -> tuple[torch.Tensor, str]:
    """``theta[..., coord]`` or the plane coordinate ``coord``, with its axis label."""
    if plane is not None:
        if coord not in (0, 1):
            raise ValueError(f"`coord` must be 0 or 1 with a plane, got {coord}.")
        return plane.project(theta)[..., coord], plane.label(coord)
    if not 0 <= coord < theta.shape[-1]:
        raise ValueError(f"`coord` must index a parameter in [0, {theta.shape[-1] - 1}], got "
                         f"{coord}.")
    name = _param_name(problem, coord) if problem is not None else f"θ[{coord}]"
    return theta[..., coord], name


def _direction(plane: Plane | None, coord: int, p: int) -> torch.Tensor:
    """The row ``w`` with ``coordinate = w . theta (+ const)``: ``e_coord``, or the plane's
    least-squares row (``d1``/``d2`` for an orthonormal PCA plane)."""
    if plane is None:
        w = torch.zeros(p, dtype=torch.float64)
        w[coord] = 1.0
        return w
    return torch.linalg.pinv(plane.basis.double().cpu())[coord]


def _check_predicted(predicted, p: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``(tau (T,), mean (T, P), cov (T, P, P))`` of a linear-noise prediction, checked."""
    missing = [k for k in ("tau", "mean", "cov") if not hasattr(predicted, k)]
    if missing:
        raise TypeError(f"`predicted` must have attributes .tau, .mean, .cov (e.g. "
                        f"sa_clip.linear_noise(...)), {type(predicted).__name__} lacks "
                        f"{', '.join(missing)}.")
    tau = to_numpy(predicted.tau)
    mean = torch.as_tensor(predicted.mean).detach().double().cpu()
    cov = torch.as_tensor(predicted.cov).detach().double().cpu()
    n = tau.shape[0] if tau.ndim == 1 else -1
    if n < 1 or mean.shape != (n, p) or cov.shape != (n, p, p):
        raise ValueError(f"`predicted` must have .tau (T,), .mean (T, P), .cov (T, P, P) with "
                         f"P = {p}, got {tuple(tau.shape)}, {tuple(mean.shape)}, "
                         f"{tuple(cov.shape)}.")
    return tau, mean, cov


def _ode_label(trajectory: Trajectory, ode_start: torch.Tensor) -> str:
    """Say what the ODE is compared from: the chains' common start, or elsewhere."""
    first = trajectory.theta[:, 0]
    same = bool(torch.isfinite(first).all()) and bool(
        torch.allclose(first.double().cpu(), ode_start.double().cpu()[None].expand_as(first),
                       rtol=1e-6, atol=1e-9))
    return "ODE from the chains' start θ0" if same else "ODE solution"


@figure_function
def plot_ode_vs_sgd(trajectory: Trajectory, ode: OdeSolution | None = None, ax=None, *,
                    coord: int = 0, problem: Problem | None = None, plane: Plane | None = None,
                    band: tuple[float, float] = (0.1, 0.9), n_faint: int = 5,
                    title: str | None = None, predicted=None):
    r"""One coordinate of the SGD chains and of the ODE solution against ODE time ``tau``.

    What is compared: ONE ODE solution (normally from the chains' start ``theta0``) against
    the whole ensemble of chains: their median, their empirical quantile band and a few chains
    faintly, at ``tau_n``. (Tracking in Benaim's sense restarts the ODE on each chain's path;
    :func:`sa_clip.viz.plot_shadowing` draws that.) With ``plane`` the coordinate is a plane
    coordinate (e.g. PC1 of :meth:`sa_clip.plane.Plane.pca`, labelled with its share of the
    variance), else parameter ``coord``, named from ``problem.blocks`` (e.g.
    ``layer 0, weight (0, 3)``).

    With ``predicted`` (any object with ``.tau (T,)``, ``.mean (T, P)``, ``.cov (T, P, P)``,
    e.g. :func:`sa_clip.linear_noise`), the predicted band is drawn beside the empirical one:
    ``mean_u(tau) + z sqrt(w^T V(tau) w)`` for ``z`` the standard normal quantiles of ``band``
    (``+-1.2816`` for 10-90%), ``w`` the direction of the axis (``e_coord``, or ``d1``/``d2``
    of an orthonormal plane), ``mean_u = w . mean``.

    Parameters
    ----------
    trajectory : Trajectory from :func:`sa_clip.simulate_sgd`.
    ode : OdeSolution from :func:`sa_clip.solve_ode` with ``theta`` of shape ``(T, P)``.
    predicted : linear-noise prediction, optional (see above).

    Returns
    -------
    matplotlib Axes

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d(); r = sc.NormClip(1.0)
    >>> run = sc.simulate_sgd(p, r, "harmonic:0.5", steps=20, chains=4, seed=0)
    >>> sol = sc.solve_ode(sc.MeanField(p, r), p.theta0, run.tau)
    >>> ax = plot_ode_vs_sgd(run, sol, coord=1, problem=p)
    """
    ax = get_ax(ax, figsize=(6.4, 4.0))
    values, name = _component(problem, plane, coord, trajectory.theta)
    band = check_band(band)
    plot_ensemble(trajectory.tau, values, ax, band=band, n_faint=n_faint)
    if predicted is not None:
        p = trajectory.theta.shape[-1]
        tau, mean, cov = _check_predicted(predicted, p)
        w = _direction(plane, coord, p)
        centre = to_numpy(_component(problem, plane, coord, mean)[0])
        sd = np.sqrt(np.clip(to_numpy(torch.einsum("tij,i,j->t", cov, w, w)), 0.0, None))
        z_lo, z_hi = norm.ppf(band[0]), norm.ppf(band[1])
        ax.fill_between(tau, centre + z_lo * sd, centre + z_hi * sd, facecolor=ODE_COLOR,
                        alpha=0.12, edgecolor=ODE_COLOR, lw=1.0, ls=":", gid="predicted",
                        label=f"predicted {band[0]:.0%}–{band[1]:.0%} (linear noise)")
    if ode is not None:
        th = ode.theta if ode.theta.dim() == 2 else ode.theta[:, 0]
        ov, _ = _component(problem, plane, coord, th)
        ax.plot(to_numpy(ode.t), to_numpy(ov), color=ODE_COLOR, lw=2.0, ls="--", gid="ode",
                label=_ode_label(trajectory, th[0]))
    ax.set_xlabel(TAU_LABEL)
    ax.set_ylabel(name)
    if title:
        ax.set_title(title, fontsize="medium")
    legend(ax)
    return ax


@figure_function
def ode_vs_sgd_figure(trajectory: Trajectory, ode: OdeSolution | None = None, *,
                      coords: Sequence[int] = (0, 1), problem: Problem | None = None,
                      plane: Plane | None = None, title: str | None = None, predicted=None,
                      caption: str | None = None, **kwargs):
    """Several panels of :func:`plot_ode_vs_sgd` side by side (one per coordinate; two
    across at most in the talk style), one legend, and an optional ``caption`` under them
    (e.g. :data:`ODE_VS_SGD_CAPTION`, which says what is compared).

    ``predicted`` (``.tau``, ``.mean``, ``.cov``): the linear-noise band in every panel.

    Returns
    -------
    matplotlib Figure

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d(); r = sc.NormClip(1.0)
    >>> run = sc.simulate_sgd(p, r, "harmonic:0.5", steps=20, chains=4, seed=0)
    >>> fig = ode_vs_sgd_figure(run, coords=(0, 1), problem=p)
    """
    coords = list(coords)
    if not coords:
        raise ValueError("`coords` must name at least one coordinate.")
    fig, axes = subplots(len(coords), (4.6 * len(coords), 4.0))
    for ax, c in zip(axes, coords):
        plot_ode_vs_sgd(trajectory, ode, ax, coord=c, problem=problem, plane=plane,
                        predicted=predicted, **kwargs)
        if ax is not axes[0]:
            ax.get_legend().remove()
    if title:
        fig.suptitle(title, fontsize="medium")
    if caption:
        fig.supxlabel(caption.format(chains=trajectory.chains), fontsize="small", color="0.3")
    return fig


#: a caption for :func:`ode_vs_sgd_figure` (``{chains}`` is filled in)
ODE_VS_SGD_CAPTION = ("One ODE solution against the ensemble of {chains} chains. Tracking "
                      "(Benaïm) restarts the ODE on each chain's path: see the shadowing "
                      "figure.")


@figure_function
def plot_tracking(result: TrackingResult, ax=None, *, band: tuple[float, float] = (0.1, 0.9),
                  label: str | None = None, color: str = SGD_COLOR, logx: bool = True):
    r"""Tracking distance ``D_T(s)`` against the start time ``s`` on log axes: the median
    over chains and a quantile band. Theory: ``D_T(s) -> 0`` as ``s`` grows under (A2).

    ``logx``: a logarithmic ``s`` axis (the starts of a long run crowd the left of a linear
    one); where a start is 0 the axis is linear up to the first positive start (symlog).

    Call it several times on one ``ax`` (with ``label`` and ``color``) to compare runs.

    Returns
    -------
    matplotlib Axes

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d(); r = sc.NormClip(1.0)
    >>> run = sc.simulate_sgd(p, r, "harmonic:1.0", steps=50, chains=3, seed=0)
    >>> res = sc.tracking_distance(run, sc.MeanField(p, r), horizon=1.0, starts=[0.0, 2.0])
    >>> ax = plot_tracking(res)
    """
    ax = get_ax(ax, figsize=(6.4, 4.0))
    s, d = to_numpy(result.start), to_numpy(result.distance)
    band = check_band(band)
    lo, med, hi = nan_quantiles(d, (band[0], 0.5, band[1]))
    name = f"{label}: median" if label else "median"
    ax.fill_between(s, lo, hi, color=color, alpha=0.2, lw=0)
    ax.plot(s, med, "o-", color=color, ms=4, lw=1.6, gid="median",
            label=f"{name} of {d.shape[0]} chains, {band[0]:.0%}–{band[1]:.0%} band")
    ax.set_yscale("log")
    pos = s[s > 0]
    if logx and len(pos):
        if pos.size == s.size:
            ax.set_xscale("log")
        else:                   # linear on [0, first positive start], ticks 0 and decades
            lt = float(pos.min())
            ax.set_xscale("symlog", linthresh=lt, linscale=0.5)
            ax.set_xticks([0.0, *10.0 ** np.arange(np.ceil(np.log10(lt)),
                                                   np.floor(np.log10(pos.max())) + 1)])
            ax.set_xlim(left=-0.1 * lt)
    ax.set_xlabel(f"start time s ({TAU_LABEL})")
    ax.set_ylabel(rf"$D_T(s)$, T = {result.horizon:g}")
    ax.set_title(r"tracking distance $D_T(s)=\sup_{h\leq T}\|\bar\theta(s+h)"
                 r"-\Phi_h(\bar\theta(s))\|$", fontsize="medium")
    legend(ax)
    ax.grid(True, which="both", alpha=0.25)
    return ax


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average ignoring NaN, over ``window`` points where there is room and a
    symmetric, shorter window near the ends (``i - k .. i + k`` with ``k`` at most the
    distance to the nearer end): the first and last values are the raw ones, no edge bias."""
    n = len(x)
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(n)
    k = np.minimum.reduce([np.full(n, (window - 1) // 2), i, n - 1 - i])
    num = csum[i + k + 1] - csum[i - k]
    den = ccnt[i + k + 1] - ccnt[i - k]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


@figure_function
def plot_clip_fraction(trajectory: Trajectory, ax=None, *, window: int | None = None,
                       label: str | None = None, color: str = SGD_COLOR):
    """Fraction of samples clipped by each step, the mean over chains, against ``tau``:
    raw (thin) and smoothed by a centred moving average over ``window`` records (default:
    about 1/30 of the run), whose window shrinks symmetrically near the ends, so the curve
    starts and ends at the raw value.

    For ``clip_per="batch"`` runs the recorded value is 1 when the batch was clipped, so the
    curve is the fraction of clipped steps.

    Returns
    -------
    matplotlib Axes

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d()
    >>> run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=30, chains=4, seed=0)
    >>> ax = plot_clip_fraction(run)
    """
    ax = get_ax(ax, figsize=(6.4, 4.0))
    t = to_numpy(trajectory.tau)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(to_numpy(trajectory.clip_fraction), axis=0)
    w = max(1, len(t) // 30) if window is None else window
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
        raise ValueError(f"`window` must be an integer >= 1, got {window!r}.")
    sm = _smooth(mean, int(w))
    ax.plot(t, mean, color=color, lw=0.5, alpha=0.3, gid="raw")
    name = label or f"mean over {trajectory.chains} chains"
    ax.plot(t, sm, color=color, lw=1.8, gid="smoothed",
            label=name + (f", moving average of {w} records" if w > 1 else ""))
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(TAU_LABEL)
    ax.set_ylabel("fraction of samples clipped\n(mean over chains)")
    legend(ax)
    return ax


@figure_function
def noise_figure(trajectory: Trajectory, axes=None, *, band: tuple[float, float] = (0.1, 0.9),
                 n_faint: int = 5):
    r"""The martingale noise of the chains: ``||xi(n)||`` with
    ``xi(n) = sum_{k<n} a(k) M(k+1)`` (left) and its quadratic variation
    ``sum_{k<n} a(k)^2 ||M(k+1)||^2`` (right), against ``tau``. Under (A2) both converge.

    Needs a trajectory recorded with ``simulate_sgd(..., record_noise=True)``.

    Returns
    -------
    matplotlib Figure

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d()
    >>> run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=30, chains=4, seed=0,
    ...                       record_noise=True)
    >>> fig = noise_figure(run)
    """
    if trajectory.xi is None or trajectory.quadratic_variation is None:
        raise ValueError("`trajectory` has no noise records: run simulate_sgd(..., "
                         "record_noise=True).")
    if axes is None:
        fig, axes = subplots(2, (10, 3.8))
    else:
        fig = axes[0].figure
    plot_ensemble(trajectory.tau, trajectory.xi.norm(dim=-1), axes[0], band=band,
                  n_faint=n_faint, label="‖ξ‖")
    axes[0].set_ylabel(r"$\|\xi(n)\|$")
    plot_ensemble(trajectory.tau, trajectory.quadratic_variation, axes[1], band=band,
                  n_faint=n_faint, label="QV")
    axes[1].set_ylabel("quadratic variation")
    for ax in axes:
        ax.set_xlabel(TAU_LABEL)
        legend(ax)
    axes[0].set_title(r"martingale noise $\xi(n)=\sum_{k<n} a(k)\,M(k+1)$", fontsize="medium")
    axes[1].set_title(r"quadratic variation $\sum_{k<n} a(k)^2\|M(k+1)\|^2$ "
                      "(converges under (A2))", fontsize="medium")
    return fig


@figure_function
def plot_norms(trajectory: Trajectory, ax=None, *, label: str = "SGD chains",
               color: str = SGD_COLOR, n_faint: int = 64):
    r"""``||theta_k(n)||`` of every chain against ``tau`` on a log axis, with each blow-up
    marked by a cross at the chain's ``blowup_tau`` (the chain is NaN from there on).

    Returns
    -------
    matplotlib Axes

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.quartic(theta0=3.0)
    >>> run = sc.simulate_sgd(p, sc.NoClip(), "constant:0.5", steps=10, chains=2, seed=0)
    >>> ax = plot_norms(run)
    """
    ax = get_ax(ax, figsize=(6.4, 4.0))
    t = to_numpy(trajectory.tau)
    norms = to_numpy(trajectory.theta.norm(dim=-1))
    for k in range(min(n_faint, norms.shape[0])):
        ax.plot(t, norms[k], color=color, lw=0.8, alpha=0.5,
                label=f"{label} (‖θ‖ of each chain)" if k == 0 else None)
    blown = to_numpy(trajectory.blown_up).astype(bool)
    if blown.any():
        bt = to_numpy(trajectory.blowup_tau)[blown]
        # the last finite norm of each blown-up chain, where the cross goes
        last = np.array([norms[k][np.isfinite(norms[k])][-1] for k in np.flatnonzero(blown)])
        ax.plot(bt, last, "x", color="#d73027", ms=9, mew=2,
                label=f"{label}: blow-up ({int(blown.sum())} of {len(blown)})")
    ax.set_yscale("log")
    ax.set_xlabel(TAU_LABEL)
    ax.set_ylabel("‖θ‖")
    legend(ax)
    return ax


@figure_function
def plot_batch_mean_field(batch_sizes: Sequence[int], means, stderr, ax=None, *,
                          coords: Sequence[int] = (0,), problem: Problem | None = None,
                          reference=None, reference_label: str = "full-batch clipped gradient"):
    r"""How the per-batch mean field ``H_M`` moves with the batch size ``M``: chosen
    components of the Monte-Carlo estimates with error bars of two standard errors, on a log
    ``M`` axis. ``M = 1`` is per-sample clipping's ``H``.

    Parameters
    ----------
    batch_sizes : ``(L,)`` the values of ``M``.
    means, stderr : ``(L, P)`` from :func:`sa_clip.batch_mean_field` at each ``M``.
    reference : ``(P,)``, optional, drawn as a horizontal line per component.

    Returns
    -------
    matplotlib Axes

    Example
    -------
    >>> import torch
    >>> ax = plot_batch_mean_field([1, 2, 4], torch.ones(3, 2), torch.zeros(3, 2))
    """
    ax = get_ax(ax, figsize=(6.4, 4.0))
    m, mu, se = to_numpy(batch_sizes), to_numpy(means), to_numpy(stderr)
    colors = plt.get_cmap("tab10")
    for j, c in enumerate(coords):
        name = _param_name(problem, c) if problem is not None else f"θ[{c}]"
        ax.errorbar(m, mu[:, c], yerr=2 * se[:, c], fmt="o-", ms=4, capsize=3,
                    color=colors(j % 10), label=f"$H_M$ component {name} (± 2 s.e.)")
        if reference is not None:
            ax.axhline(float(to_numpy(reference)[c]), color=colors(j % 10), ls=":", lw=1.2,
                       label=f"{reference_label}, {name}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size M (per-batch clipping; M = 1 is per-sample H)")
    ax.set_ylabel(r"component of $H_M(\theta)$")
    legend(ax)
    return ax


__all__ = ["plot_ensemble", "plot_ode_vs_sgd", "ode_vs_sgd_figure", "ODE_VS_SGD_CAPTION",
           "plot_tracking",
           "plot_clip_fraction", "noise_figure", "plot_norms", "plot_batch_mean_field",
           "TAU_LABEL"]
