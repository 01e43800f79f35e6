import json

import numpy as np
import pytest
import torch

import sa_clip as sc
from problems import brute_clip, brute_grads, mlp_problem
from sa_clip.sgd import make_generator, sgd_init, sgd_step
from sa_clip.sgd._fused import fused_engine as sgd_fused_engine

D = torch.float64


def brute_sgd(problem, rule, rates, theta0, indices, clip_per, radius=None):
    """Recursion (10) by plain loops over chains, steps and samples (float64)."""
    chains, steps, _ = indices.shape
    out = torch.empty(chains, steps + 1, problem.P, dtype=D)
    for c in range(chains):
        th = theta0[c].clone()
        out[c, 0] = th
        for n in range(steps):
            G = brute_grads(problem, th)
            batch = indices[c, n].tolist()
            if clip_per == "sample":
                u = sum(brute_clip(rule, G[i], th, problem) for i in batch) / len(batch)
            else:
                u = brute_clip(rule, sum(G[i] for i in batch) / len(batch), th, problem)
            th = th - float(rates[n]) * u
            if radius is not None and float(th.norm()) > radius:
                th = th * (radius / float(th.norm()))
            out[c, n + 1] = th
    return out


@pytest.mark.parametrize("clip_per", ["sample", "batch"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("rule", [sc.NormClip(0.3), sc.LayerwiseAdaptiveClip(0.1)],
                         ids=lambda r: r.name)
def test_replay_equals_brute_force_loop(rule, batch_size, clip_per):
    p = mlp_problem(n=7)
    steps, chains = 4, 2
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(p.N, (chains, steps, batch_size), generator=gen)
    theta0 = p.theta0 + 0.3 * torch.randn(chains, p.P, generator=gen, dtype=D)
    sched = sc.PowerLaw(0.4, 0.7)
    run = sc.simulate_sgd(p, rule, sched, steps=steps, chains=chains, batch_size=batch_size,
                          clip_per=clip_per, theta0=theta0, indices=idx)
    ref = brute_sgd(p, rule, sched.rates(steps), theta0, idx, clip_per)
    assert torch.allclose(run.theta, ref, rtol=0, atol=1e-12)
    assert run.tau.tolist() == pytest.approx([0] + np.cumsum(sched.rates(steps).numpy()).tolist(),
                                             rel=1e-15, abs=0)
    assert run.steps.tolist() == list(range(steps + 1)) and run.steps.dtype == torch.int64
    assert run.meta["sampling"] == "replay"
    # the recorded clipping fractions are those of the brute-force batches (and some clip)
    assert float(run.clip_fraction[:, :-1].nansum()) > 0
    assert torch.isnan(run.clip_fraction[:, -1]).all()


def test_replay_shared_indices_and_projection():
    p = mlp_problem(n=7)
    idx = torch.tensor([[0, 1], [2, 3], [6, 6]])
    rule = sc.NormClip(0.3)
    theta0 = torch.stack([p.theta0, 2 * p.theta0])
    run = sc.simulate_sgd(p, rule, "constant:0.5", steps=3, chains=2, batch_size=2,
                          theta0=theta0, indices=idx, project_radius=1.0)
    ref = brute_sgd(p, rule, torch.full((3,), 0.5), theta0, idx.expand(2, -1, -1), "sample",
                    radius=1.0)
    assert torch.allclose(run.theta, ref, rtol=0, atol=1e-12)
    assert float(run.theta[:, 1:].norm(dim=-1).max()) <= 1.0 + 1e-12


def test_clip_fraction_matches_hand_count():
    p = mlp_problem(n=7)
    G = brute_grads(p, p.theta0)
    norms = G[:4].norm(dim=1).sort().values
    lam = float(norms[1] + norms[2]) / 2         # between the norms: two clipped, two not
    idx = torch.tensor([[[0, 1, 2, 3]]])
    run = sc.simulate_sgd(p, sc.NormClip(lam), "harmonic:0.1", steps=1, batch_size=4,
                          indices=idx)
    frac = float((G[:4].norm(dim=1) > lam).double().mean())
    assert float(run.clip_fraction[0, 0]) == pytest.approx(frac)
    assert 0 < frac < 1


def test_full_batch_sgd_is_euler_on_the_ode():
    p = mlp_problem(n=9)
    rule = sc.NormClip(0.3)
    steps = 6
    sched = sc.Harmonic(0.8)
    idx = torch.arange(p.N).expand(steps, -1)
    run = sc.simulate_sgd(p, rule, sched, steps=steps, batch_size=p.N, indices=idx)
    field = sc.MeanField(p, rule)
    sol = sc.solve_ode(field, p.theta0, sched.tau(steps), method="euler")
    assert torch.allclose(run.theta[0], sol.theta, rtol=0, atol=1e-13)
    # and not trivially: the iterates move
    assert float((run.theta[0, -1] - p.theta0).norm()) > 0.1


def test_seed_determinism_and_recording():
    p = sc.problems.logistic2d(n=30)
    kw = dict(steps=12, chains=3, batch_size=2, seed=7, record_indices=True)
    a = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", **kw)
    b = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", **kw)
    c = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", **{**kw, "seed": 8})
    assert torch.equal(a.theta, b.theta) and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    assert a.indices.shape == (3, 12, 2)
    assert not torch.equal(a.indices[0], a.indices[1])          # chains independent
    # the recorded indices replay the run exactly
    r = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=12, chains=3, batch_size=2,
                        indices=a.indices)
    assert torch.equal(r.theta, a.theta)
    d = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=3)
    assert isinstance(d.meta["seed"], int)


