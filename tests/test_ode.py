import math

import numpy as np
import pytest
import torch

import sa_clip as sc

D = torch.float64


LAM = 1.5


def kinky_data(n=120):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, generator=g, dtype=D) * 2


def kinky_problem(n=120):
    """Location problem started far away: every sample starts clipped (|theta - x_i| > lam) and
    most cross the switch |theta - x_i| = lam on the way to the equilibrium."""
    p = sc.problems.location_problem(kinky_data(n).tolist(), theta0=8.0)
    return p, sc.MeanField(p, sc.NormClip(LAM))


def rk4_reference(x, theta0, t, step):
    """Classical fixed-step RK4 in numpy for ``d theta/d tau = -H(theta)``, where for this
    problem ``H(theta) = mean_i clamp(theta - x_i, -lam, lam)`` (the gradient of
    ``(theta - x_i)^2 / 2`` clipped at norm lam): independent of sa_clip, and cheap."""
    def rhs(th):
        return -np.clip(th - x, -LAM, LAM).mean()

    out, th = [theta0], theta0
    for t0, t1 in zip(t[:-1], t[1:]):
        n = round((t1 - t0) / step)
        h = (t1 - t0) / n
        for _ in range(n):
            k1 = rhs(th)
            k2 = rhs(th + h / 2 * k1)
            k3 = rhs(th + h / 2 * k2)
            k4 = rhs(th + h * k3)
            th = th + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(th)
    return torch.tensor(out, dtype=D)[:, None]


@pytest.mark.slow
def test_default_settings_agree_with_fine_rk4_across_kinks():
    p, field = kinky_problem()
    x = kinky_data().numpy()
    t = torch.linspace(0, 8, 17, dtype=D)
    # the reference's right-hand side is the field's H
    grid = torch.linspace(-6, 9, 61, dtype=D)[:, None]
    want = torch.from_numpy(np.clip(grid.numpy() - x, -LAM, LAM).mean(1, keepdims=True))
    assert torch.allclose(field(grid), want, rtol=1e-12, atol=1e-14)
    sol = sc.solve_ode(field, p.theta0, t)
    ref = rk4_reference(x, float(p.theta0), t.tolist(), 5e-3)
    half = rk4_reference(x, float(p.theta0), t.tolist(), 1e-2)
    assert sol.success
    # many samples cross the switch along the path
    start, end = field.clip_stats(sol.theta[0]).fraction, field.clip_stats(sol.theta[-1]).fraction
    assert float(start) == 1.0 and float(end) < 0.6
    # the reference is converged far below the tolerance we check
    assert float((ref - half).abs().max()) < 1e-6
    err = float((sol.theta - ref).abs().max())
    scale = float(p.theta0.abs().max())
    # measured 5.4e-5 on a path of length 8 (7e-6 relative): the kinks partly blind the error
    # estimator (the docs say what to do); tighter tolerances do reduce it (2.1e-6)
    assert err < 1e-4 * scale
    tight = sc.solve_ode(field, p.theta0, t, rtol=1e-9, atol=1e-11)
    assert float((tight.theta - ref).abs().max()) < err / 3
    assert sol.nfev < tight.nfev


def test_closed_form_unclipped_location():
    # l_i = (theta - x_i)^2 / 2 without clipping: theta(t) = mean + (theta0 - mean) e^{-t}
    x = [0.0, 1.0, 5.0]
    p = sc.problems.location_problem(x, theta0=4.0)
    t = torch.linspace(0, 3, 7, dtype=D)
    sol = sc.solve_ode(sc.MeanField(p, sc.NoClip()), p.theta0, t)
    exact = 2.0 + 2.0 * torch.exp(-t)
    err = (sol.theta[:, 0] - exact).abs()
    assert bool((err <= 1e-9 + 1e-7 * exact.abs()).all())
    # decreasing times integrate backwards
    back = sc.solve_ode(sc.MeanField(p, sc.NoClip()), sol.theta[-1], t.flip(0))
    assert float(back.theta[-1, 0]) == pytest.approx(4.0, abs=1e-5)  # unstable backwards


def test_batched_starts_are_one_solve_time_first():
    p = sc.problems.logistic2d(n=20)
    field = sc.MeanField(p, sc.NormClip(2.0))
    starts = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-3.0, 1.0]], dtype=D)
    t = torch.linspace(0, 2, 5, dtype=D)
    sol = sc.solve_ode(field, starts, t)
    assert sol.theta.shape == (5, 3, 2) and sol.t.shape == (5,)
    assert torch.equal(sol.theta[0], starts)
    for k in range(3):
        one = sc.solve_ode(field, starts[k], t)
        assert one.theta.shape == (5, 2)
        assert torch.allclose(sol.theta[:, k], one.theta, atol=1e-7)
    # nfev counts right-hand-side calls: the fixed-grid Euler method makes one per interval
    eul = sc.solve_ode(field, starts, t, method="euler")
    assert eul.nfev == len(t) - 1


def test_any_callable_field_and_failure_is_reported():
    sol = sc.solve_ode(lambda th: th, torch.ones(2, dtype=D), torch.tensor([0.0, 1.0]))
    assert torch.allclose(sol.theta[-1], torch.full((2,), math.exp(-1), dtype=D), rtol=1e-7)
    # d theta/d tau = theta^2 blows up at tau = 1: reported, not raised
    bad = sc.solve_ode(lambda th: -th ** 2, torch.ones(1, dtype=D), torch.tensor([0.0, 2.0]))
    assert bad.status == -1 and not bad.success and "solver failed" in bad.message
    assert bad.theta[0].item() == 1.0 and torch.isnan(bad.theta[1:]).all()  # start kept


def test_solve_ode_errors():
    p = sc.problems.logistic2d(n=10)
    f = sc.MeanField(p, sc.NoClip())
    t = torch.linspace(0, 1, 3)
    with pytest.raises(TypeError, match="`field`"):
        sc.solve_ode(3, p.theta0, t)
    with pytest.raises(ValueError, match="`method` must be one of"):
        sc.solve_ode(f, p.theta0, t, method="magic")
    with pytest.raises(ValueError, match="`rtol`"):
        sc.solve_ode(f, p.theta0, t, rtol=0)
    with pytest.raises(ValueError, match=r"`theta0` must have shape \(P,\) or \(K, P\)"):
        sc.solve_ode(f, torch.zeros(3), t)
    with pytest.raises(ValueError, match="`theta0` must be finite"):
        sc.solve_ode(f, torch.tensor([0.0, float("nan")]), t)
    with pytest.raises(ValueError, match="`t` must be a non-empty 1-D"):
        sc.solve_ode(f, p.theta0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="`t` must be strictly increasing or strictly decr"):
        sc.solve_ode(f, p.theta0, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="`t` must be finite"):
        sc.solve_ode(f, p.theta0, torch.tensor([0.0, float("inf")]))
    with pytest.raises(TypeError, match="`options`"):
        sc.solve_ode(f, p.theta0, t, options=[1])
