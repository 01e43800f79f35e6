r"""Stability bounds of clipped SGD, as the paper states them and as they can be checked
(docs/theory.md#stability).

Classic clipping (Lemma 1): ``||u|| <= lam``, so the martingale ``M_s = sum_{t<s} a(t) u_t`` has
increments bounded by ``a(t) lam``. The paper's Hoeffding-Azuma bound (15) reads

.. math:: P(|M_s - M_0| > m) \le 2 \exp\big(-2 m^2 / (\gamma \lambda^2)\big),
          \qquad \gamma = \textstyle\sum_t a(t)^2,

while the standard Azuma-Hoeffding inequality for increments bounded by ``c_t = a(t) lam``
(``|X_t| <= c_t``, so a range of ``2 c_t``) gives ``2 exp(-m^2 / (2 sum c_t^2))``, four times
weaker in the exponent. Both are provided; :func:`exceedance_frequency` gives the empirical
frequency over many chains to put beside them. On a case where ``H = 0`` and every update is
``+-lam`` (data ``{-3, 3}``, ``lam = 1``, theta in ``[-2, 2]``: a Rademacher walk with steps
``a(t) lam``) the empirical frequency exceeds the paper's bound while the standard one holds
(``tests/test_stability.py``, ``examples/azuma_stability.py``): cite the standard form.
For the centred noise ``M = u - H`` of a general run the increments are only bounded by
``2 a(t) lam``; the bounds here then apply with ``lam`` replaced by ``2 lam``.

Adaptive clipping (Claim 2): ``||u|| <= K (1 + ||theta||)`` with ``K = max(lam eps, lam, 1)``;
in fact ``||u|| <= lam max(||theta||, eps)`` always, which :func:`claim2_ratio` checks along runs.

Types: tensors as everywhere in sa_clip; :func:`azuma_log_bound` returns a Python float (one
number, often below double precision's range as a probability, hence the log).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._validate import check_choice, check_nonneg_int, check_positive
from .clipping import ClipRule
from .meanfield import MeanField
from .problem import Problem
from .sgd import simulate_sgd, step_direction

AZUMA_FORMS = ("paper", "standard")


def azuma_log_bound(radius: float, lam: float, gamma: float, form: str = "standard"
                    ) -> float:
    """Natural log of the Hoeffding-Azuma bound on ``P(|M_s - M_0| > radius)``.

    ``form="standard"`` (default): ``log 2 - m^2 / (2 gamma lam^2)``, the Azuma-Hoeffding
    inequality for increments bounded by ``a(t) lam``; it holds in our Monte Carlo.
    ``form="paper"``: ``log 2 - 2 m^2 / (gamma lam^2)``, the paper's (15), four times stronger
    in the exponent and violated by the Rademacher walk of the module docstring; kept, named,
    to reproduce the paper's (16). Returned as a log because the bounds underflow double
    precision (the paper's (16) is ``exp(-1416)``).

    >>> round(azuma_log_bound(2 ** 10, 30.0, math.pi ** 2 / 6, form="paper"), 1)
    -1415.9
    >>> round(azuma_log_bound(2 ** 10, 30.0, math.pi ** 2 / 6), 1)
    -353.5
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
    >>> exceedance_frequency(th, 1.0).tolist()
    [0.0, 0.5]
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


def update_directions(run: Any, field: MeanField, clip_per: str | None = None) -> torch.Tensor:
    """The update directions ``u(theta_k(n); batch_k(n))`` of every step of a recorded run,
    recomputed by the step of :func:`sa_clip.sgd.sgd_step` (its
    :func:`~sa_clip.sgd.step_direction`) in one batched call: ``(chains, steps, P)``.

    ``run`` must be a :class:`~sa_clip.Trajectory` recorded at every step (``record_every=1``)
    with its batches (``record_indices=True``). Steps after a chain's blow-up are NaN.
    Check: ``theta(n+1) = theta(n) - a(n) u(n)`` (without projection).

    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-1.0, 1.0])
    >>> run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:1", steps=3, chains=2, seed=0,
    ...                       record_indices=True)
    >>> update_directions(run, sc.MeanField(p, sc.NormClip(0.5))).abs().max().item() <= 0.5
    True
    """
    if run.indices is None:
        raise ValueError("`run` has no recorded batches: simulate with record_indices=True.")
    steps = run.indices.shape[1]
    if run.records != steps + 1:
        raise ValueError(f"`run` must be recorded at every step (record_every=1): it has "
                         f"{run.records} records for {steps} steps.")
    if clip_per is None:
        clip_per = run.meta.get("clip_per", "sample")
    K, P = run.chains, run.theta.shape[-1]
    theta = run.theta[:, :-1].reshape(K * steps, P)
    idx = run.indices.reshape(K * steps, -1).to(theta.device)
    ok = torch.isfinite(theta).all(-1)
    u = torch.full_like(theta, float("nan"))
    if bool(ok.any()):   # the direction of sgd_step, for all (chain, step) pairs at once
        with torch.no_grad():
            u[ok] = step_direction(field, theta[ok], idx[ok], clip_per)[0]
    return u.reshape(K, steps, P)


@dataclass(frozen=True)
class BlowupResult:
    """Blow-up frequency of clipped SGD as the clipping parameter grows.

    Attributes
    ----------
    lams : float64 tensor ``(L,)``
        The clipping parameters.
    frequency : tensor ``(L,)``
        Fraction of chains that blew up within ``steps``.
    median_step : tensor ``(L,)``
        Median blow-up step among chains that blew up (NaN where none did).
    chains, steps : int
        The run sizes.
    """

    lams: torch.Tensor
    frequency: torch.Tensor
    median_step: torch.Tensor
    chains: int
    steps: int


def blowup_frequency(problem: Problem, rule_factory: Callable[[float], ClipRule],
                     lams: Sequence[float], schedule: Any, *, steps: int, chains: int,
                     batch_size: int = 1, seed: int = 0, theta0: Any = None,
                     blowup_radius: float = 1e6, clip_per: str = "sample") -> BlowupResult:
    """Fraction of ``chains`` independent clipped-SGD chains that blow up (non-finite or
    ``||theta|| > blowup_radius``, see :func:`sa_clip.simulate_sgd`) for each ``lam``.

    Adaptive clipping (17) only bounds ``||u|| <= lam max(||theta||, eps)`` (Claim 2), which
    allows geometric growth of ``||theta||``; classic clipping (``||u|| <= lam``) cannot blow up.
    One :func:`~sa_clip.simulate_sgd` call (all chains batched) per ``lam``, with the same seed.

    >>> import sa_clip as sc
    >>> p = sc.problems.location_problem([-1.0, 1.0])
    >>> r = blowup_frequency(p, sc.NormClip, [0.5, 1.0], "harmonic:1", steps=5, chains=4)
    >>> r.frequency.tolist()
    [0.0, 0.0]
    """
    if not callable(rule_factory):
        raise TypeError(f"`rule_factory` must be a callable lam -> ClipRule, got "
                        f"{type(rule_factory).__name__}.")
    lam_t = torch.as_tensor(list(lams), dtype=torch.float64)
    if lam_t.dim() != 1 or lam_t.numel() == 0 or not bool(
            (torch.isfinite(lam_t) & (lam_t > 0)).all()):
        raise ValueError(f"`lams` must be a non-empty sequence of finite numbers > 0, got "
                         f"{list(lams)!r}.")
    steps = check_nonneg_int("steps", steps, minimum=1)
    chains = check_nonneg_int("chains", chains, minimum=1)
    freq, med = [], []
    for lam in lam_t.tolist():
        run = simulate_sgd(problem, rule_factory(lam), schedule, steps=steps, chains=chains,
                           batch_size=batch_size, seed=seed, theta0=theta0,
                           record_every=steps, blowup_radius=blowup_radius, clip_per=clip_per)
        b = run.blowup_step[run.blown_up].to(torch.float64)
        freq.append(float(run.blown_up.to(torch.float64).mean()))
        med.append(float(b.median()) if b.numel() else float("nan"))
    return BlowupResult(lam_t, torch.tensor(freq, dtype=torch.float64),
                        torch.tensor(med, dtype=torch.float64), chains, steps)
