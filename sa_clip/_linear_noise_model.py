"""The noise model of :func:`sa_clip.linear_noise`: ``H``, ``DH`` and the one-step noise
covariance ``S`` at many points of the path (projected on a basis when given).

Split out of ``sa_clip/linear_noise.py``; import the names from there (they are re-exported).
"""

from __future__ import annotations

import torch
from torch.func import vjp, vmap

from .batchfield import FixedBatchField
from .meanfield import MeanField
from .problem import iter_chunks


# ---------------------------------------------------------------------------- the noise model
class _Noise:
    """``H``, ``DH`` and the one-step noise covariance ``S`` at many points, for one problem,
    rule, batch size and clipping granularity (projected on ``U`` when given)."""

    def __init__(self, field: MeanField, batch_size: int, clip_per: str, basis: torch.Tensor |
                 None, noise_samples: int, seed: int | None, max_elements: int,
                 invariance_tol: float):
        self.field, self.problem, self.rule = field, field.problem, field.rule
        self.m, self.clip_per, self.U = batch_size, clip_per, basis
        self.max_elements, self.invariance_tol = max_elements, invariance_tol
        p = self.problem
        self.batch = clip_per == "batch" and batch_size > 1
        self.noise = "exact"
        if self.batch:
            if p.N ** batch_size <= noise_samples:     # every ordered batch, each once
                idx = torch.cartesian_prod(*[torch.arange(p.N)] * batch_size).reshape(
                    -1, batch_size)
            else:
                gen = torch.Generator()
                gen.manual_seed(int(seed)) if seed is not None else gen.seed()
                idx = torch.randint(p.N, (noise_samples, batch_size), generator=gen)
                self.noise = f"monte carlo ({noise_samples} batches)"
            # H_M, S_M over fixed batches (common random numbers): a smooth, deterministic H_M
            self.fixed = FixedBatchField(field, batch_size, index=idx,
                                         max_elements=max_elements)

    def batch_field(self, th: torch.Tensor) -> torch.Tensor:
        return self.fixed(th)

    # -- the three quantities at K points ----------------------------------------------------
    def moments(self, th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H (K, P), S (K, P, P))``, ``S`` projected to ``(K, k, k)`` with a basis."""
        if self.batch:
            u = self.fixed.directions(th)                                # (K, B, P)
            h = u.mean(1)
            d = u - h[:, None]
            if self.U is not None:
                d = d @ self.U
            denom = u.shape[1] if self.noise == "exact" else u.shape[1] - 1
            return h, d.transpose(1, 2) @ d / denom
        if self.U is None:       # the field's own moments: its engine, chunks and shards
            h, second = self.field.update_moments(th)
            return h, (second - h[:, :, None] * h[:, None, :]) / self.m
        p, rule = self.problem, self.rule
        k = th.shape[0]
        q = self.U.shape[1]
        first = th.new_zeros(k, p.P)
        second = th.new_zeros(k, q, q)

        def clipped(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return rule.clip(p.per_sample_grads(t, x, y), t, p.layout)

        chunk = max(1, self.max_elements // max(1, k * p.P))
        with torch.no_grad():
            for s in iter_chunks(p.N, chunk):
                x, y = p.data(s)
                u = vmap(clipped, in_dims=(0, None, None))(th, x, y)       # (K, B, P)
                first += u.sum(1)
                u = u @ self.U                                               # (K, B, k)
                second += u.transpose(1, 2) @ u
        h = first / p.N
        hq = h @ self.U
        return h, (second / p.N - hq[:, :, None] * hq[:, None, :]) / self.m

    def jacobians(self, th: torch.Tensor) -> torch.Tensor:
        """``DH`` at ``K`` points, ``(K, P, P)``; with a basis the ``(K, k, k)`` matrix ``C``
        with ``U^T DH = C U^T`` (after checking that this closes)."""
        p = self.problem
        if self.U is not None:
            return torch.stack([self._projected_jacobian(t) for t in th])
        if self.batch:      # central differences of the deterministic fixed-batch H_M
            return self.fixed.jacobian(th)
        per = max(1, p.N * p.P * p.P)
        rows = max(1, self.max_elements * 4 // per)
        return torch.cat([self.field.jacobian(th[s]) for s in iter_chunks(th.shape[0], rows)])

    def _projected_jacobian(self, th: torch.Tensor) -> torch.Tensor:
        p, rule, U = self.problem, self.rule, self.U

        def h_of(t: torch.Tensor) -> torch.Tensor:
            total = torch.zeros_like(t)
            for s in iter_chunks(p.N, max(1, self.max_elements // max(1, p.P))):
                x, y = p.data(s)
                total = total + rule.clip(p.per_sample_grads(t, x, y), t, p.layout).sum(0)
            return total / p.N

        _, pull = vjp(h_of, th)
        g = torch.stack([pull(U[:, j])[0] for j in range(U.shape[1])])      # (k, P) = U^T J
        c = g @ U                                                            # (k, k)
        resid = float(torch.linalg.norm(g - c @ U.T))
        scale = float(torch.linalg.norm(g))
        if resid > self.invariance_tol * max(scale, 1e-300):
            raise ValueError(
                f"`basis` does not span a subspace invariant under DH^T at theta = "
                f"{_short(th)} (||U^T DH - C U^T|| = {resid:.3g} vs ||U^T DH|| = {scale:.3g}, "
                f"tolerance `invariance_tol` = {self.invariance_tol:g}): the projected "
                "covariance U^T V U then depends on directions outside the basis and obeys no "
                "closed equation. Pass a basis that DH^T maps into itself (e.g. the coordinates "
                "of one block of a block-diagonal DH, or left eigenvectors of DH at an "
                "equilibrium), or drop `basis` (full covariance, P <= `max_full`).")
        return c


def _short(t: torch.Tensor) -> str:
    v = t.reshape(-1)[:4].tolist()
    return "[" + ", ".join(f"{x:.4g}" for x in v) + (", ...]" if t.numel() > 4 else "]")

