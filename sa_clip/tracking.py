r"""How closely SGD chains track the ODE flow: the asymptotic-pseudotrajectory distance.

.. math:: D_T(s) = \sup_{0 \le h \le T} \big\lVert \bar\theta(s + h)
          - \Phi_h(\bar\theta(s)) \big\rVert ,

with ``theta_bar`` the piecewise-linear interpolation of a chain in ODE time and ``Phi_h`` the
flow of ``d theta/d tau = -H`` (docs/theory.md#tracking). Theory (Benaim 1999, Theorem 1 of the
paper): ``D_T(s) -> 0`` as ``s -> inf`` for every fixed ``T`` under (A2).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._cost import Meter, check_progress, duration, ode_evaluations
from ._validate import check_index, check_indices, check_nonneg_int, check_positive
from .io import check_array, load_npz, save_npz
from .meanfield import MeanField
from .ode import TOLERANCES as ODE_TOLERANCES
from .ode import check_times, resolve_tolerances, solve_ode
from .trajectory import Trajectory


@dataclass
class TrackingResult:
    """Result of :func:`tracking_distance`.

    Attributes
    ----------
    start : float64 tensor ``(S,)``
        Start times ``s`` (ODE time).
    distance : tensor ``(chains, S)``
        ``D_T(s)`` per chain and start; NaN where the window ``[s, s+T]`` reaches a blow-up.
    horizon : float
        ``T``.
    h : float64 tensor ``(G,)``
        The grid of offsets ``h`` the supremum was taken over (also :attr:`offsets`).
    nfev : int
        Right-hand-side evaluations of the one batched solve (summed over its pieces).
    status, message : int, str
        0 / "success", or -1 and what failed (then the values the solver did not reach are
        NaN; those it reached are kept).
    gap : tensor ``(chains, S, G)`` or None
        ``||theta_bar(s + h) - Phi_h(theta_bar(s))||`` at every offset; ``distance`` is its
        maximum over the last axis. NaN for windows that reach a blow-up.
    paths : tensor ``(K, S, G, P)`` or None
        The flow segments ``Phi_h(theta_bar(s))`` of the chains ``path_chains`` (``keep_paths``
        of :func:`tracking_distance`).
    path_chains : int64 tensor ``(K,)`` or None
        Which chains ``paths`` belongs to (rows of ``distance``).
    chains : int64 tensor ``(chains,)`` or None
        The trajectory's chains that the rows of ``distance`` are (``chains=`` of
        :func:`tracking_distance`); None: all of them, in order.
    run_id : str or None
        :meth:`sa_clip.Trajectory.run_key` of the run it was computed from (the whole run,
        also when ``chains`` picks some; None for results of older versions):
        :func:`sa_clip.viz.plot_shadowing` refuses another run.
    tracked_id : str or None
        With ``chains``: the run key of ``select_chains(run, chains)`` (also accepted by
        :func:`sa_clip.viz.plot_shadowing`).
    """

    start: torch.Tensor
    distance: torch.Tensor
    horizon: float
    h: torch.Tensor
    nfev: int = 0
    status: int = 0
    message: str = "success"
    gap: torch.Tensor | None = None
    paths: torch.Tensor | None = None
    path_chains: torch.Tensor | None = None
    chains: torch.Tensor | None = None
    run_id: str | None = None
    tracked_id: str | None = None

    @property
    def offsets(self) -> torch.Tensor:
        """The offsets ``h`` of the last axis of :attr:`gap` and :attr:`paths`, ``(G,)``."""
        return self.h

    @property
    def median(self) -> torch.Tensor:
        """Median over chains of ``D_T(s)``, ignoring NaN (blown-up chains): shape ``(S,)``."""
        return torch.nanmedian(self.distance, dim=0).values

    def median_gap(self) -> torch.Tensor:
        """Median over chains of :attr:`gap`, ignoring NaN: shape ``(S, G)``."""
        if self.gap is None:
            raise ValueError("this TrackingResult has no `gap`: it was over the memory budget "
                             "(pass keep_gap=True to tracking_distance) or is from an older "
                             "version.")
        return torch.nanmedian(self.gap, dim=0).values

    def path(self, chain: int) -> torch.Tensor:
        """The flow segments ``Phi_h(theta_bar(s_k))`` of ``chain``, shape ``(S, G, P)``."""
        chain = check_index("chain", chain, self.distance.shape[0], what="a chain index")
        kept = [] if self.path_chains is None else self.path_chains.tolist()
        if chain not in kept:
            raise ValueError(f"`chain` = {chain} has no flow segments in this result (kept: "
                             f"{kept}); pass keep_paths=[{chain}] to tracking_distance.")
        return self.paths[kept.index(chain)]

    def save(self, path: str | os.PathLike, config: dict[str, Any] | None = None) -> None:
        """Write to ``path`` (``.npz`` + JSON metadata, atomic, no pickle; ``docs/format.md``)."""
        arrays = {"start": self.start, "distance": self.distance, "h": self.h}
        for name in ("gap", "paths", "path_chains", "chains"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        save_npz(path, arrays,
                 {"kind": "TrackingResult", "horizon": self.horizon, "nfev": self.nfev,
                  "status": self.status, "message": self.message, "config": config or {},
                  "run_id": self.run_id, "tracked_id": self.tracked_id})

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrackingResult:
        """Read a file written by :meth:`save` (otherwise a ``ValueError`` naming the file)."""
        arrays, meta = load_npz(path, kind="TrackingResult")
        start = check_array(path, arrays, "start", shape=(None,))
        n_s = start.shape[0]
        dist = check_array(path, arrays, "distance", shape=(None, n_s))
        h = check_array(path, arrays, "h", shape=(None,))
        gap = check_array(path, arrays, "gap", shape=(dist.shape[0], n_s, h.shape[0]),
                          optional=True)
        chains = check_array(path, arrays, "path_chains", kinds="i", shape=(None,),
                             optional=True)
        paths = check_array(path, arrays, "paths", optional=True, shape=(
            None if chains is None else chains.shape[0], n_s, h.shape[0], None))
        if (paths is None) != (chains is None):
            raise ValueError(f"{os.fspath(path)!r}: arrays 'paths' and 'path_chains' must come "
                             "together.")
        if chains is not None and (chains.size and (chains.min() < 0
                                                    or chains.max() >= dist.shape[0])):
            raise ValueError(f"{os.fspath(path)!r}: array 'path_chains' holds {chains.tolist()}, "
                             f"expected chain indices in [0, {dist.shape[0] - 1}].")
        tracked = check_array(path, arrays, "chains", kinds="i", shape=(dist.shape[0],),
                              optional=True)
        if tracked is not None and tracked.size and tracked.min() < 0:
            raise ValueError(f"{os.fspath(path)!r}: array 'chains' holds negative indices.")
        for key, typ in (("horizon", float), ("nfev", int), ("status", int), ("message", str)):
            v = meta.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float) if typ is float else typ):
                raise ValueError(f"{os.fspath(path)!r}: metadata {key!r} is {v!r}, expected "
                                 f"{typ.__name__}.")

        def t(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(np.array(a))

        return cls(start=t(start), distance=t(dist), horizon=float(meta["horizon"]), h=t(h),
                   nfev=meta["nfev"], status=meta["status"], message=meta["message"],
                   gap=t(gap), paths=t(paths), path_chains=t(chains), chains=t(tracked),
                   **{k: meta[k] if isinstance(meta.get(k), str) else None
                      for k in ("run_id", "tracked_id")})

    def quantile(self, q: float) -> torch.Tensor:
        """``q``-quantile over chains (NaN ignored), shape ``(S,)``."""
        return torch.nanquantile(self.distance.double(), q, dim=0)


#: Default ``(rtol, atol)`` of :func:`tracking_distance` by dtype (max-norm step control:
#: every flow meets them). Float32 gets the tolerances of :data:`sa_clip.ode.TOLERANCES`.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    **ODE_TOLERANCES, torch.float64: (1e-6, 1e-8)}


def _inf_norm(x: torch.Tensor) -> torch.Tensor:
    return x.abs().max()


def select_chains(trajectory: Trajectory, chains: Any) -> Trajectory:
    """The chains ``chains`` (a sequence of distinct indices; numpy integers accepted) of
    ``trajectory``, in that order, as a Trajectory (the noise and index records are dropped).

    >>> import sa_clip as sc
    >>> run = sc.simulate_sgd(sc.problems.logistic2d(), sc.NormClip(1.0), "harmonic:1.0",
    ...                       steps=5, chains=4, seed=0)
    >>> select_chains(run, [3, 1]).chains
    2
    """
    idx = torch.tensor(check_indices("chains", chains, trajectory.chains), dtype=torch.long)
    if not len(idx):
        raise ValueError("`chains` must name at least one chain, got an empty sequence.")
    if torch.equal(idx, torch.arange(trajectory.chains)):
        return trajectory
    dev = trajectory.theta.device
    return dataclasses.replace(
        trajectory, theta=trajectory.theta[idx.to(dev)],
        blowup_step=trajectory.blowup_step[idx.to(trajectory.blowup_step.device)],
        clip_fraction=trajectory.clip_fraction[idx.to(trajectory.clip_fraction.device)],
        indices=None, xi=None, quadratic_variation=None, noise_norm=None)


def _kept_chains(keep_paths: Any, chains: int) -> list[int]:
    """``keep_paths``: an int ``k`` (the first ``k`` chains) or a sequence of chain indices
    (numpy integers accepted; strings, floats and bools refused)."""
    if isinstance(keep_paths, (bool, np.bool_)):
        raise TypeError(f"`keep_paths` must be an int or a sequence of chain indices, got "
                        f"{keep_paths!r}.")
    if isinstance(keep_paths, (numbers.Integral, np.integer)):
        return list(range(min(check_nonneg_int("keep_paths", int(keep_paths)), chains)))
    return check_indices("keep_paths", keep_paths, chains)


def _check_field(field: Any, p: int, probe: torch.Tensor) -> None:
    """A field of another number of parameters is named as such (not blamed on theta)."""
    if isinstance(field, MeanField):
        if field.problem.P != p:
            raise ValueError(f"`field` is the mean field of a problem with P = "
                             f"{field.problem.P} parameters, but the trajectory's chains have "
                             f"P = {p}: pass the field of the problem the chains were run on.")
        return
    try:
        out = field(probe)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(f"`field` failed on a (1, {p}) batch of the trajectory's points "
                         f"({type(exc).__name__}: {exc}); it must accept (K, P) with "
                         f"P = {p}.") from exc
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        raise ValueError(f"`field` returned {getattr(out, 'shape', type(out).__name__)} for a "
                         f"batch of shape {tuple(probe.shape)}; it must return H of the same "
                         f"shape (P = {p}).")


def _gaps(trajectory: Trajectory, s: torch.Tensor, grid: torch.Tensor, rows: torch.Tensor,
          flow: torch.Tensor, last: float, max_elements: int) -> torch.Tensor:
    """``||theta_bar(s + h) - flow||`` for the solved ``rows`` (chain * S + start) and the
    offsets ``grid``: ``(K, L)``. ``flow`` is ``(L, K, P)``. The interpolated chains are formed
    a few offsets at a time (about ``max_elements / 8`` numbers each), so the gaps cost little
    memory beyond ``flow`` itself."""
    chains, n_s, p = trajectory.chains, s.numel(), flow.shape[-1]
    out = torch.empty((len(rows), len(grid)), dtype=flow.dtype, device=flow.device)
    step = max(1, max_elements // (8 * max(1, chains * n_s * p)))
    for a in range(0, len(grid), step):
        sub = grid[a:a + step]
        times = (s[:, None] + sub[None, :]).clamp(max=last)          # (S, l)
        bar = trajectory.interpolate(times.reshape(-1)).reshape(chains * n_s, len(sub), p)
        out[:, a:a + step] = (bar[rows] - flow[a:a + step].transpose(0, 1)).norm(dim=-1)
    return out


def _start_times(starts: Any, last: float, horizon: float, device: Any) -> torch.Tensor:
    """The checked start times ``s`` (default: 20 evenly spaced in ``[0, last - horizon]``)."""
    if starts is None:
        return torch.linspace(0.0, last - horizon, 20, dtype=torch.float64, device=device)
    s = check_times(starts, device=device, name="starts")
    if s.numel() > 1 and not bool((s[1:] > s[:-1]).all()):
        raise ValueError("`starts` must be strictly increasing.")
    if float(s.min()) < 0 or float(s.max()) > last - horizon + 1e-12 * max(1.0, last):
        raise ValueError(f"`starts` must lie in [0, tau_last - horizon] = [0, "
                         f"{last - horizon}], got values in [{float(s.min())}, "
                         f"{float(s.max())}].")
    return s


def _offset_grid(tau: torch.Tensor, s: torch.Tensor, horizon: float, n_grid: int
                 ) -> torch.Tensor:
    """``n_grid`` evenly spaced offsets in ``[0, T]`` plus every record time inside a window."""
    rel = (tau[None, :] - s[:, None]).reshape(-1)
    rel = rel[(rel > 0) & (rel < horizon)]
    return torch.unique(torch.cat([torch.linspace(0.0, horizon, n_grid, dtype=torch.float64,
                                                  device=tau.device), rel]))


def _active_rows(run: Trajectory, s: torch.Tensor, horizon: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The start points ``(C, S, P)`` and the rows (chain * S + start) whose window stays
    finite: ``theta_bar`` is finite on ``[s, s + T]`` iff the window ends before the segment
    that reaches the chain's first NaN record (a blow-up), i.e. by ``tau[r - 1]``."""
    tau = run.tau.to(torch.float64)
    x0 = run.interpolate(s)
    r = torch.searchsorted(run.steps, run.blowup_step).clamp(1, len(tau) - 1)
    last_ok = torch.where(run.blown_up, tau[r - 1], torch.full_like(tau[r], float("inf")))
    active = (torch.isfinite(x0).all(-1) & (s[None, :] + horizon <= last_ok[:, None]))
    return x0, torch.nonzero(active.reshape(-1)).reshape(-1)


