import math

import numpy as np
import pytest
import torch

import sa_clip as sc
from sa_clip.equilibria import classify, clipping_bias, find_equilibria, switch_margin

HUBER = [(1.0, -2.5), (2.0, -2.0), (5.0, -0.5), (8.0, 1.0), (50.0, 1.0)]


@pytest.mark.parametrize("lam,expected", HUBER)
def test_huber_location_closed_form(lam, expected):
    p = sc.problems.location_problem([-3.0, -3.0, 9.0])
    field = sc.MeanField(p, sc.NormClip(lam))
    eq = find_equilibria(field, n_starts=6, scale=4.0, seed=0)
    assert len(eq) == 1
    assert float(eq[0].theta) == pytest.approx(expected, abs=1e-9)
    assert eq[0].kind == "stable"
    bias = clipping_bias(field, eq[0].theta)
    # unclipped gradient at the clipped zero = theta* - mean, unclipped minimiser = mean = 1
    assert bias.grad_norm == pytest.approx(abs(expected - 1.0), abs=1e-9)
    assert float(bias.theta_unclipped) == pytest.approx(1.0, abs=1e-7)
    assert bias.loss_gap == pytest.approx(0.5 * (expected - 1.0) ** 2, abs=1e-9)


def test_continuum_of_equilibria():
    p = sc.problems.location_problem([-3.0, 3.0])
    field = sc.MeanField(p, sc.NormClip(1.0))
    grid = torch.linspace(-2, 2, 41, dtype=torch.float64)[:, None]
    assert float(field(grid).abs().max()) < 1e-15          # every point of [-2, 2]
    assert float(field(torch.tensor([2.5])).abs()) > 0     # and not beyond
    eq = find_equilibria(field, starts=grid[::8], seed=0)
    assert len(eq) == 1                                    # one set, not 6 points
    (s,) = eq
    assert s.is_set and s.kind == "degenerate" and s.count == 6
    assert float(s.lower) == pytest.approx(-2.0, abs=1e-8)
    assert float(s.upper) == pytest.approx(2.0, abs=1e-8)
    assert s.extent == pytest.approx(4.0, abs=1e-7) and s.members.shape == (6, 1)
    assert float(s.theta) == pytest.approx(0.0, abs=1e-8) and s.residual < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("data, lam", [([-5.0, -2.0, 1.0, 6.0], 0.5),
                                       ([-4.0, -1.0, 0.5, 2.0, 7.0, 9.0], 0.3)])
def test_huber_interval_is_one_set_with_closed_form_endpoints(data, lam):
    # l_i = (theta - x_i)^2 / 2 with an even number of samples: H = 0 exactly where the two
    # middle samples are both clipped on opposite sides, [x_(n/2) + lam, x_(n/2+1) - lam]
    p = sc.problems.location_problem(data)
    field = sc.MeanField(p, sc.NormClip(lam))
    eq = find_equilibria(field, n_starts=14, scale=3.0, seed=1)
    x = sorted(data)
    lo, hi = x[len(x) // 2 - 1] + lam, x[len(x) // 2] - lam
    sets = [e for e in eq if e.is_set]
    assert len(sets) == 1 and len(eq) == 1, eq.summary()
    s = sets[0]
    assert float(s.lower) == pytest.approx(lo, abs=1e-8)
    assert float(s.upper) == pytest.approx(hi, abs=1e-8)
    assert lo - 1e-9 <= float(s.members.min()) and float(s.members.max()) <= hi + 1e-9
    assert s.count + eq.not_converged == 14 and "continua" in eq.summary()
    # no merging asked: the separate degenerate points of before
    raw = find_equilibria(field, n_starts=14, scale=3.0, seed=1, merge_sets=False)
    assert len(raw) > 1 and not any(e.is_set for e in raw)
    assert sum(e.kind == "degenerate" for e in raw) > 1
    assert sum(e.count for e in raw) == s.count


def test_two_dimensional_continuum_is_one_cluster():
    # both coordinates see the 1-D location interval: H(a, b) = (H1(a), H1(b)), a square of
    # zeros [-2, 2]^2; the roots found on it form one cluster with their bounding box
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x):
            return x * 0 + torch.stack([self.a, self.b])

    X = torch.zeros(2, 2, dtype=torch.float64)
    y = torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=torch.float64)
    p = sc.Problem(Pair(), X, y, loss=lambda o, t: 0.5 * ((o - t) ** 2).sum())
    # one group per coordinate, threshold max(|a|, 1): H = 0 on the square [-1.5, 1.5]^2
    field = sc.MeanField(p, sc.LayerwiseAdaptiveClip(1.0, eps=1.0))
    starts = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-0.7, 0.3], [0.2, 0.6]],
                          dtype=torch.float64)
    assert float(field(starts).abs().max()) < 1e-14
    eq = find_equilibria(field, starts=starts, max_norm=None)
    assert len(eq) == 1 and eq[0].is_set and eq[0].count == 4
    # each start is a zero already; on a continuum (DH = 0) a round-off residual of ~1e-17
    # may still move the root finder a little along the set, so the box is the starts' box
    # to 1e-3, and every member lies inside the square of zeros
    box = dict(atol=1e-3, rtol=0)
    assert torch.allclose(eq[0].lower, torch.tensor([-0.7, -0.5], dtype=torch.float64), **box)
    assert torch.allclose(eq[0].upper, torch.tensor([0.5, 0.6], dtype=torch.float64), **box)
    assert float(eq[0].members.abs().max()) <= 1.5
    assert float(field(eq[0].members).abs().max()) < 1e-12
    assert eq[0].extent == pytest.approx(float(torch.cdist(starts, starts).max()), abs=2e-3)


