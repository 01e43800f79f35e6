"""Tests of sa_clip.linear_noise: closed forms (Ornstein-Uhlenbeck), many chains, the CLT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import sa_clip as sc

D = torch.float64
DATA = [-2.0, -0.5, 0.0, 1.0, 4.0]          # location problem: H = theta - mean, J = 1
XBAR = float(np.mean(DATA))
S1 = float(np.var(DATA))                    # population variance over the data


def location(theta0: float = 3.0) -> sc.Problem:
    return sc.problems.location_problem(DATA, theta0=theta0)


def taus(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=D)


# ---------------------------------------------------------------- Ornstein-Uhlenbeck closed forms
@pytest.mark.parametrize("rule", [sc.NoClip(), sc.NormClip(1e6)], ids=["none", "inactive"])
@pytest.mark.parametrize("m", [1, 4])
def test_constant_steps_discrete_closed_form(rule, m):
    a, n = 0.1, 40
    field = sc.MeanField(location(), rule)
    t = sc.Constant(a).tau(n)[[0, 5, 17, 40]]
    r = sc.linear_noise(field, sc.Constant(a), location().theta0, t, batch_size=m)
    assert r.success and r.form == "discrete" and r.steps == n and r.noise == "exact"
    steps = torch.tensor([0, 5, 17, 40], dtype=D)
    exact = a * a * S1 / m * (1 - (1 - a) ** (2 * steps)) / (1 - (1 - a) ** 2)
    torch.testing.assert_close(r.cov[:, 0, 0], exact, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(r.mean[:, 0], XBAR + (3.0 - XBAR) * torch.exp(-t),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", [sc.NoClip(), sc.NormClip(1e6)], ids=["none", "inactive"])
@pytest.mark.parametrize("integrator", ["grid", pytest.param("joint", marks=pytest.mark.slow)])
def test_constant_steps_continuous_closed_form(rule, integrator):
    a = 0.05
    t = taus(0.0, 0.3, 1.0, 2.5)
    r = sc.linear_noise(sc.MeanField(location(), rule), sc.Constant(a), location().theta0, t,
                        form="continuous", integrator=integrator)
    assert r.success and r.form == "continuous"
    exact = a * S1 / 2 * (1 - torch.exp(-2 * t))           # dV/dtau = -2V + a S
    torch.testing.assert_close(r.cov[:, 0, 0], exact, rtol=1e-6, atol=1e-12)


def test_harmonic_steps_discrete_closed_form():
    """V_n = S sum_{k<n} a_k^2 prod_{k<j<n} (1 - a_j)^2 with a_j = a0 / (j + n0): the products
    are ratios of Gamma functions, prod_{j=k+1}^{n-1} (j + n0 - a0) / (j + n0)."""
    a0, n0 = 0.5, 3.0
    sched = sc.Harmonic(a0, n0)
    steps = [0, 1, 7, 60]
    r = sc.linear_noise(sc.MeanField(location(), sc.NoClip()), sched, location().theta0,
                        sched.tau(60)[steps])

    def closed(n: int) -> float:
        lg = math.lgamma
        return S1 * sum((a0 / (k + n0)) ** 2 * math.exp(2 * (
            lg(n + n0 - a0) - lg(k + 1 + n0 - a0) - lg(n + n0) + lg(k + 1 + n0)))
            for k in range(n))

    torch.testing.assert_close(r.cov[:, 0, 0], torch.tensor([closed(n) for n in steps],
                                                            dtype=D), rtol=1e-10, atol=1e-15)


def test_harmonic_steps_continuous_closed_form():
    """a(tau) -> c exp(-tau / a0) with c = a0 exp(-digamma(n0)) (tau_n = a0 (psi(n + n0) -
    psi(n0))): V = c S (exp(-tau/a0) - exp(-2 tau)) / (2 - 1/a0), up to O(1/n0^2)."""
    a0, n0 = 1.0, 50.0
    t = taus(0.0, 0.5, 1.0, 3.0)
    r = sc.linear_noise(sc.MeanField(location(), sc.NoClip()), sc.Harmonic(a0, n0),
                        location().theta0, t, form="continuous")
    c = a0 * math.exp(-float(scipy.special.digamma(n0)))
    exact = c * S1 * (torch.exp(-t / a0) - torch.exp(-2 * t)) / (2 - 1 / a0)
    torch.testing.assert_close(r.cov[:, 0, 0], exact, rtol=2e-3, atol=1e-12)


def test_between_steps_is_the_interpolated_path():
    """Off the step grid the discrete form gives Cov(theta_bar) of the linearly interpolated
    chain: (1-s)^2 V_n + s^2 V_{n+1} + 2 s (1-s) (1 - a) V_n for the OU recursion."""
    a = 0.2
    field = sc.MeanField(location(), sc.NoClip())
    r = sc.linear_noise(field, sc.Constant(a), location().theta0, taus(0.0, 3 * a, 3.5 * a))
    v3 = a * a * S1 * (1 - (1 - a) ** 6) / (1 - (1 - a) ** 2)
    v4 = (1 - a) ** 2 * v3 + a * a * S1
    s = 0.5
    want = (1 - s) ** 2 * v3 + s * s * v4 + 2 * s * (1 - s) * (1 - a) * v3
    assert float(r.cov[1, 0, 0]) == pytest.approx(v3, rel=1e-10)
    assert float(r.cov[2, 0, 0]) == pytest.approx(want, rel=1e-10)


def test_per_batch_clipping_exact_cases():
    """M = 1: per-batch is per-sample. Clipping inactive, N^M batches enumerated: S = S_1/M."""
    field = sc.MeanField(location(), sc.NormClip(1e6))
    t = taus(0.0, 0.5, 2.0)
    per_sample = sc.linear_noise(field, "constant:0.1", location().theta0, t, batch_size=2)
    per_batch = sc.linear_noise(field, "constant:0.1", location().theta0, t, batch_size=2,
                                clip_per="batch")
    assert per_batch.noise == "exact"
    torch.testing.assert_close(per_batch.cov, per_sample.cov, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(per_batch.mean, per_sample.mean, rtol=1e-7, atol=1e-9)
    one = sc.linear_noise(field, "constant:0.1", location().theta0, t, clip_per="batch")
    torch.testing.assert_close(one.cov, sc.linear_noise(field, "constant:0.1",
                                                        location().theta0, t).cov)


@pytest.mark.filterwarnings("ignore:the schedule")
def test_per_batch_clipping_monte_carlo_against_chains():
    """Active per-batch clipping (no closed form): Monte-Carlo S_M against 4000 chains."""
    data = torch.linspace(-3.0, 9.0, 20, dtype=D) ** 3 / 40     # N^M = 8000 batches
    p = sc.problems.location_problem(data.tolist(), theta0=4.0)
    rule, sched = sc.NormClip(1.5), sc.Constant(0.05)
    run = sc.simulate_sgd(p, rule, sched, steps=40, chains=4000, batch_size=3,
                          clip_per="batch", seed=3)
    r = sc.linear_noise(sc.MeanField(p, rule), sched, p.theta0, run.tau[[0, 20, 40]],
                        batch_size=3, clip_per="batch", noise_samples=7000)
    assert r.noise == "monte carlo (7000 batches)"
    for i, rec in ((1, 20), (2, 40)):
        x = run.theta[:, rec, 0].numpy()
        _check_wald(x[:, None], r.cov[i].numpy())


# ---------------------------------------------------------------- many chains (sampling error)
def _check_wald(x: np.ndarray, pred: np.ndarray, level: float = 1e-3) -> float:
    """Wald test of Cov(x) = pred: d = vech(S_hat - pred), its covariance from the chains' own
    fourth moments (no Gaussian assumption), d^T Omega^-1 d ~ chi^2(P(P+1)/2). Returns the
    relative Frobenius error."""
    n, p = x.shape
    c = x - x.mean(0)
    iu = np.triu_indices(p)
    prods = (c[:, :, None] * c[:, None, :])[:, iu[0], iu[1]]         # (n, q)
    emp = np.cov(x, rowvar=False).reshape(p, p)
    d = emp[iu] - pred[iu]
    omega = np.atleast_2d(np.cov(prods, rowvar=False)) / n
    stat = float(d @ np.linalg.solve(omega, d))
    limit = scipy.stats.chi2.ppf(1 - level, len(d))
    assert stat < limit, f"Wald statistic {stat:.2f} > chi2 limit {limit:.2f}: {emp} vs {pred}"
    return float(np.linalg.norm(emp - pred) / np.linalg.norm(emp))


SMALL_STEPS = {      # steps small enough that the O(a) error is below 4000 chains' resolution
    "tanh": (sc.problems.tanh_regression, sc.NormClip(1.0), "constant:0.01", 300),
    "logistic": (sc.problems.logistic2d, sc.NormClip(0.5), "constant:0.05", 300),
}
TARGET = {           # the issue's target: power-law steps, early / middle / late, within 10%
    "tanh": (sc.problems.tanh_regression, sc.NormClip(1.0), "power:0.1,0.7", 600),
    "logistic": (sc.problems.logistic2d, sc.NormClip(0.5), "power:0.5,0.7", 600),
}


def _chains_and_prediction(case, form="discrete"):
    make, rule, sched, steps = case
    p = make()
    run = sc.simulate_sgd(p, rule, sched, steps=steps, chains=4000, seed=1,
                          record_every=steps // 6)
    rec = [1, 3, 6]                                    # early, middle, late
    t = torch.cat([run.tau[:1], run.tau[rec]])
    field = sc.MeanField(p, rule)
    preds = {f: sc.linear_noise(field, sched, p.theta0, t, form=f)
             for f in (("discrete", "continuous") if form == "both" else (form,))}
    assert all(r.success for r in preds.values())
    return [run.theta[:, i].numpy() for i in rec], preds


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the schedule")
@pytest.mark.parametrize("name", sorted(SMALL_STEPS))
def test_agrees_with_4000_chains_within_sampling_error(name):
    """Early, middle, late: the Wald chi-square test at level 1e-3 (per time) accepts the
    discrete prediction; the chains' mean is within O(a) of the ODE path. The continuous
    form drops the O(a ||J||) terms, which 4000 chains resolve early on the tanh toy: it is
    held to 10% relative Frobenius."""
    xs, preds = _chains_and_prediction(SMALL_STEPS[name], "both")
    for j, x in enumerate(xs, start=1):
        _check_wald(x, preds["discrete"].cov[j].numpy())
        emp = np.cov(x, rowvar=False)
        cont = preds["continuous"].cov[j].numpy()
        assert np.linalg.norm(emp - cont) / np.linalg.norm(emp) < 0.10
        # first order gets the mean only to O(a) (Euler steps, curvature of H on the spread)
        se = x.std(0) / math.sqrt(len(x))
        a = sc.make_schedule(SMALL_STEPS[name][2])(0)
        assert (np.abs(x.mean(0) - preds["discrete"].mean[j].numpy()) < 4 * se + a).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGET))
def test_issue_target_ten_percent_of_4000_chains(name):
    """Power-law steps (a(0) = 0.1 and 0.5): the discrete prediction within 10% relative
    Frobenius of 4000 chains' covariance at early, middle and late times."""
    xs, preds = _chains_and_prediction(TARGET[name])
    for j, x in enumerate(xs, start=1):
        emp = np.cov(x, rowvar=False)
        rel = np.linalg.norm(emp - preds["discrete"].cov[j].numpy()) / np.linalg.norm(emp)
        assert rel < 0.10, (j, rel)