def test_epoch_sampling_draws_each_sample_once_per_epoch():
    p = sc.problems.logistic2d(n=10)
    run = sc.simulate_sgd(p, sc.NoClip(), "constant:0.01", steps=6, chains=2, batch_size=3,
                          sampling="epoch", seed=0, record_indices=True)
    for c in range(2):
        for e in range(2):   # 3 batches of 3 per epoch (one sample dropped)
            ep = run.indices[c, 3 * e:3 * e + 3].reshape(-1)
            assert len(set(ep.tolist())) == 9
    assert run.meta["sampling"] == "epoch"


def test_record_every_keeps_first_and_last_step():
    p = sc.problems.logistic2d(n=20)
    run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=10, chains=2, seed=0,
                          record_every=4)
    assert run.steps.tolist() == [0, 4, 8, 10]
    full = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=10, chains=2, seed=0)
    assert torch.equal(run.theta, full.theta[:, [0, 4, 8, 10]])
    assert torch.equal(run.tau, full.tau[[0, 4, 8, 10]])


def test_blowup_is_recorded_and_other_chains_unaffected():
    p = sc.problems.quartic()
    theta0 = torch.tensor([[0.5], [3.0], [0.8], [-4.0]], dtype=D)
    kw = dict(steps=15, batch_size=2, seed=3)
    sc.schedules._WARNED.clear()
    with pytest.warns(UserWarning, match=r"\(A2\)"):   # constant steps: flagged, allowed
        run = sc.simulate_sgd(p, sc.NoClip(), "constant:0.45", chains=4, theta0=theta0,
                              record_indices=True, **kw)
    assert run.blowup_step[0] == -1 and run.blowup_step[2] == -1
    assert run.blowup_step[1] > 0 and run.blowup_step[3] > 0
    for c in (1, 3):
        k = int(run.blowup_step[c])
        assert torch.isfinite(run.theta[c, :k]).all() and torch.isnan(run.theta[c, k:]).all()
    # the healthy chains are exactly what they are when run alone with the same batches
    alone = sc.simulate_sgd(p, sc.NoClip(), "constant:0.45", chains=2, theta0=theta0[[0, 2]],
                            indices=run.indices[[0, 2]], **{**kw, "seed": None})
    assert torch.equal(alone.theta, run.theta[[0, 2]])
    assert torch.isfinite(alone.theta).all()
    # clipping tames it
    clipped = sc.simulate_sgd(p, sc.NormClip(1.0), "constant:0.45", chains=4, theta0=theta0,
                              **kw)
    assert (clipped.blowup_step == -1).all()


