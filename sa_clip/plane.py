r"""Two-dimensional views of parameter space, for phase portraits (analysis layer).

A :class:`Plane` is ``theta(a, b) = center + a d1 + b d2``. For 2-parameter problems it is the
parameter plane itself (:meth:`Plane.coordinates`); for larger networks the directions come from
a PCA of trajectories (:meth:`Plane.pca`) or are random and filter-normalised
(:meth:`Plane.random`, Li et al. 2018, "Visualizing the loss landscape of neural nets").

:func:`field_on_plane` evaluates ``-H`` on a grid of the plane in ONE batched call of the mean
field and projects it onto the plane (least squares onto ``span(d1, d2)``), which is what a phase
portrait draws. For ``P > 2`` the projected field is a section of the flow, not a flow of its
own: curves that follow it need not be projections of ODE solutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._memory import pca_rows
from ._validate import check_nonneg_int
from .meanfield import MeanField
from .problem import Problem

#: points per chunk of :meth:`Plane.project`
PROJECT_ROWS = 4096
#: grid points per batched evaluation of H and the loss in :func:`field_on_plane`
GRID_ROWS = 64


@dataclass(frozen=True)
class Plane:
    """``theta(a, b) = center + a * d1 + b * d2``; ``names`` label the two axes.

    ``explained``: for a PCA plane, the fractions of the points' variance along ``d1`` and
    ``d2`` (``None`` otherwise); :meth:`label` puts them on the axes.
    """

    center: torch.Tensor
    d1: torch.Tensor
    d2: torch.Tensor
    names: tuple[str, str] = ("a", "b")
    explained: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (self.center.shape == self.d1.shape == self.d2.shape) or self.center.dim() != 1:
            raise ValueError(f"`center`, `d1`, `d2` must all have shape (P,), got "
                             f"{tuple(self.center.shape)}, {tuple(self.d1.shape)}, "
                             f"{tuple(self.d2.shape)}.")
        basis = torch.stack([self.d1, self.d2], 1).double()
        if torch.linalg.matrix_rank(basis) < 2:
            raise ValueError("`d1` and `d2` must be linearly independent.")

    def label(self, i: int) -> str:
        """Axis label of coordinate ``i``: the name, with its share of the variance for a PCA
        plane (``"PC1 (62% of variance)"``)."""
        if i not in (0, 1):
            raise ValueError(f"`i` must be 0 or 1, got {i!r}.")
        if self.explained is None:
            return self.names[i]
        return f"{self.names[i]} ({self.explained[i]:.0%} of variance)"

    @property
    def basis(self) -> torch.Tensor:
        """``(P, 2)`` matrix ``[d1 d2]``."""
        return torch.stack([self.d1, self.d2], 1)

    def points(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Grid points, shape ``(len(b), len(a), P)`` (rows follow ``b``, as matplotlib wants)."""
        A, Bm = torch.meshgrid(a.to(self.center), b.to(self.center), indexing="xy")
        return self.center + A[..., None] * self.d1 + Bm[..., None] * self.d2

    def project(self, theta: torch.Tensor) -> torch.Tensor:
        """Plane coordinates ``(..., 2)`` of points ``theta (..., P)`` (least squares).

        Many points are projected :data:`PROJECT_ROWS` at a time, so projecting a whole
        ensemble (``chains x records x P``) never holds a second copy of it.
        """
        rows = theta.reshape(-1, theta.shape[-1])
        if len(rows) <= PROJECT_ROWS:
            return self.project_vector(theta - self.center)
        out = torch.cat([self.project_vector(rows[i:i + PROJECT_ROWS] - self.center)
                         for i in range(0, len(rows), PROJECT_ROWS)])
        return out.reshape(*theta.shape[:-1], 2)

    def project_vector(self, v: torch.Tensor) -> torch.Tensor:
        """Components ``(..., 2)`` of vectors ``v (..., P)`` in the basis ``d1, d2``."""
        pinv = torch.linalg.pinv(self.basis.double()).to(v.dtype)      # (2, P)
        return v @ pinv.T

    @classmethod
    def coordinates(cls, problem: Problem, i: int = 0, j: int = 1,
                    center: torch.Tensor | None = None) -> Plane:
        """The plane of parameters ``i`` and ``j`` (the whole space for 2-parameter problems),
        through ``center`` (default: the origin for ``P = 2``, ``theta0`` otherwise)."""
        if not isinstance(problem, Problem):
            raise TypeError(f"`problem` must be a sa_clip.Problem, got {type(problem).__name__}.")
        P = problem.P
        for name, k in (("i", i), ("j", j)):
            if not 0 <= k < P:
                raise ValueError(f"`{name}` must index a parameter in [0, {P - 1}], got {k}.")
        if i == j:
            raise ValueError(f"`i` and `j` must differ, got {i} and {j}.")
        eye = torch.eye(P, dtype=problem.dtype, device=problem.device)
        if center is None:
            center = torch.zeros(P, dtype=problem.dtype) if P == 2 else problem.theta0
        return cls(center.to(eye), eye[i], eye[j], (_param_name(problem, i),
                                                    _param_name(problem, j)))

    @classmethod
    def pca(cls, points: torch.Tensor, center: torch.Tensor | None = None) -> Plane:
        """The two principal directions of ``points (..., P)`` (e.g. ``trajectory.theta``),
        through ``center`` (default: their mean). Axes are named PC1 and PC2; ``explained``
        holds the fraction of the points' total variance along each,
        ``sigma_i^2 / sum_j sigma_j^2`` (singular values of the centred points)."""
        x = points.reshape(-1, points.shape[-1])
        x = x[torch.isfinite(x).all(-1)]
        if len(x) < 3:
            raise ValueError("`points` must hold at least 3 finite points for a PCA plane.")
        mean = x.mean(0)
        _, sv, vh = torch.linalg.svd((x - mean).double(), full_matrices=False)
        c = mean if center is None else center
        var = sv ** 2
        total = float(var.sum())
        share = (float(var[0]) / total, float(var[1]) / total) if total > 0 else (0.0, 0.0)
        return cls(c, vh[0].to(x.dtype), vh[1].to(x.dtype), ("PC1", "PC2"), share)

    @classmethod
    def random(cls, problem: Problem, center: torch.Tensor | None = None, *, seed: int = 0,
               filter_normalize: bool = True) -> Plane:
        """Two random Gaussian directions; with ``filter_normalize`` each unit (row of a weight
        matrix; a 0-d or 1-d tensor as a whole) is rescaled to the norm of the same unit of
        ``center`` (Li et al. 2018), so the plane is insensitive to weight scale."""
        c = problem.theta0 if center is None else problem.check_theta(center, "center")[0][0]
        gen = torch.Generator().manual_seed(seed)
        ds = []
        for _ in range(2):
            d = torch.randn(problem.P, generator=gen, dtype=torch.float64).to(c)
            if filter_normalize:
                from .problem import group_norms
                index, _ = problem.layout.groups("unit", c.device)
                dn = group_norms(d, problem.layout, "unit")
                cn = group_norms(c, problem.layout, "unit")
                d = d * (cn / torch.where(dn > 0, dn, torch.ones_like(dn)))[index]
            ds.append(d)
        return cls(c, ds[0], ds[1], ("direction 1", "direction 2"))


