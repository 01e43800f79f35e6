r"""The Gaussian moment closure behind ``linear_noise(..., form="gaussian")``.

The chains' law at step ``n`` is replaced by a Gaussian ``N(m, V)`` whose two moments are
propagated with the expectations of the mean field and of the noise under that Gaussian,
instead of their values on the ODE path. With ``theta = m + L z``, ``L L^T = V``,
``z ~ N(0, I)``:

* ``E[H] = E[H(m + L z)]``;
* ``C = Cov(H(theta), theta) = E[H(m + L z) z^T] L^T``, which equals ``E[DH] V`` by Stein's
  lemma (``E[DH] = E[H z^T] L^{-1}``) but needs only ``H``, never its Jacobian, so the kinks
  of clipped ``H`` (where ``DH`` jumps) are integrated as kinks, not as jumps;
* ``Cov(H) = E[H H^T] - E[H] E[H]^T`` and ``E[S]``.

Discrete (one SGD step, the exact first two moments of ``theta - a u(theta)`` when ``theta``
is Gaussian):

.. math:: m' = m - a\,E[H], \qquad V' = V - a (C + C^T) + a^2 (\mathrm{Cov}(H) + E[S]);

continuous: ``dm/dtau = -E[H]``, ``dV/dtau = -(C + C^T) + a(tau) E[S]``. For ``H`` linear over
the spread, ``H = J (theta - theta*)``, ``C = J V``, ``Cov(H) = J V J^T``: the first-order
(linear-noise) forms, with ``m`` on the ODE path.

Expectations are weighted sums over nodes ``z_q`` with ``sum w_q z_q = 0`` and
``sum w_q z_q z_q^T = I`` exactly, so the reduction above holds for every quadrature:

* ``"gauss-hermite"``: the tensor product of ``k``-point rules, ``k^P`` nodes (few
  parameters);
* ``"sigma"``: the ``2P + 1`` sigma points of the unscented transform (exact for quadratic
  ``H``, blind to kinks between the points);
* ``"samples"``: ``R`` fixed Gaussian draws in antithetic pairs, whitened to moments 0 and
  ``I`` (many parameters), the same at every step (common random numbers: a smooth closure).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

QUADRATURES = ("auto", "gauss-hermite", "sigma", "samples")
#: Nodes of the automatic choice: Gauss-Hermite with the largest ``k <= 12`` per dimension such
#: that ``k^P <= AUTO_GH`` (8 x 8 for two parameters), or ``k = 3`` while ``3^P <= AUTO_NODES``
#: (up to 5 parameters); beyond that ``AUTO_NODES`` fixed samples.
AUTO_GH = 64
AUTO_NODES = 256


def _auto_order(P: int) -> int:
    """Gauss-Hermite points per dimension of the automatic choice (0: use samples)."""
    k = min(12, int(math.floor(AUTO_GH ** (1.0 / P) + 1e-9)))
    if k >= 3:
        return k
    return 3 if 3 ** P <= AUTO_NODES else 0


def quadrature_nodes(P: int, kind: str = "auto", nodes: int | None = None, seed: int | None = 0,
                     dtype: torch.dtype = torch.float64, device=None
                     ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Nodes ``z (Q, P)`` and weights ``w (Q,)`` with ``sum w = 1``, ``sum w z = 0`` and
    ``sum w z z^T = I``, and a description.

    ``nodes``: points per dimension for ``"gauss-hermite"`` (default the largest ``k <= 12``
    with ``k^P <= 64``, at least 3: 8 for two parameters), the number of samples for
    ``"samples"`` (default 256, at least ``2 P + 2``); ignored for ``"sigma"``. ``"auto"``:
    Gauss-Hermite up to 5 parameters (``3^5 = 243`` nodes), samples beyond.

    >>> z, w, what = quadrature_nodes(2, "gauss-hermite", 5)
    >>> z.shape, what
    (torch.Size([25, 2]), 'gauss-hermite 5^2 = 25 nodes')
    >>> torch.allclose((w[:, None] * z).T @ z, torch.eye(2, dtype=z.dtype))
    True
    """
    if kind == "auto":
        if _auto_order(P):
            kind = "gauss-hermite"
        else:
            kind = "samples"
    if kind == "gauss-hermite":
        k = nodes if nodes is not None else max(3, _auto_order(P))
        if k < 1:
            raise ValueError(f"`nodes` must be >= 1 for Gauss-Hermite, got {k}.")
        if float(k) ** P > 1e7:
            raise ValueError(f"Gauss-Hermite with {k} nodes per dimension in P = {P} dimensions "
                             f"needs {float(k) ** P:.3g} nodes: use quadrature='samples' (or "
                             "'sigma') for this many parameters.")
        x, wt = np.polynomial.hermite_e.hermegauss(k)        # weight exp(-x^2 / 2)
        x1 = torch.tensor(x, dtype=dtype, device=device)
        w1 = torch.tensor(wt / wt.sum(), dtype=dtype, device=device)
        z = torch.cartesian_prod(*[x1] * P).reshape(-1, P)
        w = torch.cartesian_prod(*[w1] * P).reshape(-1, P).prod(1)
        what = f"gauss-hermite {k}^{P} = {z.shape[0]} nodes"
    elif kind == "sigma":
        kappa = max(3.0 - P, 0.0)
        r = math.sqrt(P + kappa)
        eye = torch.eye(P, dtype=dtype, device=device)
        z = torch.cat([torch.zeros(1, P, dtype=dtype, device=device), r * eye, -r * eye])
        w = torch.full((2 * P + 1,), 1 / (2 * (P + kappa)), dtype=dtype, device=device)
        w[0] = kappa / (P + kappa)
        what = f"sigma points, {2 * P + 1} nodes"
    elif kind == "samples":
        n = AUTO_NODES if nodes is None else nodes
        n = max(n, 2 * P + 2)
        n += n % 2
        gen = torch.Generator()
        gen.manual_seed(0 if seed is None else int(seed))
        half = torch.randn(n // 2, P, generator=gen, dtype=torch.float64)
        z = torch.cat([half, -half])                          # mean exactly 0
        cov = z.T @ z / n
        evals, evecs = torch.linalg.eigh(cov)
        z = z @ (evecs * evals.rsqrt()) @ evecs.T             # covariance exactly I
        z = z.to(dtype=dtype, device=device)
        w = torch.full((n,), 1.0 / n, dtype=dtype, device=device)
        what = f"{n} fixed Gaussian samples (antithetic, whitened)"
    else:
        raise ValueError(f"`quadrature` must be one of {list(QUADRATURES)}, got {kind!r}.")
    return z, w, what


def sqrt_psd(V: torch.Tensor) -> torch.Tensor:
    """Symmetric square root ``L`` (``L L^T = V``) of the symmetric part of ``V``, negative
    eigenvalues (round-off of an integrator) set to 0."""
    evals, evecs = torch.linalg.eigh((V + V.T) / 2)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


class Closure:
    """Gaussian expectations of ``H``, ``Cov(H, theta)``, ``Cov(H)`` and ``S``.

    ``moments(th (K, P)) -> (H (K, P), S (K, P, P))`` evaluates the mean field and the one-step
    noise covariance at ``K`` points; ``max_elements`` bounds ``K P^2`` per call.
    """

    def __init__(self, moments: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 z: torch.Tensor, w: torch.Tensor, max_elements: int):
        self.moments, self.z, self.w = moments, z, w
        P = z.shape[1]
        self.chunk = max(1, max_elements // max(1, P * P))
        self.nfev = 0

    def __call__(self, m: torch.Tensor, V: torch.Tensor, extra: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, ...]:
        """``(E[H] (P,), C = Cov(H, theta) (P, P), Cov(H) (P, P), E[S] (P, P))`` under
        ``N(m, V)``; with ``extra`` (one point ``(P,)``), ``H(extra)`` as well, from the same
        batched call."""
        L = sqrt_psd(V)
        z, w = self.z, self.w
        th = m + z @ L.T
        wS = w
        if extra is not None:       # weight 0 in E[S]
            th = torch.cat([th, extra[None]])
            wS = torch.cat([w, w.new_zeros(1)])
        P = m.numel()
        h = th.new_zeros(th.shape[0], P)
        ES = th.new_zeros(P, P)
        for s in range(0, th.shape[0], self.chunk):
            hh, S = self.moments(th[s:s + self.chunk])
            h[s:s + self.chunk] = hh
            ES += torch.einsum("q,qij->ij", wS[s:s + self.chunk], S)
        self.nfev += th.shape[0]
        h_extra = None
        if extra is not None:
            h, h_extra = h[:-1], h[-1]
        Eh = w @ h
        C = ((w[:, None] * h).T @ z) @ L.T                    # E[H z^T] L^T
        d = h - Eh
        CH = (w[:, None] * d).T @ d
        return (Eh, C, CH, ES) if extra is None else (Eh, C, CH, ES, h_extra)


def discrete_step(closure: Closure, m: torch.Tensor, V: torch.Tensor, a: float,
                  free: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One SGD step of the closure: ``(m', V', Cov(theta, theta'), free')``, ``free`` the
    noise-free path ``free' = free - a H(free)`` (evaluated in the same batch)."""
    Eh, C, CH, ES, h_free = closure(m, V, free)
    V1 = V - a * (C + C.T) + a * a * (CH + ES)
    return m - a * Eh, (V1 + V1.T) / 2, V - a * C.T, free - a * h_free


def rhs(closure: Closure, m: torch.Tensor, V: torch.Tensor, a: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dm/dtau, dV/dtau)`` of the continuous closure."""
    Eh, C, _, ES = closure(m, V)
    return -Eh, -(C + C.T) + a * ES


__all__ = ["QUADRATURES", "quadrature_nodes", "sqrt_psd", "Closure", "discrete_step", "rhs"]