# ---------------------------------------------------------------- a 2-D problem, DH diagonal
@pytest.mark.slow
def test_late_covariance_over_step_is_the_clt_covariance():
    """Harmonic steps a0/(n + n0) from the equilibrium, clipping active there: V/a(n) tends to
    the Sigma of clt_covariance, at rate O(a(n)) (the discrete form's a J V J^T terms)."""
    p = two_scalings()
    field = sc.MeanField(p, sc.NormClip(0.5))
    star = sc.solve_ode(field, p.theta0, taus(0.0, 100.0)).theta[-1]
    assert 0.2 < float(field.clip_stats(star).fraction) < 1.0
    a0 = 2.0
    sched = sc.Harmonic(a0, 1.0)
    sigma = sc.clt_covariance(field.jacobian(star), sc.noise_covariance(field, star),
                              a0=a0).numpy()

    def error(n: int, form: str) -> float:
        r = sc.linear_noise(field, sched, star, sched.tau(n)[[0, n]], form=form)
        got = r.cov[-1].numpy() / sched(n)
        return float(np.linalg.norm(got - sigma) / np.linalg.norm(sigma))

    e300, e1000 = error(300, "discrete"), error(1000, "discrete")
    assert e1000 < 0.01 and 0.2 < e1000 / e300 < 0.45        # falls like a(n) ~ 1/n
    assert error(1000, "continuous") < 0.002


