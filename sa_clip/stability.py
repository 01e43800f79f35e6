r"""Stability bounds of clipped SGD, as the paper states them and as they can be checked
(SPEC section 5).

Classic clipping (Lemma 1): ``||u|| <= lam``, so the martingale ``M_s = sum_{t<s} a(t) u_t`` has
increments bounded by ``a(t) lam``. The paper's Hoeffding-Azuma bound (15) reads

.. math:: P(|M_s - M_0| > m) \le 2 \exp\big(-2 m^2 / (\gamma \lambda^2)\big),
          \qquad \gamma = \textstyle\sum_t a(t)^2,

while the standard Azuma-Hoeffding inequality for increments bounded by ``c_t = a(t) lam``
(``|X_t| <= c_t``, so a range of ``2 c_t``) gives ``2 exp(-m^2 / (2 sum c_t^2))``, four times
weaker in the exponent. Both are provided; :func:`exceedance_frequency` gives the empirical
frequency over many chains to put beside them.

Adaptive clipping (Claim 2): ``||u|| <= K (1 + ||theta||)`` with ``K = max(lam eps, lam, 1)``;
in fact ``||u|| <= lam max(||theta||, eps)`` always, which :func:`claim2_ratio` checks along runs.
"""

from __future__ import annotations

import math

import torch

from ._validate import check_choice, check_positive

AZUMA_FORMS = ("paper", "standard")


def azuma_log_bound(radius: float, lam: float, gamma: float, form: str = "paper") -> float:
    """Natural log of the Hoeffding-Azuma bound on ``P(|M_s - M_0| > radius)``.

    ``form="paper"``: ``log 2 - 2 m^2 / (gamma lam^2)`` (the paper's (15));
    ``form="standard"``: ``log 2 - m^2 / (2 gamma lam^2)`` (increments bounded by ``a(t) lam``).
    Returned as a log because the bounds underflow double precision (the paper's (16) is
    ``exp(-1416)``).

    >>> round(azuma_log_bound(2 ** 10, 30.0, math.pi ** 2 / 6), 1)
    -1415.9
    """
    m = check_positive("radius", radius)
    lam = check_positive("lam", lam)
    gamma = check_positive("gamma", gamma)
    check_choice("form", form, AZUMA_FORMS)
    k = 2.0 if form == "paper" else 0.5
    return math.log(2.0) - k * m * m / (gamma * lam * lam)


def exceedance_frequency(theta: torch.Tensor, radius: float) -> torch.Tensor:
    """Fraction of chains with ``||theta_k(s) - theta_k(0)|| > radius`` at each record ``s``.

    ``theta`` has shape ``(chains, records, P)`` (a ``Trajectory.theta``); returns ``(records,)``.
    Chains whose value is non-finite at a record (blown up) count as exceeding.

    >>> th = torch.tensor([[[0.0], [2.0]], [[0.0], [0.5]]])
    >>> exceedance_frequency(th, 1.0)
    tensor([0.0000, 0.5000])
    """
    check_positive("radius", radius)
    if theta.dim() != 3:
        raise ValueError(f"`theta` must have shape (chains, records, P), got {tuple(theta.shape)}.")
    d = (theta - theta[:, :1]).norm(dim=-1)
    out = (d > radius) | ~torch.isfinite(d)
    return out.to(torch.float64).mean(0)


def claim2_ratio(u_norm: torch.Tensor, theta_norm: torch.Tensor, lam: float, eps: float
                 ) -> torch.Tensor:
    """``||u|| / (K (1 + ||theta||))`` with ``K = max(lam eps, lam, 1)``: Claim 2 says ``<= 1``.

    >>> claim2_ratio(torch.tensor([1.0]), torch.tensor([1.0]), 0.5, 1e-3)
    tensor([0.5000])
    """
    K = max(lam * eps, lam, 1.0)
    return u_norm / (K * (1.0 + theta_norm))