def test_far_out_saturated_zeros_are_filtered_in_the_library():
    p = sc.problems.tanh_regression()
    field = sc.MeanField(p, sc.NormClip(1.0))
    far = torch.tensor([[40.0, 35.0]], dtype=torch.float64)      # tanh saturated: H ~ 0
    near = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    starts = torch.cat([near, far])
    every = find_equilibria(field, starts=starts, max_norm=None)
    assert any(float(e.theta.norm()) > 20 for e in every)
    eq = find_equilibria(field, starts=starts, max_norm=20.0)
    assert all(float(e.theta.norm()) <= 20 for e in eq) and len(eq.beyond_max_norm) >= 1
    assert "beyond ||theta|| > 20" in eq.summary()
    auto = find_equilibria(field, starts=near, scale=1.0)
    assert auto.max_norm == pytest.approx(10 * float(near.norm()))
    with pytest.raises(ValueError, match="`max_norm` must be a number > 0"):
        find_equilibria(field, starts=near, max_norm=-1.0)


def test_old_method_keyword_is_the_root_method():
    p = sc.problems.location_problem([-3.0, -3.0, 9.0])
    f = sc.MeanField(p, sc.NormClip(1.0))
    start = torch.tensor([[-2.4]], dtype=torch.float64)
    a = find_equilibria(f, starts=start, method="lm")
    b = find_equilibria(f, starts=start, root_method="lm")
    assert float(a[0].theta) == float(b[0].theta) == pytest.approx(-2.5)
    with pytest.raises(ValueError, match="`method` is the old name of `root_method`"):
        find_equilibria(f, method="lm", root_method="hybr-x")


def test_classify_and_switch_margin():
    assert classify(np.array([1.0, -1.0])) == ("saddle", "node")
    assert classify(np.array([-1.0, -2.0])) == ("unstable", "node")
    assert classify(np.array([0.0, 1.0]))[0] == "degenerate"
    assert classify(np.array([1 + 2j, 1 - 2j])) == ("stable", "focus")
    p = sc.problems.location_problem([-3.0, -3.0, 9.0])
    # at theta = 1 with lam = 8 the third sample sits exactly on the switch (|1 - 9| = 8)
    assert switch_margin(sc.MeanField(p, sc.NormClip(8.0)), torch.tensor([1.0])) == 0.0
    assert switch_margin(sc.MeanField(p, sc.NoClip()), torch.tensor([1.0])) == math.inf


def test_tanh_toy_has_symmetric_stable_pair():
    p = sc.problems.tanh_regression()
    starts = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 1.5], [-2.0, -1.5], [0.1, -0.1]],
                          dtype=torch.float64)
    eq = find_equilibria(sc.MeanField(p, sc.NormClip(1.0)), starts=starts)
    assert any(e.kind == "saddle" and float(e.theta.norm()) < 1e-8 for e in eq)
    stable = [e for e in eq if e.kind == "stable"]
    assert len(stable) == 2
    assert torch.allclose(stable[0].theta, -stable[1].theta, atol=1e-8)


def test_equilibria_errors():
    p = sc.problems.location_problem([1.0, 2.0])
    with pytest.raises(ValueError, match="`n_starts`"):
        find_equilibria(sc.MeanField(p, sc.NoClip()), n_starts=0)
    with pytest.raises(ValueError, match="`starts` must have shape"):
        find_equilibria(sc.MeanField(p, sc.NoClip()), starts=torch.zeros(3, 2))
