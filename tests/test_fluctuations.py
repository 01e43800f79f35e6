"""sa_clip.fluctuations: the noise covariance and the CLT covariance in closed form, and the
CLT covariance against the sample variance of many chains."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

import sa_clip as sc
from sa_clip.fluctuations import clt_covariance, noise_covariance, trajectory_scaled_errors

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


def test_noise_covariance_brute_force():
    p = sc.problems.location_problem([-3.0, -1.0, 0.5, 9.0])
    field = sc.MeanField(p, sc.NormClip(2.0))
    th = torch.tensor([0.3], dtype=torch.float64)
    u = torch.clamp(th - p.y, -2.0, 2.0)             # per-sample clipped gradients, by hand
    S = noise_covariance(field, th, batch_size=3)
    assert float(S) == pytest.approx(float(u.var(unbiased=False)) / 3, rel=1e-12)


def test_theory_functions_return_tensors_and_one_by_one_results_convert_to_float():
    p = sc.problems.location_problem([-1.0, 1.0, 4.0])
    field = sc.MeanField(p, sc.NormClip(1.0))
    th = torch.tensor([0.5], dtype=torch.float64)
    B, S = field.jacobian(th), noise_covariance(field, th)
    sig = clt_covariance(B, S, a0=2.0)
    emp = sc.empirical_covariance(torch.tensor([[0.0], [1.0], [3.0]]))
    for x in (B, S, sig, emp):
        assert isinstance(x, torch.Tensor) and x.shape == (1, 1)
        assert float(x) == x.item()
    assert float(emp) == pytest.approx(float(np.var([0.0, 1.0, 3.0], ddof=1)))
    stats = field.clip_stats(th)
    assert isinstance(stats.fraction, float) and stats.fraction == pytest.approx(2 / 3)
    assert stats.ratios.shape == (3, 1)
    assert torch.allclose(stats.ratios[:, 0], (th - p.X[:, 0]).abs() / 1.0)
    batched = field.clip_stats(torch.stack([th, th + 1]))
    assert isinstance(batched.fraction, torch.Tensor) and batched.fraction.shape == (2,)


def test_clt_covariance_closed_form_and_errors():
    # 1-D: a0/n: Sigma = a0 S / (2 a0 b - 1); a0/n^alpha: Sigma = S / (2 b)
    assert clt_covariance(np.array([[2.0]]), np.array([[3.0]]), a0=1.0)[0, 0] == \
        pytest.approx(3.0 / 3.0)
    assert clt_covariance(np.array([[2.0]]), np.array([[3.0]]), a0=1.0, alpha=0.7)[0, 0] == \
        pytest.approx(0.75)
    B = np.array([[2.0, 0.5], [0.0, 1.5]])
    S = np.array([[1.0, 0.2], [0.2, 0.5]])
    Sig = clt_covariance(B, S, a0=2.0)
    assert isinstance(Sig, torch.Tensor) and Sig.dtype == torch.float64
    A = B - np.eye(2) / 4
    assert np.allclose(A @ Sig.numpy() + Sig.numpy() @ A.T, S)
    # tensors in, tensors out, the same answer
    assert torch.equal(clt_covariance(torch.tensor(B), torch.tensor(S), a0=2.0), Sig)
    with pytest.raises(ValueError, match="eigenvalue of DH above"):
        clt_covariance(np.array([[0.2]]), np.array([[1.0]]), a0=1.0)
    with pytest.raises(ValueError, match="`alpha` must lie in"):
        clt_covariance(B, S, a0=1.0, alpha=0.4)


@pytest.mark.slow
def test_clt_approach_is_slow_beside_clipping_switches(capsys):
    """examples/fluctuations.py --switches at 2000 chains x 1250 steps: with the limit beside
    four clipping switches the chains' scaled covariance is several standard errors off Sigma
    while the finite-n linear recursion is close to it; the same problem with the switches
    moved away is within sampling error. The switches cause the slow approach."""
    from helpers import load_example

    out = load_example("fluctuations").switch_check(2000, 1250)
    beside, away = out[0.002], out[0.2]
    assert beside["margin"] < 0.01 < 0.1 < away["margin"]
    n, z_beside, gap = beside["rows"][-1]
    assert n == 1250 and gap < 5e-3
    assert max(z_beside) > 3.5, z_beside
    assert max(abs(v) for v in away["rows"][-1][1]) < 3.0, away["rows"][-1]
    assert "beside" in capsys.readouterr().out