def test_record_noise_matches_definition():
    p = mlp_problem(n=7)
    rule = sc.NormClip(0.3)
    idx = torch.randint(p.N, (2, 5, 2), generator=torch.Generator().manual_seed(0))
    sched = sc.Harmonic(0.5)
    run = sc.simulate_sgd(p, rule, sched, steps=5, chains=2, batch_size=2, indices=idx,
                          record_noise=True)
    field = sc.MeanField(p, rule)
    a = sched.rates(5)
    for c in range(2):
        xi = torch.zeros(p.P, dtype=D)
        qv = 0.0
        for n in range(5):
            th = run.theta[c, n]
            G = brute_grads(p, th)
            u = sum(brute_clip(rule, G[i], th, p) for i in idx[c, n].tolist()) / 2
            m = u - field(th)
            assert float(run.noise_norm[c, n]) == pytest.approx(float(m.norm()), rel=1e-10)
            xi = xi + a[n] * m
            qv += float(a[n] ** 2 * (m @ m))
            assert torch.allclose(run.xi[c, n + 1], xi, atol=1e-12)
            assert float(run.quadratic_variation[c, n + 1]) == pytest.approx(qv, rel=1e-10)
    assert (run.xi[:, 0] == 0).all() and (run.quadratic_variation[:, 0] == 0).all()


def test_save_load_round_trip(tmp_path):
    p = sc.problems.logistic2d(n=20)
    run = sc.simulate_sgd(p, sc.NormClip(0.5), "power:0.5,0.7", steps=5, chains=2, seed=1,
                          record_indices=True, record_noise=True)
    path = tmp_path / "run.npz"
    run.save(path)
    back = sc.Trajectory.load(path)
    for name in ["theta", "tau", "steps", "blowup_step", "clip_fraction", "indices", "xi",
                 "quadratic_variation", "noise_norm"]:
        a, b = getattr(run, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)), name
    assert back.meta == json.loads(json.dumps(run.meta))
    assert back.meta["rule"] == {"rule": "norm", "lam": 0.5}
    assert back.meta["schedule"] == {"schedule": "power", "a0": 0.5, "alpha": 0.7, "n0": 1.0}
    assert [f.name for f in tmp_path.iterdir()] == ["run.npz"]     # no temp file left
    # optional arrays absent stay absent
    plain = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=2, seed=0)
    plain.save(tmp_path / "plain.npz")
    assert sc.Trajectory.load(tmp_path / "plain.npz").xi is None


def test_load_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="bad.npz"):
        sc.Trajectory.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    with pytest.raises(ValueError, match="not an sa_clip result"):
        sc.Trajectory.load(other)
    p = sc.problems.logistic2d(n=20)
    run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=2, seed=0)
    good = tmp_path / "good.npz"
    run.save(good)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="trunc.npz"):
        sc.Trajectory.load(trunc)
    sc.io.save_npz(tmp_path / "k.npz", {"x": np.zeros(2)}, {"kind": "Other"})
    with pytest.raises(ValueError, match="not a 'Trajectory'"):
        sc.Trajectory.load(tmp_path / "k.npz")
    with pytest.raises(FileNotFoundError):
        sc.Trajectory.load(tmp_path / "missing.npz")


def test_interpolation_against_hand_computation():
    theta = torch.tensor([[[0.0, 1.0], [2.0, 3.0], [2.0, -1.0]],
                          [[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]]], dtype=D)
    tr = sc.Trajectory(theta=theta, tau=torch.tensor([0.0, 0.5, 1.5], dtype=D),
                       steps=torch.tensor([0, 1, 2]), blowup_step=torch.tensor([-1, -1]),
                       clip_fraction=torch.zeros(2, 3, dtype=D))
    out = tr.interpolate([0.0, 0.25, 0.5, 1.0, 1.5])
    ref = torch.tensor([[[0, 1], [1, 2], [2, 3], [2, 1], [2, -1]],
                        [[1, 1], [1, 1], [1, 1], [3, 3], [5, 5]]], dtype=D)
    assert torch.allclose(out, ref, atol=1e-15)
    with pytest.raises(ValueError, match="within the recorded ODE times"):
        tr.interpolate([1.6])
    with pytest.raises(ValueError, match="within the recorded ODE times"):
        tr.interpolate([-0.1])
    # a NaN record (blow-up) only spoils the segments that touch it
    tr.theta[1, 2] = float("nan")
    out = tr.interpolate([0.5, 1.0])
    assert torch.isfinite(out[1, 0]).all() and torch.isnan(out[1, 1]).all()