class _Gather:
    """What the pieces of the solve leave behind: the running maximum of the gaps per solved
    row, the gaps themselves (``keep_gap``) and the flow segments of the kept chains."""

    def __init__(self, x0: torch.Tensor, rows: torch.Tensor, n_h: int, kept: list[int],
                 keep_gap: bool):
        chains, n_s, p = x0.shape
        nan = dict(fill_value=float("nan"), dtype=x0.dtype, device=x0.device)
        self.rows, self.n_rows = rows, chains * n_s
        self.gap = torch.full((chains * n_s, n_h), **nan) if keep_gap else None
        self.reached = torch.zeros(len(rows), dtype=x0.dtype, device=x0.device)
        self.paths = torch.full((len(kept), n_s, n_h, p), **nan) if kept else None
        slot = torch.full((chains * n_s,), -1, dtype=torch.long, device=x0.device)
        slot[rows] = torch.arange(len(rows), device=x0.device)
        self.kept_slots = slot.reshape(chains, n_s)[kept]            # (K, S); -1: not solved

    def add(self, i: int, j: int, g: torch.Tensor, flow: torch.Tensor) -> None:
        """Gaps ``g (rows, L)`` and flow ``(L, rows, P)`` on the offsets ``i:j``."""
        # NaN anywhere in a window (not reached by a failed solve) makes D_T NaN, not smaller
        self.reached = torch.where(torch.isnan(g).any(-1) | torch.isnan(self.reached),
                                   float("nan"), torch.maximum(self.reached, g.amax(-1)))
        if self.gap is not None:
            self.gap[:, i:j] = self.gap[:, i:j].index_copy(0, self.rows, g)
        if self.paths is not None:
            ok = self.kept_slots >= 0
            seg = flow.transpose(0, 1)[self.kept_slots.clamp(min=0)]   # (K, S, L, P)
            self.paths[:, :, i:j] = torch.where(ok[..., None, None], seg, self.paths[:, :, i:j])

    def distance(self, complete: bool) -> torch.Tensor:
        """``D_T`` per row (chain * S + start): NaN for rows not solved, and for all when the
        solve stopped before the last offset."""
        dist = self.reached.new_full((self.n_rows,), float("nan"))
        if complete and len(self.rows):
            dist[self.rows] = self.reached
        return dist


