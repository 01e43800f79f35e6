"""Long work says what it costs (cost estimates, bars), a public chain subset for tracking,
solver tolerances by dtype, the float64-conv-on-CPU warning, SGD chains of a conv model and
the digits CNN of the zoo (issue 21, items 3-5)."""

import copy
import warnings

import numpy as np
import pytest
import torch

import sa_clip as sc
import sa_clip._cost as cost
from sa_clip import cli
from sa_clip.ode import default_tolerances
from sa_clip.problems import digits_cnn, make_problem
from sa_clip.tracking import select_chains

D = torch.float64


@pytest.fixture(scope="module")
def small_run():
    p = sc.problems.logistic2d(n=40)
    rule = sc.NormClip(1.0)
    run = sc.simulate_sgd(p, rule, "harmonic:1.0", steps=60, chains=5, seed=0, progress=False)
    return p, rule, run


# ------------------------------------------------------------------ cost estimates and bars
class FakeClock:
    """``time.perf_counter`` for the Meter: each call advances by ``step`` seconds."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_meter_times_the_second_unit_and_multiplies(monkeypatch, capsys):
    monkeypatch.setattr(cost.time, "perf_counter", FakeClock(0.5))
    monkeypatch.setenv("SA_CLIP_PROGRESS", "1")
    m = cost.Meter("stage", None, units=100, total=100, unit="step",
                   describe=lambda sec: f"100 units x {cost.duration(sec)}")
    m.tick(1)
    assert m.message is None                       # the first unit pays one-off costs
    m.tick(2)
    m.close()
    assert m.estimate == pytest.approx(50.0)       # 0.5 s per unit x 100 units
    err = capsys.readouterr().err
    assert "stage: 100 units x 0.5 s: about 50 s" in err


@pytest.mark.parametrize("progress,env,quiet_s,shown", [
    (None, "1", float("inf"), False),              # short stage: silent by default
    (None, "1", 0.0, True),                        # long stage: estimate and bar
    (None, "0", 0.0, False),                       # SA_CLIP_PROGRESS=0 silences auto mode
    (False, "1", 0.0, False),                      # progress=False: never
    (True, "0", float("inf"), True),               # progress=True: always
])
def test_estimates_printed_only_when_asked_or_long(monkeypatch, capsys, small_run, progress,
                                                   env, quiet_s, shown):
    p, rule, run = small_run
    monkeypatch.setenv("SA_CLIP_PROGRESS", env)
    monkeypatch.setattr(cost, "QUIET_SECONDS", quiet_s)
    field = sc.MeanField(p, rule)
    sc.solve_ode(field, p.theta0, run.tau, progress=progress)
    sc.tracking_distance(run, field, horizon=1.0, starts=[0.0, 1.0], progress=progress)
    sc.simulate_sgd(p, rule, "harmonic:1.0", steps=10, chains=3, seed=0, progress=progress)
    err = capsys.readouterr().err
    lines = ["solve_ode: about ", "tracking: 10 flows x about ", "simulate_sgd: 10 steps x 3 "
             "chains x "]
    for line in lines:
        assert (line in err) == shown, (line, err)
    if shown:
        assert err.count(": about ") >= 3 and "evaluations (rough: from rtol" in err


def test_progress_argument_is_checked(small_run):
    p, rule, run = small_run
    with pytest.raises(TypeError, match="`progress` must be True, False or None"):
        sc.solve_ode(sc.MeanField(p, rule), p.theta0, [0.0, 1.0], progress="yes")
    with pytest.raises(TypeError, match="`progress` must be True, False or None"):
        sc.tracking_distance(run, sc.MeanField(p, rule), horizon=1.0, progress=1)


def test_ode_evaluation_estimate_exact_for_fixed_steps_rough_for_adaptive():
    p = sc.problems.tanh_regression()
    field = sc.MeanField(p, sc.NormClip(1.0))
    sol = sc.solve_ode(field, p.theta0, torch.linspace(0, 1, 5, dtype=D), solver="rk4",
                       options={"step_size": 0.05})
    assert cost.ode_evaluations("rk4", 1e-7, 1.0, 5, {"step_size": 0.05}) == sol.nfev == 80
    assert cost.ode_evaluations("euler", 1e-7, 2.0, 11) == 10
    for prob in (p, sc.problems.logistic2d()):          # the documented factor of 5
        fld = sc.MeanField(prob, sc.NormClip(1.0))
        for span in (5.0, 20.0):
            n = sc.solve_ode(fld, prob.theta0, torch.linspace(0, span, 30, dtype=D)).nfev
            guess = cost.ode_evaluations("dopri5", 1e-7, span, 30)
            assert guess / 5 <= n <= 5 * guess, (prob.name, span, n, guess)


# ------------------------------------------------------------------ tracking: chains=
def test_chains_subset_equals_full_tracking_restricted(small_run):
    p, rule, run = small_run
    field = sc.MeanField(p, rule)
    kw = dict(horizon=1.0, starts=[0.0, 0.7, 1.5], rtol=1e-8, atol=1e-10)
    full = sc.tracking_distance(run, field, keep_paths=[1, 3], **kw)
    sub = sc.tracking_distance(run, field, chains=[3, np.int64(1)], keep_paths=[0, 1], **kw)
    assert sub.chains.tolist() == [3, 1] and full.chains is None
    assert sub.distance.shape == (2, 3) and sub.gap.shape[:2] == (2, 3)
    torch.testing.assert_close(sub.distance, full.distance[[3, 1]], rtol=0, atol=1e-5)
    torch.testing.assert_close(sub.gap, full.gap[[3, 1]], rtol=0, atol=1e-5)
    # keep_paths and path() count within the selection: row 0 is chain 3, row 1 is chain 1
    torch.testing.assert_close(sub.path(0), full.path(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(sub.path(1), full.path(1), rtol=0, atol=1e-5)
    # exactly the tracking of the selected sub-run
    alone = sc.tracking_distance(select_chains(run, [3, 1]), field, keep_paths=[0, 1], **kw)
    assert torch.equal(alone.distance, sub.distance) and torch.equal(alone.paths, sub.paths)


def test_chains_subset_survives_save_and_load(small_run, tmp_path):
    p, rule, run = small_run
    res = sc.tracking_distance(run, sc.MeanField(p, rule), horizon=1.0, starts=[0.0, 1.0],
                               chains=[4, 0])
    res.save(tmp_path / "t.npz")
    back = sc.TrackingResult.load(tmp_path / "t.npz")
    assert back.chains.tolist() == [4, 0] and torch.equal(back.distance, res.distance)


def test_shadowing_of_a_chain_subset_takes_the_whole_run_or_the_selection(small_run):
    """A result of tracking_distance(chains=) is drawn with the whole run (the figure picks
    the tracked chains) or with select_chains(run, chains); another run of as many chains as
    were tracked is refused, also after save and load."""
    import matplotlib.pyplot as plt

    p, rule, run = small_run
    field = sc.MeanField(p, rule)
    res = sc.tracking_distance(run, field, horizon=1.0, starts=[0.0, 1.0], chains=[4, 0],
                               keep_paths=[0], keep_gap=True)
    assert res.run_id == run.run_key() and res.tracked_id == select_chains(run, [4, 0]).run_key()
    for traj in (run, select_chains(run, [4, 0])):
        plt.close(sc.viz.plot_shadowing(traj, res, chain=0))
    other = select_chains(run, [1, 2])
    with pytest.raises(ValueError, match="another run"):
        sc.viz.plot_shadowing(other, res, chain=0)


@pytest.mark.parametrize("name,value,error,match", [
    ("keep_paths", "12", TypeError, "`keep_paths` must be a sequence of integer indices"),
    ("keep_paths", [0.7], TypeError, r"`keep_paths\[0\]` must be an integer index"),
    ("keep_paths", [True], TypeError, r"`keep_paths\[0\]` must be an integer index"),
    ("keep_paths", [0, 0], ValueError, "distinct"),
    ("chains", "12", TypeError, "`chains` must be a sequence of integer indices"),
    ("chains", [0.5], TypeError, r"`chains\[0\]` must be an integer index"),
    ("chains", [7], ValueError, r"`chains\[0\]` must be an index in \[0, 4\]"),
    ("chains", [], ValueError, "`chains` must name at least one chain"),
    ("chains", 2, TypeError, "`chains` must be a sequence of integer indices"),
])
def test_chain_indices_refuse_strings_floats_and_bad_indices(small_run, name, value, error,
                                                             match):
    p, rule, run = small_run
    with pytest.raises(error, match=match):
        sc.tracking_distance(run, lambda th: th, horizon=1.0, starts=[0.0], **{name: value})


def test_numpy_integer_indices_are_accepted(small_run):
    p, rule, run = small_run
    res = sc.tracking_distance(run, lambda th: th, horizon=1.0, starts=[0.0],
                               chains=np.array([2, 4]), keep_paths=[np.int64(1)])
    assert res.chains.tolist() == [2, 4] and res.path_chains.tolist() == [1]
    assert sc.tracking_distance(run, lambda th: th, horizon=1.0, starts=[0.0],
                                keep_paths=np.int64(2)).path_chains.tolist() == [0, 1]


def test_experiment_tracks_groups_with_chains(small_run):
    from sa_clip.experiment import tracking_in_groups
    p, rule, run = small_run
    field = sc.MeanField(p, rule)
    starts = torch.tensor([0.0, 1.0], dtype=D)
    grouped = tracking_in_groups(run, field, horizon=1.0, starts=starts, chains=4,
                                 group_elements=1, options={"rtol": 1e-8, "atol": 1e-10})
    whole = sc.tracking_distance(run, field, horizon=1.0, starts=starts, rtol=1e-8,
                                 atol=1e-10)
    assert grouped.chains.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(grouped.distance, whole.distance[:4], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ tolerances by dtype
def test_default_tolerances_follow_the_dtype(small_run):
    assert default_tolerances(torch.float64) == (1e-7, 1e-9)
    assert default_tolerances(torch.float32) == (1e-4, 1e-6)
    assert sc.tracking.TOLERANCES[torch.float64] == (1e-6, 1e-8)
    for dtype, (rtol, atol) in ((torch.float32, (1e-4, 1e-6)), (D, (1e-7, 1e-9))):
        p = sc.problems.tanh_regression().to(dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            field = sc.MeanField(p, sc.NormClip(1.0))
        t = torch.linspace(0, 5, 6, dtype=D)
        auto = sc.solve_ode(field, p.theta0, t)
        given = sc.solve_ode(field, p.theta0, t, rtol=rtol, atol=atol)
        assert auto.nfev == given.nfev and torch.equal(auto.theta, given.theta)
        assert auto.theta.dtype == dtype
    # float32 at the float64 defaults chases round-off: many more evaluations
    tight = sc.solve_ode(field.__class__(p.to(dtype=torch.float32), sc.NormClip(1.0)),
                         p.theta0.float(), t, rtol=1e-7, atol=1e-9)
    loose = sc.solve_ode(field.__class__(p.to(dtype=torch.float32), sc.NormClip(1.0)),
                         p.theta0.float(), t)
    assert loose.nfev < tight.nfev


def test_tracking_default_tolerances_follow_the_dtype(small_run):
    p, rule, run = small_run
    run32 = select_chains(run, [0, 1])
    run32 = run32.__class__(**{**run32.__dict__, "theta": run32.theta.float(),
                               "clip_fraction": run32.clip_fraction.float()})
    f32 = lambda th: th - 0.5                                     # noqa: E731
    auto = sc.tracking_distance(run32, f32, horizon=1.0, starts=[0.0, 1.0])
    given = sc.tracking_distance(run32, f32, horizon=1.0, starts=[0.0, 1.0], rtol=1e-4,
                                 atol=1e-6)
    assert auto.nfev == given.nfev and torch.equal(auto.distance, given.distance)


# ------------------------------------------------------------------ float64 conv on the CPU
def test_float64_conv_on_cpu_warns_once(monkeypatch):
    monkeypatch.setattr(cost, "_SLOW_CONV_WARNED", False)
    X = torch.randn(6, 1, 5, 5, dtype=D)
    y = torch.randn(6, dtype=D)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
                               torch.nn.Linear(18, 1))
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(25, 1))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sc.Problem(mlp, X, y)                                     # no convolution
        sc.Problem(conv, X, y, dtype=torch.float32)               # float32
        sc.Problem(conv, X, y)                                    # float64 conv: warns
        sc.Problem(conv, X, y)                                    # ... once
    msgs = [str(w.message) for w in seen if "no fast float64 convolution" in str(w.message)]
    assert len(msgs) == 1 and "Conv2d" in msgs[0] and "dtype=torch.float32" in msgs[0]
    assert seen[[str(w.message) for w in seen].index(msgs[0])].filename == __file__


# ------------------------------------------------------------------ SGD chains of a CNN
def test_conv_chains_equal_a_hand_loop_over_chains_in_float64():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = digits_cnn(channels=(2, 3), dtype=D, n=50)
    chains, steps, lam = 4, 6, 0.5
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, p.N, (chains, steps, 1), generator=gen)
    theta0 = p.theta0 + 0.05 * torch.randn(chains, p.P, generator=gen, dtype=D)
    sched = sc.make_schedule("harmonic:0.5")
    run = sc.simulate_sgd(p, sc.NormClip(lam), sched, steps=steps, chains=chains,
                          theta0=theta0, indices=idx)
    rates = sched.rates(steps).tolist()
    model = copy.deepcopy(p.model)
    X, y = p.X, p.y
    for k in range(chains):                 # one chain at a time, plain autograd, no vmap
        th = theta0[k].clone()
        for n in range(steps):
            torch.nn.utils.vector_to_parameters(th, model.parameters())
            i = int(idx[k, n, 0])
            loss = torch.nn.functional.cross_entropy(model(X[i:i + 1]), y[i:i + 1],
                                                     reduction="sum")
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss,
                                                                      model.parameters())])
            th = th - rates[n] * g / max(1.0, float(g.norm()) / lam)
        torch.testing.assert_close(run.theta[k, -1], th.detach(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ the digits CNN
def test_digits_cnn_problem_builds_and_runs():
    p = make_problem("digits-cnn", n=40)
    assert (p.N, p.P, p.dtype) == (40, 1210, torch.float32)
    assert p.X.shape == (40, 1, 8, 8)
    field = sc.MeanField(p, sc.NormClip(1.0))
    assert field(p.theta0).shape == (1210,)
    p64 = digits_cnn(dtype=D, n=40)
    # the same initial weights in both dtypes (drawn in float64, then cast)
    torch.testing.assert_close(p64.theta0.float(), p.theta0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`channels` must be two channel counts"):
        digits_cnn(channels=(3,))


@pytest.mark.slow
def test_sa_clip_run_digits_cnn(tmp_path, capsys):
    out = tmp_path / "cnn"
    assert cli.main(["run", "--problem", "digits-cnn", "--dtype", "float32", "--quick",
                     "--steps", "40", "--chains", "3", "--samples", "60", "--starts", "2",
                     "--tracking-chains", "2", "--noise-chains", "0", "--portrait-grid", "0",
                     "--rule", "norm", "--quiet", "--out", str(out)]) == 0
    assert (out / "summary.json").exists()
    assert any(out.glob("*.png"))


def test_digits_cnn_run_settings_fill_only_unset_options():
    from sa_clip.cli import run as run_cmd
    from sa_clip.cli.options import resolve_options
    from sa_clip.cli.parser import build_parser

    def resolved(*argv):
        parser = build_parser()
        args = parser.parse_args(["run", *argv])
        return resolve_options(args, parser.commands["run"], run_cmd.DEFAULTS, run_cmd.QUICK)

    cnn = resolved("--problem", "digits-cnn")
    assert (cnn.dtype, cnn.chains, cnn.steps, cnn.tracking_chains, cnn.starts) == \
        ("float32", 32, 600, 4, 6)
    mine = resolved("--problem", "digits-cnn", "--dtype", "float64", "--chains", "8")
    assert (mine.dtype, mine.chains, mine.tracking_chains) == ("float64", 8, 4)
    wine = resolved()
    assert (wine.dtype, wine.chains, wine.tracking_chains) == ("float64", 64, None)


def test_loss_stage_of_a_conv_model_takes_one_vector_at_a_time():
    from sa_clip.experiment import batched_loss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = digits_cnn(channels=(2, 3), dtype=D, n=30)
    gen = torch.Generator().manual_seed(1)
    theta = p.theta0 + 0.1 * torch.randn(3, 4, p.P, generator=gen, dtype=D)
    theta[1, 2] = float("nan")
    calls = []
    real = p.loss
    p.loss = lambda t: calls.append(t.shape[0]) or real(t)   # noqa: E731
    out = batched_loss(p, theta)
    assert set(calls) == {1} and len(calls) == 11              # 12 vectors, one not finite
    ref = torch.tensor([[float(real(t)) if bool(torch.isfinite(t).all()) else float("nan")
                         for t in row] for row in theta], dtype=D)
    assert torch.isnan(out[1, 2])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0, equal_nan=True)