def test_simulate_sgd_errors():
    p = mlp_problem(n=7)
    r, s = sc.NormClip(0.3), "constant:0.1"
    with pytest.raises(ValueError, match="`steps`"):
        sc.simulate_sgd(p, r, s, steps=0)
    with pytest.raises(ValueError, match="`chains`"):
        sc.simulate_sgd(p, r, s, steps=1, chains=0)
    with pytest.raises(ValueError, match="`batch_size`"):
        sc.simulate_sgd(p, r, s, steps=1, batch_size=0)
    with pytest.raises(ValueError, match="`clip_per`"):
        sc.simulate_sgd(p, r, s, steps=1, clip_per="layer")
    with pytest.raises(ValueError, match="`sampling`"):
        sc.simulate_sgd(p, r, s, steps=1, sampling="shuffle")
    with pytest.raises(ValueError, match=r"`indices` must have shape \(steps, batch_size\)"):
        sc.simulate_sgd(p, r, s, steps=2, batch_size=2, indices=torch.zeros(2, 3, dtype=int))
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 6\]"):
        sc.simulate_sgd(p, r, s, steps=1, indices=torch.tensor([[7]]))
    with pytest.raises(TypeError, match="`indices` must hold integer"):
        sc.simulate_sgd(p, r, s, steps=1, indices=torch.tensor([[0.0]]))
    with pytest.raises(ValueError, match="step sizes must be finite and > 0"):
        sc.simulate_sgd(p, r, lambda n: -1.0, steps=1)
    with pytest.raises(ValueError, match="`theta0` must have shape"):
        sc.simulate_sgd(p, r, s, steps=1, chains=2, theta0=torch.zeros(3, p.P))
    with pytest.raises(ValueError, match="`theta0` must be finite"):
        sc.simulate_sgd(p, r, s, steps=1, theta0=torch.full((p.P,), float("nan")))
    with pytest.raises(ValueError, match="`batch_size` = 8 exceeds N = 7"):
        sc.simulate_sgd(p, r, s, steps=1, batch_size=8, sampling="epoch")
    with pytest.raises(ValueError, match="`field` uses the rule"):
        sc.simulate_sgd(p, r, s, steps=1, field=sc.MeanField(p, sc.NoClip()))
    with pytest.raises(ValueError, match="`project_radius`"):
        sc.simulate_sgd(p, r, s, steps=1, project_radius=0)
    with pytest.raises(TypeError, match="`problem`"):
        sc.simulate_sgd("p", r, s, steps=1)
    with pytest.raises(TypeError, match="`seed`"):
        sc.simulate_sgd(p, r, s, steps=1, seed=1.5)


def test_seed_above_2_63_is_a_clear_value_error():
    # issue 11 item 12: a huge seed leaked torch's RuntimeError ("Overflow when unpacking long")
    p = sc.problems.logistic2d(n=10)
    for seed in (2 ** 63, 2 ** 64, 10 ** 30):
        with pytest.raises(ValueError, match=rf"`seed` must be an integer in \[0, 2\*\*63 - 1\].*"
                           rf"got {seed}"):
            sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=2, seed=seed)
        with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*63 - 1\]"):
            sc.batch_mean_field(p, sc.NormClip(0.5), p.theta0, 2, seed=seed)
    gen, s = make_generator(2 ** 63 - 1)
    assert s == 2 ** 63 - 1 and torch.equal(
        torch.randint(9, (5,), generator=gen),
        torch.randint(9, (5,), generator=torch.Generator().manual_seed(2 ** 63 - 1)))
    with pytest.raises(ValueError, match="`seed`"):
        make_generator(-1)