def pca_plane(*paths: torch.Tensor, chunk: int = 1024) -> Plane:
    """The PCA plane of all finite points of ``paths`` (each ``(..., P)``, e.g. the chains and
    the ODE path) through their mean: :meth:`Plane.pca` without a copy of the points.

    The thin SVD ``X_c = U S V^T`` of the ``n x P`` centred points gives the directions; it is
    read off the smaller of the two Gram matrices, formed ``chunk`` rows at a time in float64:
    ``X_c^T X_c = V S^2 V^T`` (``P x P``) when ``P <= n``, else ``X_c X_c^T = U S^2 U^T``
    (``n x n``, then ``v_k = X_c^T u_k / s_k``). So a network of a million parameters with a
    few thousand recorded points needs an ``n x n`` matrix, never ``P x P``
    (:func:`sa_clip._memory.pca_memory` gives the bytes). ``explained``: ``s_k^2 / trace``.

    >>> gen = torch.Generator().manual_seed(0)
    >>> pts = torch.randn(200, 3, generator=gen, dtype=torch.float64) * torch.tensor(
    ...     [5.0, 1.0, 0.1], dtype=torch.float64)
    >>> pl = pca_plane(pts)
    >>> [round(abs(float(v)), 1) for v in pl.d1]
    [1.0, 0.0, 0.0]
    """
    if not paths:
        raise ValueError("`pca_plane` needs at least one array of points.")
    p_dim, dev, dtype = paths[0].shape[-1], paths[0].device, paths[0].dtype
    chunk = pca_rows(chunk, p_dim)
    blocks = []                                   # (rows view, finite mask) per chunk
    for pt in paths:
        if pt.shape[-1] != p_dim:
            raise ValueError(f"all `paths` must have the same last axis P = {p_dim}, got "
                             f"{tuple(pt.shape)}.")
        rows = pt.reshape(-1, p_dim)
        for i in range(0, len(rows), chunk):
            x = rows[i:i + chunk]
            ok = torch.isfinite(x).all(1)
            if bool(ok.any()):
                blocks.append((x, ok))
    n = sum(int(ok.sum()) for _, ok in blocks)
    if n < 3:
        raise ValueError(f"the PCA plane needs at least 3 finite points, got {n}.")
    mean = sum(x[ok].to(torch.float64).sum(0) for x, ok in blocks) / n

    def centred(k: int) -> torch.Tensor:
        x, ok = blocks[k]
        return x[ok].to(torch.float64) - mean

    if p_dim <= n:                                # P x P: the right singular vectors
        gram = torch.zeros(p_dim, p_dim, dtype=torch.float64, device=dev)
        for k in range(len(blocks)):
            xc = centred(k)
            gram.addmm_(xc.T, xc)
        vals, vecs = torch.linalg.eigh(gram)      # ascending
        d1, d2 = vecs[:, -1], vecs[:, -2]
    else:                                         # n x n: left singular vectors, then V
        sizes = [int(ok.sum()) for _, ok in blocks]
        offs = [0]
        for m in sizes:
            offs.append(offs[-1] + m)
        gram = torch.empty(n, n, dtype=torch.float64, device=dev)
        for i in range(len(blocks)):
            xi = centred(i)
            for j in range(i + 1):
                xj = xi if j == i else centred(j)
                g = xi @ xj.T
                gram[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] = g
                gram[offs[j]:offs[j + 1], offs[i]:offs[i + 1]] = g.T
        vals, u = torch.linalg.eigh(gram)
        ds = []
        for col in (-1, -2):
            d = sum(centred(k).T @ u[offs[k]:offs[k + 1], col] for k in range(len(blocks)))
            ds.append(d / torch.linalg.vector_norm(d).clamp_min(1e-300))
        d1, d2 = ds
    total = float(vals.clamp(min=0).sum())
    explained = (float(vals[-1]) / total, float(vals[-2]) / total) if total > 0 else None
    return Plane(mean.to(dtype), d1.to(dtype), d2.to(dtype), ("PC1", "PC2"),
                 explained=explained)


