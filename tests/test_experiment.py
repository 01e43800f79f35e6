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


RULES = {"norm": sc.NormClip(1.0), "plain": "none"}
SMALL = dict(steps=40, chains=5, record_every=2, starts=3, horizon=1.0, tracking_chains=4)


@pytest.mark.skipif(not sc.experiment.fork_available()[0], reason="no fork here")
def test_rules_in_worker_processes_give_the_numbers_of_one_process(exp):
    import os
    stages, reports = [], []

    def on_report(report):
        # runs in the worker: what it adds travels back with the report
        assert os.getpid() == report.worker["pid"] != parent
        report.seconds["figures"] = 0.25
        report.outputs.append(f"{report.name}.png")
        reports.append(report.name)                  # the worker's copy of this list

    parent = os.getpid()
    par = sc.run_experiment(exp.problem, RULES, "harmonic:1.0", **SMALL, workers=2,
                            on_report=on_report,
                            on_stage=lambda rule, stage, s: stages.append((rule, stage)))
    assert reports == []                                # on_report ran elsewhere
    assert stages == [(r, s) for r in ("norm", "plain")
                      for s in ("sgd", "ode", "tracking", "loss", "figures")]
    for name in RULES:
        a, b = exp[name], par[name]
        assert b.worker["pid"] != parent and b.worker["threads"] >= 1
        assert b.worker["peak_rss_mb"] > 0 and a.worker is None
        assert b.outputs == [f"{name}.png"] and b.seconds["figures"] == 0.25
        for x, y in [(a.trajectory.theta, b.trajectory.theta), (a.ode.theta, b.ode.theta),
                     (a.tracking.distance, b.tracking.distance),
                     (a.tracking.gap, b.tracking.gap), (a.loss_sgd, b.loss_sgd)]:
            assert x.dtype == y.dtype and torch.allclose(x, y, rtol=1e-12, atol=1e-15)
        # the field is rebuilt here and is the same H
        th = exp.problem.theta0
        assert torch.allclose(b.field(th), a.field(th), rtol=1e-13, atol=0)
    json.dumps(par.summary(), allow_nan=False)
    assert par.summary()["results"][0]["worker"]["pid"] == par["norm"].worker["pid"]
    assert par.config["workers"] == 2 and exp.config["workers"] == 1


def test_workers_fall_back_to_one_process_where_fork_is_unsafe(monkeypatch, exp):
    monkeypatch.setattr(sc.experiment, "fork_available",
                        lambda: (False, "CUDA is initialised in this process"))
    with pytest.warns(RuntimeWarning, match="workers=2 ignored, rules run one after another: "
                                            "CUDA is initialised"):
        par = sc.run_experiment(exp.problem, RULES, "harmonic:1.0", **SMALL, workers=2)
    assert par["norm"].worker is None
    assert torch.equal(par["norm"].tracking.distance, exp["norm"].tracking.distance)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2", None])
def test_workers_must_be_a_positive_integer(bad):
    p = sc.problems.logistic2d()
    with pytest.raises(ValueError, match=r"`workers` must be a positive integer, got "):
        sc.run_experiment(p, RULES, "harmonic:1.0", **SMALL, workers=bad)


def test_one_rule_or_one_worker_runs_here(exp, recwarn):
    one = sc.run_experiment(exp.problem, {"norm": sc.NormClip(1.0)}, "harmonic:1.0", **SMALL,
                            workers=4)
    assert one["norm"].worker is None and not recwarn.list
    assert torch.equal(one["norm"].trajectory.theta, exp["norm"].trajectory.theta)


def test_stages_that_on_report_adds_reach_on_stage_in_one_process_too(exp):
    stages = []

    def on_report(report):
        report.seconds["figures"] = 0.5

    sc.run_experiment(exp.problem, RULES, "harmonic:1.0", **SMALL, workers=1,
                      on_report=on_report, on_stage=lambda r, s, t: stages.append((r, s, t)))
    assert [(r, s) for r, s, _ in stages] == [
        (r, s) for r in ("norm", "plain") for s in ("sgd", "ode", "tracking", "loss", "figures")]
    assert [t for _, s, t in stages if s == "figures"] == [0.5, 0.5]


def test_finite_rows_equals_isfinite_all_in_chunks(monkeypatch):
    import sa_clip._memory as memory

    x = torch.randn(3, 11, 4, dtype=torch.float64)
    x[0, 2, 1], x[2, 10, 3], x[1, 0, 0] = float("nan"), float("inf"), -float("inf")
    monkeypatch.setattr(memory, "FINITE_ROWS", 4)           # 33 rows in 9 chunks
    got = memory.finite_rows(x)
    assert got.shape == (3, 11) and got.dtype == torch.bool
    assert torch.equal(got, torch.isfinite(x).all(-1)) and int((~got).sum()) == 3
    assert memory.finite_rows(torch.empty(0, 5)).shape == (0,)


@pytest.mark.skipif(not sc.experiment.fork_available()[0], reason="no fork here")
def test_progress_bars_come_from_the_first_worker_only(monkeypatch, tmp_path, exp):
    # the workers are other processes: they report what they were given through a file
    real = sc.experiment.simulate_sgd
    log = tmp_path / "progress.txt"

    def recording(problem, rule, *a, **k):
        with open(log, "a") as f:
            f.write(f"{rule.name} {k['progress']}\n")
        return real(problem, rule, *a, **{**k, "progress": False})

    monkeypatch.setattr(sc.experiment, "simulate_sgd", recording)
    sc.run_experiment(exp.problem, RULES, "harmonic:1.0", **SMALL, workers=2, progress=True)
    assert sorted(log.read_text().split("\n")[:-1]) == ["none False", "norm True"]