def test_field_is_checked_against_problem_and_rule():
    p, q = mlp_problem(n=7), mlp_problem(n=7)
    r = sc.NormClip(0.3)
    with pytest.raises(ValueError, match="built on the same `problem`"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=1, field=sc.MeanField(q, r))
    with pytest.raises(ValueError, match="built on the same `problem`"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=1, field="fast")
    f = sc.MeanField(p, r, method="vmap")
    run = sc.simulate_sgd(p, r, "harmonic:0.5", steps=3, chains=2, seed=0, field=f)
    assert torch.equal(run.theta, sc.simulate_sgd(p, r, "harmonic:0.5", steps=3, chains=2,
                                                  seed=0, field=f).theta)


def test_sgd_step_is_the_recursion():
    # the explicit state API: one step by hand equals sgd_step; dead chains stay frozen
    p = mlp_problem(n=7)
    rule = sc.NormClip(0.3)
    field = sc.MeanField(p, rule)
    theta0 = p.theta0 + 0.2 * torch.randn(3, p.P, generator=torch.Generator().manual_seed(0),
                                          dtype=D)
    state = sgd_init(p, 3, theta0, record_noise=True)
    idx = torch.tensor([[0, 1], [2, 3], [4, 5]])
    new, info = sgd_step(field, state, idx, 0.25, step=0, stats=True)
    u_ref = torch.stack([sum(brute_clip(rule, g, theta0[c], p)
                             for g in brute_grads(p, theta0[c])[idx[c]]) / 2 for c in range(3)])
    assert torch.allclose(new.theta, theta0 - 0.25 * u_ref, rtol=0, atol=1e-13)
    assert torch.allclose(info.direction, u_ref, rtol=0, atol=1e-13)
    m = u_ref - field(theta0)
    assert torch.allclose(new.xi, 0.25 * m, atol=1e-13)
    assert torch.allclose(info.noise_norm, m.norm(dim=1), atol=1e-13)
    assert info.clip_fraction.shape == (3,) and bool(new.alive.all())
    # a blow-up radius below the new norms kills every chain at step 1; theta stays
    dead, _ = sgd_step(field, state, idx, 0.25, step=0, blowup_radius=1e-3)
    assert not bool(dead.alive.any()) and dead.blowup_step.tolist() == [1, 1, 1]
    assert torch.equal(dead.theta, theta0)
    again, info = sgd_step(field, dead, idx, 0.25, step=1, stats=True)
    assert torch.equal(again.theta, theta0) and again.blowup_step.tolist() == [1, 1, 1]
    assert bool(torch.isnan(info.clip_fraction).all())


class PlainField(sc.MeanField):
    """Same numbers as MeanField, but overriding `directions` keeps runs on the general
    (out-of-place) step: the reference for the fused in-place kernel."""

    def directions(self, *a, **k):
        return super().directions(*a, **k)

    def directions_stats(self, *a, **k):
        return super().directions_stats(*a, **k)


def _both_paths(p, rule, sched, **kw):
    fused = sc.simulate_sgd(p, rule, sched, **kw)
    plain = sc.simulate_sgd(p, rule, sched, **kw, field=PlainField(p, rule))
    return fused, plain


