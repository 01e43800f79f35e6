import math

import pytest
import torch

import sa_clip as sc

D = torch.float64


def hand_trajectory():
    theta = torch.tensor([[[1.0], [0.5], [0.3]], [[2.0], [1.0], [0.0]]], dtype=D)
    return sc.Trajectory(theta=theta, tau=torch.tensor([0.0, 1.0, 2.0], dtype=D),
                         steps=torch.tensor([0, 1, 2]), blowup_step=torch.tensor([-1, -1]),
                         clip_fraction=torch.zeros(2, 3, dtype=D))


def test_against_closed_form_flow():
    # H(theta) = theta: Phi_h(x) = x e^{-h}; chain 0 on [0, 1]: 1 - h/2, so
    # D_1(0) = max_h (1 - h/2 - e^{-h}) = 1/2 - ln(2)/2 at h = ln 2
    tr = hand_trajectory()
    res = sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[0.0, 0.5, 1.0],
                               n_grid=2001, rtol=1e-10, atol=1e-12)
    assert res.distance.shape == (2, 3) and res.start.tolist() == [0.0, 0.5, 1.0]
    assert float(res.distance[0, 0]) == pytest.approx(0.5 - math.log(2) / 2, abs=1e-7)
    # brute force on a dense grid for every chain and start
    h = torch.linspace(0, 1, 20001, dtype=D)
    for c in range(2):
        for j, s in enumerate([0.0, 0.5, 1.0]):
            bar = tr.interpolate(s + h)[c, :, 0]
            start = float(tr.interpolate([s])[c, 0, 0])
            ref = float((bar - start * torch.exp(-h)).abs().max())
            assert float(res.distance[c, j]) == pytest.approx(ref, abs=1e-7)
    assert torch.equal(res.median, res.distance.median(0).values)


def test_default_starts_and_errors():
    tr = hand_trajectory()
    res = sc.tracking_distance(tr, lambda th: th, horizon=0.5)
    assert res.start.shape == (20,) and float(res.start[-1]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="`horizon` = 3.0 exceeds"):
        sc.tracking_distance(tr, lambda th: th, horizon=3.0)
    with pytest.raises(ValueError, match="`horizon`"):
        sc.tracking_distance(tr, lambda th: th, horizon=0.0)
    with pytest.raises(ValueError, match="`starts` must lie in"):
        sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[1.5])
    with pytest.raises(ValueError, match="`starts` must be strictly increasing"):
        sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[0.5, 0.2])
    with pytest.raises(ValueError, match="`n_grid`"):
        sc.tracking_distance(tr, lambda th: th, horizon=1.0, n_grid=1)
    with pytest.raises(TypeError, match="`trajectory`"):
        sc.tracking_distance("run", lambda th: th, horizon=1.0)


def test_blown_up_chain_gives_nan_from_its_blowup_on():
    p = sc.problems.quartic()
    theta0 = torch.tensor([[0.5], [3.0], [0.8]], dtype=D)
    run = sc.simulate_sgd(p, sc.NoClip(), sc.Harmonic(0.8, 1), steps=30, chains=3,
                          theta0=theta0, seed=0)
    assert run.blowup_step.tolist()[0] == -1 and run.blowup_step[1] > 0
    field = sc.MeanField(p, sc.NoClip())
    res = sc.tracking_distance(run, field, horizon=0.2, starts=[0.0, 1.5])
    assert torch.isfinite(res.distance[[0, 2]]).all()
    assert torch.isfinite(res.distance[1, 0])        # window [0, 0.2] before the blow-up
    assert torch.isnan(res.distance[1, 1])
    assert float(res.median[1]) == pytest.approx(float(res.distance[[0, 2], 1].median()))
    assert res.status == 0


def test_tracking_distance_falls_on_convex_real_data():
    # logistic regression on (standardised) wine, decreasing steps, many chains
    p = sc.problems.logistic_regression("wine")
    rule = sc.NormClip(1.0)
    run = sc.simulate_sgd(p, rule, sc.PowerLaw(2.0, 0.7), steps=200, chains=8, seed=0,
                          record_every=2)
    last = float(run.tau[-1])
    res = sc.tracking_distance(run, sc.MeanField(p, rule), horizon=1.0,
                               starts=torch.linspace(0, last - 1.0, 4))
    med = res.median
    assert torch.isfinite(med).all()
    assert float(med[0]) > 4 * float(med[-1]), med