class TwoScalings(nn.Module):
    """f(w, x) = (w1 x1, w2 x2): DH is diagonal, S is not (correlated features)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0], dtype=D))

    def forward(self, x):
        return self.w * x


def two_scalings() -> sc.Problem:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 1, generator=g, dtype=D)
    x = torch.cat([1.0 + z, 1.5 + 0.9 * z + 0.2 * torch.randn(40, 1, generator=g, dtype=D)], 1)
    y = x * torch.tensor([1.0, 2.0], dtype=D) + 0.2 * torch.randn(40, 2, generator=g, dtype=D)
    return sc.Problem(TwoScalings(), x, y, "mse")


# ---------------------------------------------------------------- the CLT, late in a run


# ---------------------------------------------------------------- the projected variant
@pytest.mark.parametrize("form", ["discrete", "continuous"])
def test_projected_on_a_block_of_a_block_diagonal_jacobian(form):
    p = two_scalings()
    field = sc.MeanField(p, sc.NoClip())
    t = taus(0.0, 0.2, 1.0)
    full = sc.linear_noise(field, "constant:0.05", p.theta0, t, form=form)
    for j in range(2):
        e = torch.zeros(2, 1, dtype=D)
        e[j] = 1.0
        part = sc.linear_noise(field, "constant:0.05", p.theta0, t, form=form, basis=e)
        assert part.cov.shape == (3, 1, 1) and part.basis.shape == (2, 1)
        torch.testing.assert_close(part.cov[:, 0, 0], full.cov[:, j, j], rtol=1e-7,
                                   atol=1e-12)
        torch.testing.assert_close(part.mean, full.mean, rtol=1e-7, atol=1e-9)
    c = full.cov[-1]
    assert abs(float(c[0, 1] / (c[0, 0] * c[1, 1]).sqrt())) > 0.05   # blocks' noise correlated


class Scalings(nn.Module):
    """f(w, x) = w * x, element-wise over P features: DH is diagonal."""

    def __init__(self, p: int):
        super().__init__()
        self.w = nn.Parameter(torch.full((p,), 0.5, dtype=D))

    def forward(self, x):
        return self.w * x


@pytest.mark.slow
def test_projected_beyond_max_full_matches_the_small_problem():
    """P = 5000 > max_full: the full call refuses; basis = two coordinates (a block of the
    diagonal DH) gives what the 2-feature problem gives in full."""
    g = torch.Generator().manual_seed(0)
    x = 1.0 + torch.randn(30, 5000, generator=g, dtype=D)
    y = 2.0 * x + 0.3 * torch.randn(30, 5000, generator=g, dtype=D)
    big = sc.Problem(Scalings(5000), x, y, "mse")
    small = sc.Problem(Scalings(2), x[:, :2].clone(), y[:, :2].clone(), "mse")
    t = taus(0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="exceeds `max_full`"):
        sc.linear_noise(sc.MeanField(big, sc.NoClip()), "constant:0.05", big.theta0, t)
    u = torch.zeros(5000, 2, dtype=D)
    u[0, 0] = u[1, 1] = 1.0
    part = sc.linear_noise(sc.MeanField(big, sc.NoClip()), "constant:0.05", big.theta0, t,
                           basis=u)
    full = sc.linear_noise(sc.MeanField(small, sc.NoClip()), "constant:0.05", small.theta0, t)
    assert part.cov.shape == (3, 2, 2) and part.mean.shape == (3, 5000)
    # the two ODE solves see different dimensions (RMS error norms), so agree to ~rtol
    torch.testing.assert_close(part.mean[:, :2], full.mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(part.cov, full.cov, rtol=1e-5, atol=1e-12)


def test_projected_refuses_a_basis_that_does_not_close():
    p = two_scalings()
    u = torch.tensor([[1.0], [1.0]], dtype=D) / 2 ** 0.5
    with pytest.raises(ValueError, match="not invariant|invariant under DH"):
        sc.linear_noise(sc.MeanField(p, sc.NoClip()), "constant:0.05", p.theta0,
                        taus(0.0, 0.2), basis=u)


# ---------------------------------------------------------------- failures and errors
def test_failed_solve_is_reported_not_raised():
    field = sc.MeanField(location(), sc.NoClip())
    r = sc.linear_noise(field, "constant:0.1", location().theta0, taus(0.0, 1.0, 2.0),
                        max_nfev=3)
    assert r.status == -1 and not r.success and r.message
    assert float(r.cov[0, 0, 0]) == 0.0 and bool(torch.isnan(r.cov[-1]).all())


def test_variance_along_a_direction():
    p = two_scalings()
    r = sc.linear_noise(sc.MeanField(p, sc.NoClip()), "constant:0.05", p.theta0, taus(0.0, 1.0))
    u = torch.tensor([0.6, 0.8], dtype=D)
    torch.testing.assert_close(r.variance(u), torch.einsum("i,tij,j->t", u, r.cov, u))
    with pytest.raises(ValueError, match="`direction` must have shape"):
        r.variance(torch.ones(3))


def _call(**kw):
    p = two_scalings()
    args = dict(field=sc.MeanField(p, sc.NoClip()), schedule="constant:0.1", theta0=p.theta0,
                tau=taus(0.0, 1.0))
    args.update(kw)
    return sc.linear_noise(**args)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(field=lambda th: th), TypeError, "`field` must be a sa_clip.MeanField"),
    (dict(schedule="often:1"), ValueError, "`schedule` must start with one of"),
    (dict(theta0=torch.zeros(3, dtype=D)), ValueError, r"`theta0` must have shape \(P,\)"),
    (dict(theta0=torch.zeros(2, 2, dtype=D)), ValueError, "one start for all chains"),
    (dict(theta0=torch.tensor([0.0, float("nan")], dtype=D)), ValueError, "must be finite"),
    (dict(tau=taus(0.5, 1.0)), ValueError, r"`tau\[0\]` must be 0"),
    (dict(tau=taus(0.0, 2.0, 1.0)), ValueError, "strictly increasing"),
    (dict(tau=torch.zeros(2, 2, dtype=D)), ValueError, "1-D tensor"),
    (dict(tau=taus(0.0, float("inf"))), ValueError, "`tau` must be finite"),
    (dict(tau=taus(0.0, 10.0), max_steps=20), ValueError, "beyond the 20 steps"),
    (dict(batch_size=0), ValueError, "`batch_size` must be an integer >= 1"),
    (dict(clip_per="layer"), ValueError, "`clip_per` must be one of"),
    (dict(form="exact"), ValueError, "`form` must be one of"),
    (dict(integrator="euler"), ValueError, "`integrator` must be one of"),
    (dict(method="magic"), ValueError, "`method` must be one of"),
    (dict(rtol=0.0), ValueError, "`rtol` must be"),
    (dict(atol=-1.0), ValueError, "`atol` must be"),
    (dict(grid_step=0.0), ValueError, "`grid_step` must be"),
    (dict(noise_samples=1), ValueError, "`noise_samples` must be an integer >= 2"),
    (dict(max_full=1), ValueError, "exceeds `max_full` = 1.*Pass `basis`"),
    (dict(basis=torch.ones(3, 1, dtype=D)), ValueError, r"`basis` must have shape \(P, k\)"),
    (dict(basis=torch.ones(2, 1, dtype=D)), ValueError, "orthonormal columns"),
    (dict(basis=torch.eye(2, dtype=D)[:, :1], clip_per="batch", batch_size=2), ValueError,
     "clip_per='sample' only"),
])
def test_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        _call(**kw)


@pytest.mark.slow
def test_example_runs_and_writes_its_figure(tmp_path, capsys):
    """examples/linear_noise.py at a small size: prints "wrote ..." and the PNG exists; on the
    location problem the chains spread more than the first order predicts and the closure
    lies between."""
    import os

    from helpers import load_example

    out = load_example("linear_noise").main(["--chains", "400", "--steps", "300",
                                             "--switch-steps", "400", "--out", str(tmp_path)])
    assert os.path.getsize(out["figure"]) > 10_000
    text = capsys.readouterr().out
    assert "wrote " in text and "Gaussian closure" in text
    sd_chain, sd_first, sd_gauss = out["fails"]
    assert sd_chain > 1.5 * sd_first and sd_first < sd_gauss < 1.1 * sd_chain
    assert np.all(np.isfinite(out["gauss"][1:]))


# ---------------------------------------------------------------- issue 24: far times, tiny grids
@pytest.mark.parametrize("form", ["discrete", "continuous", "gaussian"])
def test_far_tau_is_refused_up_front_with_the_numbers(form):
    """tau up to 2e5 with steps of 0.1: two million steps (eight million grid nodes and
    midpoints; 64 nodes per step for the closure); refused before any compute, with the
    numbers and what to do."""
    with pytest.raises(ValueError, match=r"more than `max_points` = 1000000") as err:
        _call(tau=taus(0.0, 1.0, 2e5), form=form)
    want = {"discrete": "2e+06 points", "continuous": "8e+06 evaluation points",
            "gaussian": "1.28e+08 points"}[form]
    assert want in str(err.value), str(err.value)


@pytest.mark.parametrize("step", [1e-9, 1e-300])
@pytest.mark.parametrize("form", ["continuous", "gaussian-continuous"])
def test_tiny_grid_step_is_a_clear_error(step, form):
    with pytest.raises(ValueError, match=r"`grid_step` = .*more than `max_points`"):
        _call(form=form, grid_step=step)


def test_max_points_is_checked_and_can_be_raised():
    with pytest.raises(ValueError, match="`max_points` must be an integer >= 1"):
        _call(max_points=0)
    r = _call(tau=taus(0.0, 1.0), max_points=10)          # 10 steps of 0.1: fits
    assert r.success and r.steps == 10
    with pytest.raises(ValueError, match="11 SGD steps|more than `max_points` = 10"):
        _call(tau=taus(0.0, 1.05), max_points=10)


@pytest.mark.parametrize("budget", [50, 7])
def test_joint_integrator_honours_max_nfev_exactly(budget, monkeypatch):
    """max_nfev bounds the evaluations of (H, DH, S) over the first attempt and the recovery
    together (it made twice as many: the recovery restarted the count): counted by wrapping
    the noise model."""
    import importlib

    ln = importlib.import_module("sa_clip.linear_noise")
    calls = [0]
    orig = ln._Noise.jacobians

    def counting(self, th):
        calls[0] += th.shape[0]
        return orig(self, th)

    monkeypatch.setattr(ln._Noise, "jacobians", counting)
    r = _call(tau=taus(0.0, 1.0, 5.0, 20.0), form="continuous", integrator="joint",
              max_nfev=budget, schedule="power:0.5,0.6")
    assert r.status == -1 and "max_nfev" in r.message
    assert r.nfev <= budget and calls[0] == r.nfev
    assert float(r.cov[0].abs().max()) == 0.0


def test_torchdiffeq_internals_only_through_the_shim():
    """linear_noise names solvers through sa_clip._torchdiffeq, never torchdiffeq._impl."""
    import importlib
    import inspect

    src = inspect.getsource(importlib.import_module("sa_clip.linear_noise"))
    assert "_impl" not in src and "from ._torchdiffeq import solver_names" in src
    with pytest.raises(ValueError, match="`method` must be one of .*'dopri5'"):
        _call(method="dopri6")
