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


@pytest.mark.slow
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