def _solve_pieces(field: Any, y: torch.Tensor, h: torch.Tensor, gather: _Gather,
                  gaps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], piece: int,
                  meter: Meter, **ode: Any) -> tuple[int, str, int, bool]:
    """One batched flow over the offsets ``h``, in pieces of ``piece`` offsets (each piece
    starts from the last point of the one before): ``(status, message, nfev, complete)``."""
    nfev, i = 0, 0
    while True:
        j = min(i + piece, len(h))
        meter.origin = float(h[i])
        sol = solve_ode(field, y, h[i:j], progress=meter, options={"norm": _inf_norm}, **ode)
        nfev += sol.nfev
        gather.add(i, j, gaps(h[i:j], sol.theta), sol.theta)
        if sol.status != 0:
            return -1, (f"ODE solve failed on offsets [{float(h[i]):.6g}, "
                        f"{float(h[j - 1]):.6g}]: {sol.message}"), nfev, j >= len(h)
        if j >= len(h):
            return 0, "success", nfev, True
        y, i = sol.theta[-1], j - 1


def tracking_distance(trajectory: Trajectory,
                      field: MeanField | Callable[[torch.Tensor], torch.Tensor], *,
                      horizon: float, starts: Any = None, chains: Any = None, n_grid: int = 50,
                      method: str = "dopri5", rtol: float | None = None,
                      atol: float | None = None, max_elements: int = 2 ** 24,
                      keep_paths: Any = 0, keep_gap: bool | None = None,
                      progress: bool | None = None) -> TrackingResult:
    r"""``D_T(s)`` for every chain of ``trajectory`` (or the chains ``chains``) and every start
    time ``s``, with the gaps and (for a few chains) the flow segments it is made of.

    .. math:: g(s, h) = \lVert \bar\theta(s + h) - \Phi_h(\bar\theta(s)) \rVert, \qquad
              D_T(s) = \sup_{0 \le h \le T} g(s, h).

    The supremum over ``h in [0, T]`` is taken over ``n_grid`` evenly spaced offsets plus every
    record time inside a window (where ``theta_bar`` has its corners). All ``chains x S``
    flows are ONE batched :func:`~sa_clip.solve_ode` from the ``(chains * S, P)`` start points
    on the common offset grid (in consecutive pieces of the grid so memory stays below
    ``max_elements`` numbers; the step-size control uses the max-norm, so every start meets
    the tolerances, not just their average). The same solve gives :attr:`TrackingResult.gap`
    (all chains) and :attr:`TrackingResult.paths` (the chains in ``keep_paths``), which
    :func:`sa_clip.viz.plot_shadowing` draws.

    A window ``[s, s + T]`` that reaches a chain's blow-up (its records are NaN from there) is
    left out of the solve, so one diverging chain cannot spoil the others: its ``distance``
    and ``gap`` are NaN, for that chain and those windows only.

    Main arguments
    --------------
    trajectory : Trajectory
    field : MeanField or callable ``theta -> H(theta)`` accepting ``(K, P)``
        With the trajectory's ``P``.
    horizon : float > 0
        ``T``; at most the trajectory's last ODE time.
    starts : 1-D times, optional
        Default: 20 points evenly spaced in ``[0, tau_last - T]``.
    chains : sequence of chain indices, optional
        Track only these chains (distinct; numpy integers accepted), in this order: the result
        is that of ``tracking_distance(select_chains(trajectory, chains), ...)``, whose rows
        are the full result's rows ``chains`` (to the solver's tolerances: the batched solve
        takes other steps). Every other chain index (``keep_paths``,
        :meth:`TrackingResult.path`, :func:`~sa_clip.viz.plot_shadowing` with
        ``select_chains(trajectory, result.chains)``) counts within the selection;
        :attr:`TrackingResult.chains` holds the indices. Default: all chains.
    keep_paths : int or sequence of int
        Keep the flow segments of the first ``keep_paths`` chains (an int, default 0) or of the
        listed chains: ``(K, S, G, P)`` numbers.
    keep_gap : bool or None
        Keep :attr:`TrackingResult.gap` (``chains x S x G`` numbers). ``None`` (default): keep
        it when that is at most ``max_elements`` (long runs recorded densely put thousands of
        record times into the offset grid); otherwise ``gap`` is None and only ``D_T`` is kept.
    progress : bool or None
        ``True``: after timing one evaluation of ``H`` on the batch of flows, print the cost
        ("tracking: 24 flows x about 600 evaluations x 0.1 s: about 25 min"; the number of
        evaluations is a rough figure from the tolerance and ``T``, see
        :func:`sa_clip._cost.ode_evaluations`) to stderr and show a bar over the offsets.
        ``None`` (default): only when the estimate exceeds a few seconds. ``False``: silent.

    Other arguments
    ---------------
    n_grid : int >= 2
    method, rtol, atol : passed to :func:`~sa_clip.solve_ode`; ``rtol``/``atol`` None: by the
        trajectory's dtype (:data:`TOLERANCES`: ``1e-6, 1e-8`` in float64, ``1e-4, 1e-6`` in
        float32).
    max_elements : int
        Memory budget of one piece of the grid.

    Returns
    -------
    TrackingResult
        ``start (S,)``, ``distance (chains, S)``, ``h``/``offsets (G,)``,
        ``gap (chains, S, G)``, ``paths (K, S, G, P)``, ``median`` over chains.

    Raises
    ------
    TypeError, ValueError
        For a non-Trajectory, a field of another number of parameters, ``horizon <= 0`` or
        longer than the run, starts outside ``[0, tau_last - T]`` or not
        1-D/finite/increasing, ``n_grid < 2``, ``chains`` or ``keep_paths`` not chain indices
        (strings such as ``'12'`` and floats are refused).

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d()
    >>> rule = sc.NormClip(1.0)
    >>> run = sc.simulate_sgd(p, rule, "harmonic:1.0", steps=50, chains=3, seed=0)
    >>> res = sc.tracking_distance(run, sc.MeanField(p, rule), horizon=1.0, starts=[0.0, 2.0],
    ...                            keep_paths=1)
    >>> res.distance.shape, res.gap.shape[:2], res.paths.shape[:2]
    (torch.Size([3, 2]), torch.Size([3, 2]), torch.Size([1, 2]))
    >>> bool((res.gap.amax(-1) == res.distance).all())
    True
    >>> sc.tracking_distance(run, sc.MeanField(p, rule), horizon=1.0, starts=[0.0, 2.0],
    ...                      chains=[2]).distance.shape
    torch.Size([1, 2])
    """
    run, picked = _checked_run(trajectory, field, chains)
    horizon = check_positive("horizon", horizon)
    n_grid = check_nonneg_int("n_grid", n_grid, minimum=2)
    rtol, atol = resolve_tolerances(rtol, atol, run.theta.dtype, TOLERANCES)
    progress = check_progress(progress)
    kept = _kept_chains(keep_paths, run.chains)
    tau = run.tau.to(torch.float64)
    last = float(tau[-1])
    if horizon > last:
        raise ValueError(f"`horizon` = {horizon} exceeds the trajectory's ODE time {last}: "
                         "run more steps or use a shorter horizon.")
    s = _start_times(starts, last, horizon, tau.device)
    h = _offset_grid(tau, s, horizon, n_grid)
    x0, rows = _active_rows(run, s, horizon)
    y = x0.reshape(-1, x0.shape[-1])[rows]
    if len(rows):
        _check_field(field, y.shape[-1], y[:1])
    if keep_gap is None:
        keep_gap = x0.shape[0] * s.numel() * len(h) <= max_elements
    elif not isinstance(keep_gap, bool):
        raise TypeError(f"`keep_gap` must be True, False or None, got {keep_gap!r}.")
    gather = _Gather(x0, rows, len(h), kept, keep_gap)
    status, message, nfev, complete = 0, "success", 0, False
    if len(rows):
        meter = _tracking_meter(progress, len(rows), method, rtol, horizon, len(h))

        def gaps(grid: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
            return _gaps(run, s, grid, rows, flow, last, max_elements)

        try:
            status, message, nfev, complete = _solve_pieces(
                field, y, h, gather, gaps, max(2, max_elements // max(1, y.numel())), meter,
                method=method, rtol=rtol, atol=atol)
        finally:
            meter.close()
    n_s = s.numel()
    return TrackingResult(
        start=s, distance=gather.distance(complete).reshape(run.chains, n_s), horizon=horizon,
        h=h, nfev=nfev, status=status, message=message,
        gap=None if gather.gap is None else gather.gap.reshape(run.chains, n_s, len(h)),
        paths=gather.paths, path_chains=torch.tensor(kept, dtype=torch.long) if kept else None,
        chains=picked, run_id=trajectory.run_key(),
        tracked_id=None if picked is None else run.run_key())


def _checked_run(trajectory: Any, field: Any, chains: Any
                 ) -> tuple[Trajectory, torch.Tensor | None]:
    """The trajectory (restricted to ``chains``) and the tracked chain indices (None: all)."""
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"`trajectory` must be a sa_clip.Trajectory, got "
                        f"{type(trajectory).__name__}.")
    if not callable(field):
        raise TypeError(f"`field` must be a MeanField or a callable, got {type(field).__name__}.")
    if chains is None:
        return trajectory, None
    run = select_chains(trajectory, chains)
    return run, torch.tensor(check_indices("chains", chains, trajectory.chains),
                             dtype=torch.long)


def _tracking_meter(progress: bool | None, flows: int, method: str, rtol: float,
                    horizon: float, n_h: int) -> Meter:
    """The cost estimate and bar of one tracking solve (a bar over the offsets ``h``)."""
    n = ode_evaluations(method, rtol, horizon, n_h)

    def describe(sec: float) -> str:
        return (f"{flows} flows x about {n} evaluations (rough: from rtol = {rtol:g} and "
                f"T = {horizon:g}) x {duration(sec / flows)}")

    meter = Meter("tracking", progress, units=n, describe=describe, total=horizon, unit="tau")
    meter.origin = 0.0
    return meter


__all__ = ["tracking_distance", "TrackingResult", "select_chains", "TOLERANCES"]