def _param_name(problem: Problem, k: int) -> str:
    """Parameter ``k`` in words: ``"layer 2, weight (3, 1)"`` for entry ``(3, 1)`` of the
    tensor ``2.weight``, ``"fc, bias 4"``, or the tensor's name for a scalar (``"w1"``)."""
    for b in problem.blocks:
        if b.start <= k < b.stop:
            if b.numel == 1:
                return b.name
            module, _, param = b.name.rpartition(".")
            idx, rest = [], k - b.start
            for d in reversed(b.shape or (b.numel,)):
                idx.insert(0, rest % d)
                rest //= d
            where = str(idx[0]) if len(idx) == 1 else f"({', '.join(map(str, idx))})"
            if not module:                          # a bare tensor: w[0], w[1, 2]
                return f"{param}[{where.strip('()')}]"
            owner = f"layer {module}" if module.isdigit() else module
            return f"{owner}, {param} {where}"
    return f"theta[{k}]"


@dataclass(frozen=True)
class PlaneField:
    """``-H`` on a grid of a plane.

    Attributes
    ----------
    plane : Plane
        The plane the field is drawn on.
    a, b : tensors ``(na,)``, ``(nb,)``
        Grid coordinates along the plane's two directions.
    flow : tensor ``(nb, na, 2)``
        Plane components of ``-H`` at each grid point.
    speed : tensor ``(nb, na)``
        Norm of the projected flow.
    loss : tensor ``(nb, na)`` or None
        Full-data loss at each grid point.
    residual : tensor ``(nb, na)``
        Norm of the part of ``-H`` orthogonal to the plane (0 for P = 2).
    """

    plane: Plane
    a: torch.Tensor
    b: torch.Tensor
    flow: torch.Tensor
    speed: torch.Tensor
    loss: torch.Tensor | None
    residual: torch.Tensor


def field_on_plane(field: MeanField, plane: Plane, a_range: tuple[float, float],
                   b_range: tuple[float, float], n: int = 41, *, with_loss: bool = True
                   ) -> PlaneField:
    """Evaluate ``-H`` on an ``n x n`` grid of ``plane`` in one batched call and project it.

    >>> import sa_clip as sc
    >>> p = sc.problems.tanh_regression()
    >>> pf = field_on_plane(sc.MeanField(p, sc.NormClip(1.0)), Plane.coordinates(p),
    ...                     (-3, 3), (-3, 3), n=5)
    >>> tuple(pf.flow.shape)
    (5, 5, 2)
    """
    n = check_nonneg_int("n", n, minimum=2)
    for name, rng in (("a_range", a_range), ("b_range", b_range)):
        try:
            lo, hi = map(float, rng)
        except (TypeError, ValueError):
            raise TypeError(f"`{name}` must be a pair of numbers (lo, hi), got {rng!r}.") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"`{name}` must be finite numbers with lo < hi, got {rng!r}.")
    p = field.problem
    a = torch.linspace(*map(float, a_range), n, dtype=p.dtype)
    b = torch.linspace(*map(float, b_range), n, dtype=p.dtype)
    pts = plane.points(a, b)
    flat = pts.reshape(-1, p.P)
    # GRID_ROWS points per call: the batched H and loss hold (points x samples x width)
    # activations, ~0.2 GB for a 41 x 41 grid on the wine network in one call
    blocks = [flat[i:i + GRID_ROWS] for i in range(0, len(flat), GRID_ROWS)]
    minus_h = -torch.cat([field(x) for x in blocks])
    comp = plane.project_vector(minus_h)
    resid = (minus_h - comp @ plane.basis.T.to(comp)).norm(dim=-1)
    loss = torch.cat([p.loss(x) for x in blocks]).reshape(n, n) if with_loss else None
    flow = comp.reshape(n, n, 2)
    return PlaneField(plane, a, b, flow, flow.norm(dim=-1), loss, resid.reshape(n, n))
