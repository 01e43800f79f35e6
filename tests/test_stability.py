"""sa_clip.stability: the Azuma bounds (the paper's and the standard form) in closed form and
against many chains, Claim 2 along adaptive runs, blow-up frequencies."""

import math

import pytest
import torch
from scipy.stats import binom

import sa_clip as sc
from sa_clip.stability import (
    azuma_log_bound,
    blowup_frequency,
    claim2_ratio,
    exceedance_frequency,
    update_directions,
)


def test_azuma_rademacher_walk_breaks_the_paper_bound():
    """Two points {-3, 3}, lam = 1: on [-2, 2] H = 0 and u = +-1, so theta is a Rademacher
    walk with increments exactly +- a(t) lam, the extreme case of Azuma. The standard bound
    holds; the paper's (15), four times stronger in the exponent, is below the truth."""
    p = sc.problems.location_problem([-3.0, 3.0])
    sched, steps, chains = sc.Harmonic(0.5), 200, 2000
    run = sc.simulate_sgd(p, sc.NormClip(1.0), sched, steps=steps, chains=chains, seed=3,
                          record_every=steps, record_noise=True)
    # inside the flat region the displacement is the martingale xi itself
    inside = run.theta[:, -1, 0].abs() < 2
    assert torch.allclose(run.theta[inside, -1] - run.theta[inside, 0], -run.xi[inside, -1])
    gamma = float((sched.rates(steps) ** 2).sum())
    for m in (0.75, 1.0, 1.25):
        k = int(round(float(exceedance_frequency(run.theta, m)[-1]) * chains))
        paper = math.exp(azuma_log_bound(m, 1.0, gamma, "paper"))
        standard = math.exp(azuma_log_bound(m, 1.0, gamma, "standard"))
        # at most k exceedances would be seen with probability 1e-6 if the truth were `standard`
        assert k <= binom.ppf(1 - 1e-6, chains, min(standard, 1.0))
        # and at least k would be seen with probability < 1e-6 if the truth were `paper`
        assert binom.sf(k - 1, chains, paper) < 1e-6, (m, k, paper)


def test_azuma_both_bounds_hold_with_small_noise():
    """Gradients well inside the clipping ball (noise << lam): both bounds hold with room."""
    data = torch.linspace(-0.5, 0.5, 9).tolist()
    p = sc.problems.location_problem(data)
    sched, steps, chains = sc.Harmonic(0.5), 100, 1000
    run = sc.simulate_sgd(p, sc.NormClip(1.0), sched, steps=steps, chains=chains, seed=4,
                          record_every=steps)
    gamma = float((sched.rates(steps) ** 2).sum())
    for m in (0.1, 0.2, 0.3):
        f = float(exceedance_frequency(run.theta, m)[-1])
        for form in ("paper", "standard"):
            assert f <= math.exp(azuma_log_bound(m, 1.0, gamma, form))


def test_claim2_along_adaptive_runs():
    p = sc.problems.tanh_regression(n=32)
    lam, eps = 0.5, 1e-3
    rule = sc.AdaptiveClip(lam, eps)
    sched = sc.Harmonic(1.0)
    th0 = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-3.0, 0.5], [1e-4, 1e-4]], dtype=torch.float64)
    run = sc.simulate_sgd(p, rule, sched, steps=60, chains=4, batch_size=2, seed=5, theta0=th0,
                          record_indices=True)
    u = update_directions(run, sc.MeanField(p, rule))
    rates = sched.rates(60).to(run.theta.dtype)
    # the recomputed directions are the steps the run took
    assert torch.allclose(run.theta[:, 1:], run.theta[:, :-1] - rates[None, :, None] * u,
                          atol=1e-12)
    un, tn = u.norm(dim=-1), run.theta[:, :-1].norm(dim=-1)
    assert bool((un <= lam * torch.clamp(tn, min=eps) * (1 + 1e-12)).all())
    assert float(claim2_ratio(un, tn, lam, eps).max()) <= 1.0
    assert float((un / (lam * torch.clamp(tn, min=eps))).max()) > 0.99   # the bound is attained
    with pytest.raises(ValueError, match="record_indices=True"):
        update_directions(sc.simulate_sgd(p, rule, sched, steps=3, seed=0),
                          sc.MeanField(p, rule))
    with pytest.raises(ValueError, match="record_every=1"):
        update_directions(sc.simulate_sgd(p, rule, sched, steps=4, seed=0, record_every=2,
                                          record_indices=True), sc.MeanField(p, rule))


@pytest.mark.filterwarnings("ignore:.*A2.*:UserWarning")
def test_blowup_frequency_grows_with_lam_for_adaptive_only():
    p = sc.problems.linear1d()
    lams = [1.0, 4.0, 32.0]
    kw = dict(steps=60, chains=200, seed=0)
    ada = blowup_frequency(p, sc.AdaptiveClip, lams, sc.Constant(0.5), **kw)
    assert ada.frequency[0] == 0 and ada.frequency[-1] > 0.3
    assert bool((ada.frequency[1:] >= ada.frequency[:-1]).all())
    assert bool(torch.isfinite(ada.median_step[-1])) and bool(torch.isnan(ada.median_step[0]))
    norm = blowup_frequency(p, sc.NormClip, lams, sc.Constant(0.5), **kw)
    assert float(norm.frequency.max()) == 0.0
    with pytest.raises(ValueError, match="`lams` must be"):
        blowup_frequency(p, sc.NormClip, [1.0, -1.0], "harmonic:1", steps=2, chains=2)
    with pytest.raises(TypeError, match="`rule_factory`"):
        blowup_frequency(p, 3.0, [1.0], "harmonic:1", steps=2, chains=2)


def test_azuma_bounds():
    # the paper's (16): a(t) = 1/t, gamma = pi^2/6, m = 2^10, lam = 30 -> exponent about -1416
    val = azuma_log_bound(2 ** 10, 30.0, math.pi ** 2 / 6, form="paper")
    assert val == pytest.approx(math.log(2) - 2 * 2 ** 20 / (math.pi ** 2 / 6 * 900))
    assert -1417 < val < -1415
    std = azuma_log_bound(2 ** 10, 30.0, math.pi ** 2 / 6, form="standard")
    assert std == pytest.approx(math.log(2) + (val - math.log(2)) / 4)
    # the default is the standard form (the paper's fails our Monte Carlo; see stability.py)
    assert azuma_log_bound(2 ** 10, 30.0, math.pi ** 2 / 6) == std
    with pytest.raises(ValueError, match="`form` must be one of"):
        azuma_log_bound(1.0, 1.0, 1.0, form="other")
    with pytest.raises(ValueError, match="`lam` must be"):
        azuma_log_bound(1.0, 0.0, 1.0)


def test_exceedance_and_claim2():
    th = torch.tensor([[[0.0], [2.0], [math.nan]], [[0.0], [0.5], [0.2]]])
    assert exceedance_frequency(th, 1.0).tolist() == [0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="`theta` must have shape"):
        exceedance_frequency(th[0], 1.0)
    assert float(claim2_ratio(torch.tensor(3.0), torch.tensor(1.0), 2.0, 0.1)) == 0.75
