"""sa_clip.run_experiment: what `sa-clip run` computes, in one library call."""

import json

import pytest
import torch

import sa_clip as sc
from sa_clip.experiment import batched_loss, tracking_in_groups


@pytest.fixture(scope="module")
def exp():
    p = sc.problems.logistic2d()
    return sc.run_experiment(p, {"norm": sc.NormClip(1.0), "plain": "none"}, "harmonic:1.0",
                             steps=40, chains=5, record_every=2, starts=3, horizon=1.0,
                             tracking_chains=4)


def test_one_report_per_rule_with_everything(exp):
    assert [r.name for r in exp] == ["norm", "plain"] and len(exp) == 2
    r = exp["norm"]
    run = r.trajectory
    assert run.theta.shape == (5, 21, 2) and r.ode.theta.shape == (21, 2)
    assert r.tracking.distance.shape == (4, 3) and torch.isfinite(r.tracking.distance).all()
    assert set(r.seconds) == {"sgd", "ode", "tracking", "loss"}
    assert r.clip_fraction.shape == (5, 21) and 0 <= r.clip_fraction_late <= 1
    assert isinstance(exp["plain"].rule, sc.NoClip)
    # the same seed for every rule: without clipping the first step differs only by clipping
    assert torch.equal(run.theta[:, 0], exp["plain"].trajectory.theta[:, 0])


def test_losses_match_a_plain_loop(exp):
    p = exp.problem
    r = exp["norm"]
    ref = torch.tensor([[float(p.loss(th)) for th in chain] for chain in r.trajectory.theta],
                       dtype=torch.float64)
    assert torch.allclose(r.loss_sgd, ref, rtol=1e-12, atol=0)
    ref_ode = torch.tensor([float(p.loss(th)) for th in r.ode.theta], dtype=torch.float64)
    assert torch.allclose(r.loss_ode, ref_ode, rtol=1e-12, atol=0)


def test_batched_loss_chunks_and_nan_for_blown_up_rows():
    p = sc.problems.tanh_regression()
    theta = torch.randn(7, 3, 2, dtype=torch.float64)
    theta[2, 1] = float("nan")
    out = batched_loss(p, theta, chunk=4)
    assert out.shape == (7, 3) and torch.isnan(out[2, 1]) and torch.isfinite(out).sum() == 20
    ref = torch.tensor([[float(p.loss(t)) if torch.isfinite(t).all() else float("nan")
                         for t in row] for row in theta], dtype=torch.float64)
    assert torch.allclose(out, ref, equal_nan=True, rtol=1e-12, atol=0)


def test_summary_is_json_ready(exp):
    s = exp.summary()
    json.dumps(s, allow_nan=False)
    assert s["config"]["chains"] == 5 and [r["rule"]["rule"] for r in s["results"]] == [
        "norm", "none"]
    assert s["results"][0]["tracking_nfev"] == exp["norm"].tracking.nfev


def test_tracking_in_groups_equals_one_solve_within_tolerance():
    p = sc.problems.logistic2d()
    rule = sc.NormClip(1.0)
    field = sc.MeanField(p, rule)
    run = sc.simulate_sgd(p, rule, "harmonic:1.0", steps=60, chains=7, seed=1,
                          record_every=3)
    starts = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    whole = sc.tracking_distance(run, field, horizon=1.0, starts=starts)
    # a budget of one chain per group: 7 separate solves
    grouped = tracking_in_groups(run, field, horizon=1.0, starts=starts, group_elements=1)
    assert grouped.distance.shape == whole.distance.shape
    assert torch.allclose(grouped.distance, whole.distance, rtol=1e-4, atol=1e-6)
    assert grouped.nfev > whole.nfev and grouped.status == 0
    first = tracking_in_groups(run, field, horizon=1.0, starts=starts, chains=3)
    assert first.distance.shape == (3, 3)


def test_bad_rules_are_refused():
    p = sc.problems.logistic2d()
    kw = dict(steps=5, chains=2)
    with pytest.raises(ValueError, match="`rules` is empty"):
        sc.run_experiment(p, [], "harmonic:1.0", **kw)
    with pytest.raises(ValueError, match="names 'norm' twice"):
        sc.run_experiment(p, [sc.NormClip(1.0), sc.NormClip(0.5)], "harmonic:1.0", **kw)
    with pytest.raises(TypeError, match="`rules` must hold ClipRule objects or rule names"):
        sc.run_experiment(p, [3.0], "harmonic:1.0", **kw)


def test_tracking_options_reach_tracking_distance(monkeypatch):
    import sa_clip.experiment as experiment

    p = sc.problems.logistic2d()
    rule = sc.NormClip(1.0)
    run = sc.simulate_sgd(p, rule, "harmonic:1.0", steps=30, chains=3, seed=0)
    starts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    seen = []
    real = experiment.tracking_distance

    def spy(traj, field, **kw):
        seen.append({k: kw.get(k) for k in ("n_grid", "keep_paths")})
        kw.pop("keep_paths", None)              # (the real function may not take it yet)
        return real(traj, field, **kw)

    monkeypatch.setattr(experiment, "tracking_distance", spy)
    res = tracking_in_groups(run, sc.MeanField(p, rule), horizon=1.0, starts=starts,
                             group_elements=1, options={"n_grid": 3, "keep_paths": 1})
    assert seen == [{"n_grid": 3, "keep_paths": 1}, {"n_grid": 3, "keep_paths": None},
                    {"n_grid": 3, "keep_paths": None}]
    assert res.distance.shape == (3, 2)


def test_tracking_chains_beyond_the_chains_is_refused():
    # the attack: tracking_chains=50 of 2 chains was clamped without a word
    p = sc.problems.logistic2d(n=9)
    for bad in (50, 0, True, 1.5):
        with pytest.raises(ValueError, match="`tracking_chains` must be an integer from 1 to"):
            sc.run_experiment(p, [sc.NormClip(1.0)], "constant:0.1", steps=5, chains=2,
                              tracking_chains=bad)


def test_on_report_sees_each_rule_as_it_is_done(exp):
    p = exp.problem
    seen = []

    def on_report(report):
        # called before the next rule starts: only the stages of this rule exist so far
        seen.append((report.name, len(seen)))
        assert report.tracking.distance.shape == (4, 3)

    again = sc.run_experiment(p, {"norm": sc.NormClip(1.0), "plain": "none"}, "harmonic:1.0",
                              steps=40, chains=5, record_every=2, starts=3, horizon=1.0,
                              tracking_chains=4, on_report=on_report)
    assert seen == [("norm", 0), ("plain", 1)]
    assert torch.equal(again["norm"].tracking.distance, exp["norm"].tracking.distance)


def test_release_memory_is_harmless():
    from sa_clip._memory import release_memory
    assert isinstance(release_memory(), bool)
    x = torch.ones(1000)
    release_memory()
    assert float(x.sum()) == 1000.0
