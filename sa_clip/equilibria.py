r"""Equilibria of the limiting ODE ``d theta/d tau = -H(theta)`` and the clipping bias at them
(docs/theory.md#equilibria).

An equilibrium is a zero of ``H``. Its stability follows from the eigenvalues of the Jacobian
``DH(theta*)``: the flow is ``-H``, so ``theta*`` is *stable* when every eigenvalue has positive
real part, *unstable* when every one is negative, a *saddle* when they have both signs, and
*degenerate* (non-hyperbolic) when one is zero up to ``tol``. Complex eigenvalues make it a
*focus* (spiral), real ones a *node*.

``H`` has kinks where a clipping factor switches (``||g_G|| = tau_G``); there the Jacobian is
that of the branch active at ``theta*`` and :attr:`Equilibrium.switch_margin` (the smallest
``| ||g_G|| / tau_G - 1 |`` over samples and groups) says how close the switch is.

The paper concludes that the loss gradient vanishes on average at a zero of ``H``. For
per-sample clipping that is false in general: :func:`clipping_bias` measures how far off it is.

A zero set need not be a point: on the data ``{-5, -2, 1, 6}`` with ``l_i = (theta - x_i)^2/2``
and ``NormClip(0.5)``, ``H`` vanishes on the whole interval ``[-2 + 0.5, 1 - 0.5]``.
:func:`find_equilibria` reports such a continuum once, as an :class:`Equilibrium` with
``is_set = True``: in one dimension with the interval's endpoints (``lower``, ``upper``, found by
bisection), in more with the bounding box and diameter of the roots that fell on it.

Types: tensors as everywhere in sa_clip, except ``Equilibrium.eigenvalues``, a complex numpy
array (what ``numpy.linalg.eigvals`` returns; torch has no stable complex eigen-solver on every
device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._validate import check_finite, check_nonneg_int, check_positive
from .clipping import NoClip
from .meanfield import MeanField


@dataclass(frozen=True)
class Equilibrium:
    """One zero of ``H``, or one connected set of zeros (a continuum).

    Attributes
    ----------
    theta : tensor ``(P,)``
        The zero (for a set: the root found nearest to the middle of the set).
    residual : float
        ``||H(theta)||``.
    eigenvalues : complex numpy array ``(P,)``
        Eigenvalues of ``DH(theta)``.
    kind : str
        ``"stable"``, ``"unstable"``, ``"saddle"`` or ``"degenerate"`` (every set is).
    shape : str
        ``"node"``, or ``"focus"`` (complex eigenvalues).
    switch_margin : float
        Distance of the nearest clipping factor to its switch (0 = on a kink).
    count : int
        How many starts converged here (to any point of the set).
    lower, upper : (P,) tensors or None
        For a set: its extent per coordinate. With ``P = 1`` these are the endpoints of the
        interval of zeros (to ``tol``, by bisection); with ``P > 1`` the bounding box of the
        roots found on it. None for an isolated zero.
    members : (M, P) tensor or None
        For a set: the distinct roots that were merged into it.

    ``is_set`` says whether this is a continuum; ``extent`` is its diameter (0 for a point).
    """

    theta: torch.Tensor
    residual: float
    eigenvalues: np.ndarray
    kind: str
    shape: str
    switch_margin: float
    count: int = 1
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    members: torch.Tensor | None = None

    @property
    def stable(self) -> bool:
        return self.kind == "stable"

    @property
    def is_set(self) -> bool:
        return self.lower is not None

    @property
    def extent(self) -> float:
        """Diameter of the set: ``|upper - lower|`` in 1-D, of the member roots otherwise."""
        if self.lower is None or self.upper is None:
            return 0.0
        if self.theta.numel() == 1 or self.members is None:
            return float((self.upper - self.lower).norm())
        return float(torch.cdist(self.members, self.members).max())


class Equilibria(list):
    """The list of :class:`Equilibrium` returned by :func:`find_equilibria`, with what happened
    to the starts that are not in it.

    Attributes
    ----------
    n_starts : int
        Number of starts.
    not_converged : int
        Starts whose root search did not reach ``||H|| <= tol`` (dropped).
    beyond_max_norm : list of tensors ``(P,)``
        The roots with ``||theta|| > max_norm`` (dropped: far out, saturated activations make
        ``H`` vanish numerically).
    max_norm : float or None
        The bound used (None: no bound).
    """

    def __init__(self, items=(), *, n_starts: int = 0, not_converged: int = 0,
                 beyond_max_norm: list[torch.Tensor] | None = None,
                 max_norm: float | None = None):
        super().__init__(items)
        self.n_starts, self.not_converged = n_starts, not_converged
        self.beyond_max_norm = beyond_max_norm or []
        self.max_norm = max_norm

    def summary(self) -> str:
        """One line: how many equilibria (sets counted once) and where the other starts went."""
        sets = sum(e.is_set for e in self)
        text = f"{len(self)} equilibria" + (f" ({sets} of them continua)" if sets else "")
        text += f" from {self.n_starts} starts"
        extra = []
        if self.not_converged:
            extra.append(f"{self.not_converged} did not converge")
        if self.beyond_max_norm:
            extra.append(f"{len(self.beyond_max_norm)} converged beyond ||theta|| > "
                         f"{self.max_norm:.4g} (far out, H vanishing numerically) and are "
                         "not listed")
        return text + ("; " + ", ".join(extra) if extra else "")


def classify(eigenvalues: np.ndarray, tol: float = 1e-8) -> tuple[str, str]:
    """``(kind, shape)`` of an equilibrium from the eigenvalues of ``DH`` (flow ``-H``).

    >>> classify(np.array([1.0, 2.0]))
    ('stable', 'node')
    >>> classify(np.array([1 + 1j, 1 - 1j]))
    ('stable', 'focus')
    """
    ev = np.asarray(eigenvalues)
    re = ev.real
    scale = max(1.0, float(np.abs(ev).max())) if ev.size else 1.0
    if np.any(np.abs(re) <= tol * scale):
        kind = "degenerate"
    elif np.all(re > 0):
        kind = "stable"
    elif np.all(re < 0):
        kind = "unstable"
    else:
        kind = "saddle"
    shape = "focus" if np.any(np.abs(ev.imag) > tol * scale) else "node"
    return kind, shape


def switch_margin(field: MeanField, theta: torch.Tensor) -> float:
    """``min | ||g_G|| / tau_G - 1 |`` over samples ``i`` and groups ``G`` at ``theta`` (P,).

    0 means some clipping factor sits exactly at its switch, where ``H`` has a kink; ``inf`` for
    rules without a switch (``NoClip``) or not a norm scaling (``ValueClip``). The ratios come
    from :meth:`MeanField.clip_stats` (the field's engine, chunks and shards).
    """
    if field.rule.granularity in ("none", "coordinate"):
        return float("inf")
    ratios = field.clip_stats(theta).ratios
    if ratios.dim() != 2:
        shape = tuple(torch.as_tensor(theta).shape)
        raise ValueError(f"`theta` must have shape (P,), got {shape}.")
    return float((ratios - 1).abs().min()) if ratios.numel() else float("inf")


def _starts(field: MeanField, starts, n_starts: int, scale: float, seed: int | None
            ) -> torch.Tensor:
    p = field.problem
    if starts is not None:
        t, _ = p.check_theta(starts, "starts")
        return check_finite("starts", t)
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    noise = torch.randn(n_starts, p.P, generator=gen, dtype=torch.float64).to(p.dtype)
    return p.theta0 + scale * noise


def find_equilibria(field: MeanField, starts: torch.Tensor | None = None, *, n_starts: int = 16,
                    scale: float = 1.0, seed: int | None = None, tol: float = 1e-10,
                    merge_tol: float = 1e-6, root_method: str = "hybr", max_iter: int = 200,
                    max_norm: float | str | None = "auto", merge_sets: bool = True,
                    method: str | None = None) -> Equilibria:
    """Zeros of ``H`` found by ``scipy.optimize.root`` (with the Jacobian ``DH`` from autodiff)
    from many starts, de-duplicated, each classified by the eigenvalues of ``DH``; a connected
    set of zeros (a continuum) is reported once.

    Main arguments
    --------------
    field : MeanField
    starts : (S, P) tensor, optional
        Starting points. Default: ``n_starts`` Gaussian points ``theta0 + scale * N(0, I)``.

    Other arguments
    ---------------
    n_starts : int >= 1; scale : float >= 0
        Number and spread of the default random starts.
    seed : int >= 0 or None
        Seeds the generator of the default starts (None: seed 0); same seed, same result.
    tol : a start has converged when ``||H|| <= tol * max(1, ||H(start)||)``.
    merge_tol : roots closer than ``merge_tol * max(1, ||theta||)`` are the same equilibrium.
    root_method : any ``scipy.optimize.root`` method that uses a Jacobian (``"hybr"``,
        ``"lm"``). ``method=`` is accepted as its old name.
    max_norm : float, ``"auto"`` or None
        Roots with ``||theta|| > max_norm`` are left out of the list (and counted in
        ``beyond_max_norm``): far from every start, saturated activations (tanh, sigmoid) make
        ``H`` vanish numerically, and the root finder stops there. ``"auto"``:
        ``10 * max(1, max_k ||start_k||)``; None keeps every root.
    merge_sets : bool
        Merge degenerate roots joined by a segment of zeros (``||H|| <= tol`` at 8 points
        between them, and transitively) into one set; with ``P = 1`` its endpoints are then
        found by bisection.

    Returns
    -------
    Equilibria
        A list of :class:`Equilibrium`, sorted by how many starts found each (most first), with
        ``n_starts``, ``not_converged``, ``beyond_max_norm`` and ``summary()`` saying where
        the other starts went. A continuum is one entry with ``is_set = True``, ``lower``,
        ``upper`` and ``members``.

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-3.0, -3.0, 9.0])
    >>> eq = find_equilibria(sc.MeanField(p, sc.NormClip(1.0)), n_starts=4, scale=3.0)
    >>> round(float(eq[0].theta), 6), eq[0].kind
    (-2.5, 'stable')
    >>> q = sc.problems.location_problem([-5.0, -2.0, 1.0, 6.0])
    >>> (s,) = find_equilibria(sc.MeanField(q, sc.NormClip(0.5)), n_starts=8, scale=2.0)
    >>> s.is_set, round(float(s.lower), 9), round(float(s.upper), 9)
    (True, -1.5, 0.5)
    """
    if not isinstance(field, MeanField):
        raise TypeError(f"`field` must be a sa_clip.MeanField, got {type(field).__name__}.")
    if method is not None:
        if root_method != "hybr" and root_method != method:
            raise ValueError(f"`method` is the old name of `root_method`: pass one of them, got "
                             f"root_method={root_method!r} and method={method!r}.")
        root_method = method
    n_starts = check_nonneg_int("n_starts", n_starts, minimum=1)
    check_positive("tol", tol)
    check_positive("merge_tol", merge_tol)
    max_iter = check_nonneg_int("max_iter", max_iter, minimum=1)
    if seed is not None:
        seed = check_nonneg_int("seed", seed)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
            math.isfinite(scale) and scale >= 0):
        raise (TypeError if not isinstance(scale, (int, float)) or isinstance(scale, bool)
               else ValueError)(f"`scale` must be a finite number >= 0, got {scale!r}.")
    if not isinstance(merge_sets, bool):
        raise TypeError(f"`merge_sets` must be True or False, got {merge_sets!r}.")
    p = field.problem
    x0s = _starts(field, starts, n_starts, scale, seed)
    if max_norm == "auto":
        bound: float | None = 10.0 * max(1.0, float(x0s.norm(dim=1).max()))
    elif max_norm is None:
        bound = None
    else:
        bound = check_positive("max_norm", max_norm, allow_inf=True)

    def h(x: torch.Tensor) -> torch.Tensor:       # H of (K, P), NaN rows where x is not finite
        ok = torch.isfinite(x).all(1)
        out = torch.full_like(x, float("nan"))
        if bool(ok.any()):
            out[ok] = field._evaluate(x[ok])
        return out

    def fun(x: np.ndarray) -> np.ndarray:
        return h(torch.as_tensor(x, dtype=p.dtype, device=p.device)[None])[0].double().cpu(
        ).numpy()

    def jac(x: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(x)):
            return np.full((len(x), len(x)), np.nan)
        t = torch.as_tensor(x, dtype=p.dtype, device=p.device)
        return field.jacobian(t).double().cpu().numpy()

    # 1. one root search per start
    roots: list[tuple[torch.Tensor, float, float]] = []       # (theta, residual, threshold)
    not_converged = 0
    far: list[torch.Tensor] = []
    import scipy.optimize  # here, not at import: it costs ~0.5 s and ~45 MB

    for x0 in x0s:
        x0n = x0.double().cpu().numpy()
        thr = tol * max(1.0, float(np.linalg.norm(fun(x0n))))
        sol = scipy.optimize.root(fun, x0n, jac=jac, method=root_method,
                                  options={"maxfev": max_iter * (p.P + 1)}
                                  if root_method == "hybr" else {})
        res = float(np.linalg.norm(fun(sol.x)))
        if not np.all(np.isfinite(sol.x)) or not res <= thr:
            not_converged += 1
            continue
        theta = torch.as_tensor(sol.x, dtype=p.dtype, device=p.device)
        if bound is not None and float(theta.norm()) > bound:
            far.append(theta)
            continue
        roots.append((theta, res, thr))

    # 2. distinct points (within merge_tol), each classified
    points: list[dict] = []
    for theta, res, thr in roots:
        for pt in points:
            if float((pt["theta"] - theta).norm()) <= merge_tol * max(1.0, float(theta.norm())):
                pt["count"] += 1
                pt["thr"] = max(pt["thr"], thr)
                break
        else:
            ev = np.linalg.eigvals(jac(theta.double().cpu().numpy()))
            kind, shape = classify(ev)
            points.append({"theta": theta, "res": res, "ev": ev, "kind": kind, "shape": shape,
                           "count": 1, "thr": thr})

    # 3. connected degenerate points form one set
    groups = _connected_groups(h, points, merge_sets)
    found = [_equilibrium(field, h, [points[i] for i in g], merge_tol, merge_sets)
             for g in groups]
    return Equilibria(sorted(found, key=lambda e: -e.count), n_starts=len(x0s),
                      not_converged=not_converged, beyond_max_norm=far, max_norm=bound)


def _connected_groups(h, points: list[dict], merge: bool) -> list[list[int]]:
    """Indices of ``points`` grouped: points joined (transitively) to a degenerate point by a
    segment on which ``||H||`` stays below both points' convergence thresholds; every other
    point alone."""
    parent = list(range(len(points)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    degenerate = [i for i, pt in enumerate(points) if pt["kind"] == "degenerate"] if merge \
        else []
    s = torch.linspace(0, 1, 10, dtype=torch.float64)[1:-1, None]
    for i in degenerate:
        # a root at the edge of a continuum may look hyperbolic (the one-sided Jacobian of a
        # kink): any point joined to a degenerate one by zeros belongs to its set
        for j in range(len(points)):
            if root(i) == root(j):
                continue
            a, b = points[i]["theta"], points[j]["theta"]
            seg = a + s.to(a) * (b - a)
            if bool((h(seg).norm(dim=1) <= max(points[i]["thr"], points[j]["thr"])).all()):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(points)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _edge(h, inside: torch.Tensor, direction: float, thr: float, step: float) -> torch.Tensor:
    """1-D: the last zero of ``H`` from ``inside`` (a zero) going in ``direction`` (+-1), to
    about ``1e-12`` relative, by an outward search then batched bisection (16 points a round).
    """
    lo = inside.reshape(1, 1)
    hi = lo + direction * step
    for _ in range(64):                                # find a point where H is not zero
        v = h(hi)[0]
        if not bool(torch.isfinite(v).all()) or float(v.norm()) > thr:
            break
        lo, step = hi, 2 * step
        hi = lo + direction * step
    else:
        return lo.reshape(1)
    grid = torch.linspace(0, 1, 18, dtype=lo.dtype, device=lo.device)[1:-1, None]
    for _ in range(12):
        pts = lo + grid * (hi - lo)
        zero = h(pts).norm(dim=1) <= thr                # (16,), a prefix of True in an interval
        k = int(torch.nonzero(~zero)[0]) if bool((~zero).any()) else len(zero)
        lo, hi = (pts[k - 1:k] if k else lo), (pts[k:k + 1] if k < len(zero) else hi)
        if float((hi - lo).abs()) <= 1e-13 * max(1.0, float(lo.abs())):
            break
    return lo.reshape(1)


def _equilibrium(field: MeanField, h, group: list[dict], merge_tol: float, merge: bool
                 ) -> Equilibrium:
    """One :class:`Equilibrium` for a group of distinct points (a set when more than one, or
    when a 1-D degenerate zero turns out to lie on an interval)."""
    count = sum(pt["count"] for pt in group)
    thr = max(pt["thr"] for pt in group)
    group = sorted(group, key=lambda pt: pt["kind"] != "degenerate")   # a degenerate one first
    members = torch.stack([pt["theta"] for pt in group])
    if (len(group) == 1 and group[0]["kind"] != "degenerate") or not merge:
        pt = group[0]
        return Equilibrium(pt["theta"], pt["res"], pt["ev"], pt["kind"], pt["shape"],
                           switch_margin(field, pt["theta"]), count)
    if members.shape[1] == 1:
        lo, hi = members.min(0).values, members.max(0).values
        step = max(float(hi - lo), 1e-3 * max(1.0, float(hi.abs())))
        lower, upper = _edge(h, lo, -1.0, thr, step), _edge(h, hi, 1.0, thr, step)
    else:
        lower, upper = members.min(0).values, members.max(0).values
    scale = merge_tol * max(1.0, float(upper.norm()), float(lower.norm()))
    if len(group) == 1 and float((upper - lower).norm()) <= scale:
        pt = group[0]
        return Equilibrium(pt["theta"], pt["res"], pt["ev"], pt["kind"], pt["shape"],
                           switch_margin(field, pt["theta"]), count)
    if members.shape[1] == 1:
        theta = (lower + upper) / 2                      # an interval: its middle is a zero
        res = float(h(theta[None])[0].norm())
        ev = np.linalg.eigvals(field.jacobian(theta).double().cpu().numpy())
    else:
        k = int((members - members.mean(0)).norm(dim=1).argmin())
        theta, res, ev = members[k], group[k]["res"], group[k]["ev"]
    kind, shape = classify(ev)
    return Equilibrium(theta, res, ev, "degenerate", shape, switch_margin(field, theta), count,
                       lower=lower, upper=upper, members=members)


@dataclass(frozen=True)
class ClippingBias:
    """How far a clipped equilibrium is from what unclipped gradient descent would reach.

    Attributes
    ----------
    theta_star : tensor ``(P,)``
        The zero of ``H`` examined.
    grad_norm : float
        ``||grad L(theta*)||``, the unclipped full-data gradient at the clipped zero (0 if the
        paper's conclusion held).
    theta_unclipped : tensor ``(P,)``
        The unclipped minimiser found from ``theta*`` (local, L-BFGS).
    distance : float
        ``||theta* - theta_unclipped||``.
    loss_gap : float
        ``L(theta*) - L(theta_unclipped)``.
    """

    theta_star: torch.Tensor
    grad_norm: float
    theta_unclipped: torch.Tensor
    distance: float
    loss_gap: float


def clipping_bias(field: MeanField, theta_star: torch.Tensor, *,
                  theta_unclipped: torch.Tensor | None = None, gtol: float = 1e-12
                  ) -> ClippingBias:
    """Measure the clipping bias at a zero ``theta_star`` of ``H``.

    The unclipped minimiser is searched from ``theta_star`` (L-BFGS-B on the full-data loss with
    its exact gradient) unless given.

    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-3.0, -3.0, 9.0])
    >>> b = clipping_bias(sc.MeanField(p, sc.NormClip(1.0)), torch.tensor([-2.5]))
    >>> round(b.grad_norm, 6), round(float(b.theta_unclipped), 6)
    (3.5, 1.0)
    """
    p = field.problem
    t, _ = p.check_theta(theta_star, "theta_star")
    t = t[0]
    if theta_unclipped is None:
        def f(x: np.ndarray) -> tuple[float, np.ndarray]:
            th = torch.as_tensor(x, dtype=p.dtype)
            return float(p.loss(th)), p.gradient(th).double().cpu().numpy()

        import scipy.optimize

        sol = scipy.optimize.minimize(f, t.double().cpu().numpy(), jac=True, method="L-BFGS-B",
                                      options={"gtol": gtol, "ftol": 1e-15, "maxiter": 10_000})
        theta_unclipped = torch.as_tensor(sol.x, dtype=p.dtype)
    else:
        theta_unclipped, _ = p.check_theta(theta_unclipped, "theta_unclipped")
        theta_unclipped = theta_unclipped[0]
    gnorm = float(MeanField(p, NoClip())(t).norm())
    return ClippingBias(t, gnorm, theta_unclipped, float((t - theta_unclipped).norm()),
                        float(p.loss(t) - p.loss(theta_unclipped)))