@pytest.mark.slow
@pytest.mark.parametrize("max_elements", [2 ** 24, 8 * 3 * 2 * 2 * 3])
def test_gap_and_paths_against_a_per_chain_solve(max_elements):
    # logistic2d, clipped field: gaps and flow segments of the one batched solve against a
    # plain float64 loop that solves each (chain, start) on its own; the small budget solves
    # the grid in pieces and forms the gaps three offsets at a time
    p = sc.problems.logistic2d(n=40)
    rule = sc.NormClip(0.5)
    field = sc.MeanField(p, rule)
    run = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=40, chains=3, seed=1)
    starts = [0.0, 1.0]
    res = sc.tracking_distance(run, field, horizon=0.6, starts=starts, n_grid=7,
                               rtol=1e-9, atol=1e-11, keep_paths=[2, 0],
                               max_elements=max_elements, keep_gap=True)
    G = res.offsets.numel()
    assert res.gap.shape == (3, 2, G) and res.paths.shape == (2, 2, G, 2)
    assert torch.equal(res.offsets, res.h) and res.path_chains.tolist() == [2, 0]
    # the sup over h of the gap is D_T, exactly
    assert torch.equal(res.gap.amax(-1), res.distance)
    h = res.offsets
    for c in range(3):
        for k, s in enumerate(starts):
            x = run.interpolate([s])[c, 0]
            sol = sc.solve_ode(field, x, h, rtol=1e-9, atol=1e-11)
            bar = run.interpolate(s + h)[c]
            ref = (bar - sol.theta).norm(dim=-1)
            assert torch.allclose(res.gap[c, k], ref, atol=1e-7), (c, k)
            if c in (2, 0):
                assert torch.allclose(res.path(c)[k], sol.theta, atol=1e-7)
    assert torch.allclose(res.median_gap(), res.gap.median(0).values)
    with pytest.raises(ValueError, match="`chain` = 1 has no flow segments"):
        res.path(1)


def test_result_with_gap_and_paths_round_trips(tmp_path):
    tr = hand_trajectory()
    res = sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[0.0, 1.0], keep_paths=1)
    res.save(tmp_path / "t.npz")
    back = sc.TrackingResult.load(tmp_path / "t.npz")
    for name in ("start", "distance", "h", "gap", "paths", "path_chains"):
        assert torch.equal(getattr(back, name), getattr(res, name)), name
    assert back.nfev == res.nfev and back.horizon == 1.0
    # without paths: loads with paths None
    sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[0.0]).save(tmp_path / "u.npz")
    assert sc.TrackingResult.load(tmp_path / "u.npz").paths is None


def test_one_extreme_chain_does_not_spoil_the_others():
    # a chain started at 1e140 blows up at step 1: its windows are left out of the solve
    p = sc.problems.logistic2d(n=30)
    rule = sc.NormClip(0.5)
    field = sc.MeanField(p, rule)
    theta0 = torch.tensor([[0.5, -0.5], [1e140, 1e140], [-0.3, 0.2]], dtype=D)
    run = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=30, chains=3, theta0=theta0, seed=0)
    assert run.blowup_step.tolist()[1] == 1
    res = sc.tracking_distance(run, field, horizon=0.3, starts=[0.0, 0.5, 1.0], keep_paths=3)
    assert res.status == 0, res.message
    assert torch.isnan(res.distance[1]).all() and torch.isnan(res.gap[1]).all()
    assert torch.isnan(res.paths[1]).all()
    assert torch.isfinite(res.distance[[0, 2]]).all()
    # the others are as if the extreme chain were not there
    keep = sc.Trajectory(run.theta[[0, 2]], run.tau, run.steps, run.blowup_step[[0, 2]],
                         run.clip_fraction[[0, 2]])
    ref = sc.tracking_distance(keep, field, horizon=0.3, starts=[0.0, 0.5, 1.0])
    assert torch.allclose(res.distance[[0, 2]], ref.distance, rtol=1e-6, atol=1e-9)


def test_field_of_another_problem_is_named():
    tr = hand_trajectory()                                    # P = 1
    other = sc.MeanField(sc.problems.logistic2d(n=10), sc.NormClip(1.0))   # P = 2
    with pytest.raises(ValueError, match=r"`field` is the mean field of a problem with P = 2"):
        sc.tracking_distance(tr, other, horizon=0.5)
    with pytest.raises(ValueError, match=r"`field` failed on a \(1, 1\) batch"):
        sc.tracking_distance(tr, lambda th: th @ torch.ones(2, 2, dtype=D), horizon=0.5)
    with pytest.raises(ValueError, match=r"`field` returned"):
        sc.tracking_distance(tr, lambda th: th.repeat(1, 2), horizon=0.5)
    with pytest.raises(ValueError, match=r"`keep_paths\[1\]` must be an index in \[0, 1\]"):
        sc.tracking_distance(tr, lambda th: th, horizon=0.5, keep_paths=[0, 5])
    with pytest.raises(TypeError, match="`keep_paths`"):
        sc.tracking_distance(tr, lambda th: th, horizon=0.5, keep_paths=True)


def test_gap_is_kept_within_the_memory_budget():
    tr = hand_trajectory()
    full = sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[0.0, 0.5, 1.0],
                                n_grid=11)
    assert full.gap is not None                               # small: kept by default
    g = full.h.numel()
    small = sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[0.0, 0.5, 1.0],
                                 n_grid=11, max_elements=2 * 3 * g - 1)
    assert small.gap is None                                  # over the budget: D_T only
    assert torch.allclose(small.distance, full.distance, atol=1e-12)
    forced = sc.tracking_distance(tr, lambda th: th, horizon=1.0, starts=[0.0], n_grid=11,
                                  max_elements=1, keep_gap=True)
    assert forced.gap is not None and torch.equal(forced.gap.amax(-1), forced.distance)
    with pytest.raises(TypeError, match="`keep_gap`"):
        sc.tracking_distance(tr, lambda th: th, horizon=1.0, keep_gap="yes")
    with pytest.raises(ValueError, match="has no `gap`"):
        small.median_gap()