@pytest.mark.parametrize("clip_per", ["sample", "batch"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("rule", [sc.NormClip(0.3), sc.NoClip()], ids=lambda r: r.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_fused_inplace_step_agrees_with_the_general_step(rule, batch_size, clip_per, dtype):
    # issue 16: the in-place kernel (no (K, P) gradient, predicted norms) is the same recursion;
    # blow-ups at the same step, clipping fractions identical
    p = mlp_problem(n=9, loss="cross_entropy")
    if dtype == torch.float32:
        p = sc.Problem(p.model.float(), p.X.float(), p.y, "cross_entropy")
    assert sgd_fused_engine(sc.MeanField(p, rule)) is not None
    kw = dict(steps=25, chains=6, batch_size=batch_size, clip_per=clip_per, seed=3,
              record_every=2, theta0=p.theta0 + torch.randn(6, p.P, generator=torch.Generator()
                                                            .manual_seed(1)).to(dtype))
    fused, plain = _both_paths(p, rule, sc.Harmonic(2.0), **kw)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert torch.allclose(fused.theta, plain.theta, rtol=0, atol=tol, equal_nan=True)
    assert torch.equal(fused.clip_fraction.isnan(), plain.clip_fraction.isnan())
    assert torch.equal(fused.clip_fraction.nan_to_num(), plain.clip_fraction.nan_to_num())
    # a blow-up radius crossed mid-run: the same chains blow up at the same steps
    norms = plain.theta.norm(dim=-1).max(1).values.sort().values   # each chain's largest norm
    radius = float(norms[2] + norms[3]) / 2                        # not a norm of any chain
    fused, plain = _both_paths(p, rule, sc.Harmonic(2.0), **kw, blowup_radius=radius)
    assert 0 < int(plain.blown_up.sum()) < 6
    assert torch.equal(fused.blowup_step, plain.blowup_step)
    assert torch.allclose(fused.theta, plain.theta, rtol=0, atol=tol, equal_nan=True)
    # and against the float64 brute-force loop through the same batches
    if dtype == torch.float64:
        idx = sc.simulate_sgd(p, rule, sc.Harmonic(2.0), **kw, record_indices=True).indices
        run = sc.simulate_sgd(p, rule, sc.Harmonic(2.0), **{**kw, "record_every": 1},
                              indices=idx)
        ref = brute_sgd(p, rule, sc.Harmonic(2.0).rates(25), kw["theta0"], idx, clip_per)
        assert torch.allclose(run.theta, ref, rtol=0, atol=1e-11)


def test_fused_step_detects_non_finite_iterates_at_the_exact_step():
    # no radius (inf): only non-finite iterates count; huge steps overflow some chains
    p = mlp_problem(n=9)
    th0 = p.theta0 * torch.tensor([1.0, 30.0, 1.0, 300.0], dtype=D)[:, None]
    kw = dict(steps=150, chains=4, seed=0, theta0=th0, blowup_radius=float("inf"))
    sc.schedules._WARNED.clear()
    with pytest.warns(UserWarning):
        fused, plain = _both_paths(p, sc.NoClip(), sc.Constant(1e3), **kw)
    assert bool(plain.blown_up.any())
    assert torch.equal(fused.blowup_step, plain.blowup_step)
    assert torch.equal(torch.isfinite(plain.theta), torch.isfinite(fused.theta))
    # the iterates grow by orders of magnitude a step: compare relative to their size
    # (finite entries whose squared norm overflows are not a blow-up with an infinite radius)
    live = torch.isfinite(plain.theta.norm(dim=-1))
    scale = plain.theta[live].norm(dim=-1)
    rel = (fused.theta[live] - plain.theta[live]).norm(dim=-1) / scale
    # the recursion multiplies rounding differences by ~1e3 a step, so two summation orders
    # (fused kernel vs engine) agree to ~1e-12 early and drift to ~1e-4 by 1e150: per step
    # they are the same map (test_fused_inplace_step_agrees_with_the_general_step)
    assert float(scale.max()) > 1e100 and float(rel.max()) < 1e-3


def test_fused_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    import sa_clip.sgd.driver as driver
    p = mlp_problem(n=9, loss="cross_entropy")
    rule = sc.NormClip(0.3)
    kw = dict(steps=40, chains=5, batch_size=2, seed=2, record_every=3, blowup_radius=3.0)
    ref = sc.simulate_sgd(p, rule, "harmonic:1.0", **kw)
    real, calls = driver.sgd_step, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) > 23:
            raise RuntimeError("killed")
        return real(*a, **k)
    ck = tmp_path / "f.npz"
    monkeypatch.setattr(driver, "sgd_step", dying)
    with pytest.raises(RuntimeError, match="killed"):
        sc.simulate_sgd(p, rule, "harmonic:1.0", **kw, checkpoint=ck, checkpoint_every=10)
    monkeypatch.setattr(driver, "sgd_step", real)
    out = sc.simulate_sgd(p, rule, "harmonic:1.0", **kw, checkpoint=ck, checkpoint_every=10,
                          resume=True)
    for k in ("theta", "clip_fraction", "blowup_step"):
        assert torch.equal(getattr(out, k).nan_to_num(7.0), getattr(ref, k).nan_to_num(7.0)), k
