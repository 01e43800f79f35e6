import itertools

import pytest
import torch

import sa_clip as sc
from problems import brute_clip, brute_grads, mlp_problem

D = torch.float64


def exact_H_M(problem, rule, theta, m, replace=True):
    """Enumerate every batch: all N^M ordered tuples (with replacement) or all M-subsets
    (without), each equally likely; per-batch clipping by hand-written formulas."""
    G = brute_grads(problem, theta)
    batches = (itertools.product(range(problem.N), repeat=m) if replace
               else itertools.combinations(range(problem.N), m))
    us = [brute_clip(rule, G[list(b)].mean(0), theta, problem) for b in batches]
    return torch.stack(us).mean(0)


@pytest.mark.parametrize("m,replace", [(2, True), (3, True), (2, False)])
def test_monte_carlo_agrees_with_enumeration(m, replace):
    p = mlp_problem(n=4)
    rule = sc.NormClip(0.3)
    thetas = torch.stack([p.theta0, 0.7 * p.theta0])
    mean, se = sc.batch_mean_field(p, rule, thetas, m, samples=3000, seed=0, replace=replace)
    assert mean.shape == se.shape == (2, p.P)
    for k in range(2):
        ref = exact_H_M(p, rule, thetas[k], m, replace)
        z = (mean[k] - ref).abs() / se[k].clamp(min=1e-300)
        assert float(z.max()) < 5.0, float(z.max())
        # and the per-batch field is not the per-sample one here (clipping matters)
        H = sc.MeanField(p, rule)(thetas[k])
        assert float((ref - H).norm()) > 10 * float(se[k].norm())


def test_standard_error_shrinks_like_one_over_sqrt_samples():
    p = mlp_problem(n=4)
    _, se1 = sc.batch_mean_field(p, sc.NormClip(0.3), p.theta0, 2, samples=400, seed=1)
    _, se2 = sc.batch_mean_field(p, sc.NormClip(0.3), p.theta0, 2, samples=6400, seed=1)
    assert float(se1.norm() / se2.norm()) == pytest.approx(4.0, rel=0.2)


def test_batch_size_one_is_H_and_full_batch_is_clipped_gd():
    p = mlp_problem(n=5)
    rule = sc.NormClip(0.3)
    H = sc.MeanField(p, rule)(p.theta0)
    m1, se1 = sc.batch_mean_field(p, rule, p.theta0, 1)
    assert torch.allclose(m1, H, rtol=0, atol=1e-14) and (se1 == 0).all()
    ref = exact_H_M(p, rule, p.theta0, 1)
    assert torch.allclose(m1, ref, rtol=0, atol=1e-12)
    full, sef = sc.batch_mean_field(p, rule, p.theta0, p.N, replace=False)
    gd = brute_clip(rule, brute_grads(p, p.theta0).mean(0), p.theta0, p)
    assert torch.allclose(full, gd, rtol=0, atol=1e-12) and (sef == 0).all()


def test_seed_determinism():
    p = mlp_problem(n=4)
    a = sc.batch_mean_field(p, sc.NormClip(0.3), p.theta0, 2, samples=50, seed=3)
    b = sc.batch_mean_field(p, sc.NormClip(0.3), p.theta0, 2, samples=50, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_batch_mean_field_errors():
    p = mlp_problem(n=4)
    r = sc.NormClip(0.3)
    with pytest.raises(ValueError, match="`batch_size`"):
        sc.batch_mean_field(p, r, p.theta0, 0)
    with pytest.raises(ValueError, match="`samples`"):
        sc.batch_mean_field(p, r, p.theta0, 2, samples=1)
    with pytest.raises(ValueError, match="`batch_size` = 5 exceeds N = 4"):
        sc.batch_mean_field(p, r, p.theta0, 5, replace=False)
    with pytest.raises(ValueError, match="`theta`"):
        sc.batch_mean_field(p, r, torch.zeros(3), 2)
    with pytest.raises(TypeError, match="`problem`"):
        sc.batch_mean_field(None, r, p.theta0, 2)


def test_fixed_batch_field_equals_a_loop_over_its_batches():
    # H_M over fixed batches (explorer, linear_noise) against plain autograd per batch, float64
    p = sc.problems.logistic2d(n=12)
    lam = 0.3
    hm = sc.FixedBatchField(sc.MeanField(p, sc.NormClip(lam)), 3, samples=5, seed=1)
    thetas = torch.tensor([[0.2, -0.4], [1.0, 0.5]], dtype=torch.float64)
    want = []
    for th in thetas:
        dirs = []
        for batch in hm.index:
            t = th.clone().requires_grad_(True)
            x, y = p.take(batch)
            (g,) = torch.autograd.grad(p.sample_losses(t[None], x, y).mean(), t)
            dirs.append(g * min(1.0, lam / float(g.norm())))
        want.append(torch.stack(dirs).mean(0))
    assert torch.allclose(hm(thetas), torch.stack(want), rtol=1e-12, atol=1e-14)
    assert hm.directions(thetas).shape == (2, 5, 2)
    # the Jacobian by central differences matches a finer difference of the same H_M
    jac = hm.jacobian(thetas[0])
    e = torch.eye(2, dtype=torch.float64) * 1e-7
    fine = torch.stack([(hm(thetas[0] + e[j]) - hm(thetas[0] - e[j])) / 2e-7 for j in range(2)], 1)
    assert torch.allclose(jac, fine, rtol=1e-5, atol=1e-7)
    assert torch.equal(hm.jacobian(thetas)[0], jac)
