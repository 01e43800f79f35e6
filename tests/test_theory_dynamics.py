"""The theory checked against the engines: CLT covariance, Azuma bounds, Claim 2, blow-ups."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, chi2

import sa_clip as sc
from sa_clip.fluctuations import clt_covariance, noise_covariance, trajectory_scaled_errors
from sa_clip.stability import (
    azuma_log_bound,
    blowup_frequency,
    claim2_ratio,
    exceedance_frequency,
    update_directions,
)

CHAINS = 2000
HUBER_DATA = [-3.0, -3.0, 9.0]          # lam = 1: theta* = -2.5, the third sample clipped


def _linear_variance(b, s, rates):
    """Exact variance of the linearised recursion e <- (1 - a b) e + a noise (1-D, from 0)."""
    v = 0.0
    for a in rates.tolist():
        v = (1 - a * b) ** 2 * v + a * a * s
    return v


def _chi2_interval(sigma2, n, level=0.999):
    """Where the sample variance of n Gaussian draws of variance sigma2 falls with `level`."""
    lo, hi = chi2.ppf([(1 - level) / 2, (1 + level) / 2], n - 1)
    return sigma2 * lo / (n - 1), sigma2 * hi / (n - 1)


@pytest.mark.slow
@pytest.mark.parametrize("schedule,steps,batch", [
    (sc.Harmonic(2.0, n0=10), 600, 1),             # a0 = 2 > 1/(2 b) = 0.75
    (sc.PowerLaw(3.0, 0.6, n0=10), 1500, 2),
])
def test_clt_covariance_matches_chains(schedule, steps, batch):
    p = sc.problems.location_problem(HUBER_DATA, theta0=-2.5)
    rule = sc.NormClip(1.0)
    field = sc.MeanField(p, rule)
    eq = sc.find_equilibria(field, n_starts=3, scale=2.0, seed=0)[0]
    assert float(eq.theta) == pytest.approx(-2.5, abs=1e-10) and eq.switch_margin > 0.4
    B, S = field.jacobian(eq.theta), noise_covariance(field, eq.theta, batch)
    assert float(B) == pytest.approx(2 / 3) and float(S) == pytest.approx(0.5 / batch)
    alpha = getattr(schedule, "alpha", 1.0)
    sigma = clt_covariance(B, S, a0=schedule.a0, alpha=alpha)[0, 0]
    # the asymptotic regime is reached: the exact finite-n variance of the (locally linear)
    # recursion is within one sampling standard deviation of the CLT limit (a0/n: 0.1 sd;
    # a0/n^alpha converges only like sqrt(alpha/n), about 2% here, 0.7 sd)
    exact = _linear_variance(2 / 3, 0.5 / batch, schedule.rates(steps)) / schedule(steps)
    sd = sigma * math.sqrt(2 / (CHAINS - 1))
    assert abs(exact - sigma) < (0.15 if alpha == 1.0 else 1.0) * sd
    run = sc.simulate_sgd(p, rule, schedule, steps=steps, chains=CHAINS, batch_size=batch,
                          seed=1, record_every=steps)
    z = trajectory_scaled_errors(run, eq.theta)
    emp = sc.empirical_covariance(z)[0, 0]
    # chi-square interval (99.9%) of a sample variance, stretched by the known finite-n bias
    lo_s, hi_s = _chi2_interval(sigma, CHAINS)
    lo_e, hi_e = _chi2_interval(exact, CHAINS)
    lo, hi = min(lo_s, lo_e), max(hi_s, hi_e)
    assert lo < emp < hi, (emp, sigma, exact, lo, hi)
    # the interval is narrow enough to tell the two Lyapunov equations apart
    other = clt_covariance(B, S, a0=schedule.a0, alpha=0.75 if alpha == 1.0 else 1.0)[0, 0]
    assert not lo < other < hi


def test_trajectory_scaled_errors_uses_the_run_schedule():
    p = sc.problems.location_problem([-1.0, 1.0])
    run = sc.simulate_sgd(p, sc.NoClip(), sc.Harmonic(2.0, 3), steps=5, chains=3, seed=0,
                          record_every=2)
    z = trajectory_scaled_errors(run, torch.tensor([0.5]), record=1)    # step 2: a = 2/5
    assert torch.allclose(z, (run.theta[:, 1] - 0.5) / math.sqrt(0.4))
    with pytest.raises(ValueError, match="`record` must index"):
        trajectory_scaled_errors(run, torch.zeros(1), record=7)
    run.meta.pop("schedule")
    with pytest.raises(ValueError, match="pass `schedule`"):
        trajectory_scaled_errors(run, torch.zeros(1))
    z2 = trajectory_scaled_errors(run, torch.zeros(1), schedule=sc.Harmonic(2.0, 3))
    assert torch.allclose(z2, run.theta[:, -1] / math.sqrt(2 / 8))


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


def test_ellipse_plot_checks_shape():
    from sa_clip.viz.theory import plot_fluctuation_ellipses

    with pytest.raises(ValueError, match="`errors` must have shape"):
        plot_fluctuation_ellipses(np.zeros((5, 3)), np.eye(2))
