"""Regression tests for the attack cases of issue 24 (one test per case).

Each case must give a clear error (naming the argument and the value), a correct result, or a
warning that names the cause: never a silent wrong result, a raw traceback, lost output or a
hang.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa_clip._validate import check_index, check_indices


# ------------------------------------------------------------------ index arguments
@pytest.mark.parametrize("value", [np.int64(2), np.int32(2), 2, torch.tensor(2)])
def test_check_index_accepts_numpy_integers(value):
    assert check_index("chain", value, 4) == 2


@pytest.mark.parametrize("value", ["1", 1.0, np.float64(1.0), True, np.bool_(True), None])
def test_check_index_refuses_strings_floats_bools(value):
    with pytest.raises(TypeError, match="`chain` must be an integer index"):
        check_index("chain", value, 4)


def test_check_index_range_named():
    with pytest.raises(ValueError, match=r"`chain` must be an index in \[0, 3\], got 4"):
        check_index("chain", 4, 4)
    assert check_index("record", -1, 4, negative=True) == 3


@pytest.mark.parametrize("value", ["12", [0.7], 2.0, True, 5, [True], np.array([0.5])])
def test_check_indices_refuses_strings_and_floats(value):
    with pytest.raises(TypeError, match="`keep_paths"):
        check_indices("keep_paths", value, 3)


def test_check_indices_accepts_numpy():
    assert check_indices("keep_paths", np.array([0, 2], dtype=np.int64), 3) == [0, 2]
    assert check_indices("keep_paths", [np.int64(1)], 3) == [1]
    with pytest.raises(ValueError, match="distinct"):
        check_indices("keep_paths", [1, 1], 3)


# ------------------------------------------------------------------ resume fingerprint
import functools  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

import sa_clip as sc  # noqa: E402
from sa_clip.sgd import checkpoint as ckpt_mod  # noqa: E402


def _reg_problem(loss, model=None):
    torch.manual_seed(0)
    X = torch.randn(12, 2, dtype=torch.float64)
    y = torch.randn(12, 1, dtype=torch.float64)
    model = model if model is not None else torch.nn.Linear(2, 1)
    return sc.Problem(model, X, y, loss=loss, dtype=torch.float64)


def _first_then_resume(tmp_path, loss_a, loss_b, model_a=None, model_b=None, **kw):
    path = tmp_path / "run.ckpt.npz"
    common = dict(steps=6, chains=2, seed=0, checkpoint=path, checkpoint_every=2)
    sc.simulate_sgd(_reg_problem(loss_a, model_a), sc.NormClip(1.0), "harmonic:0.1",
                    **common)
    return sc.simulate_sgd(_reg_problem(loss_b, model_b), sc.NormClip(1.0), "harmonic:0.1",
                           resume=True, **common, **kw)


def _make_scaled(scale):
    return lambda o, t: scale * ((o - t) ** 2).sum()


def test_resume_refuses_changed_closure_cell(tmp_path):
    with pytest.raises(ValueError, match="loss or the model changed.*force_resume=True"):
        _first_then_resume(tmp_path, _make_scaled(1.0), _make_scaled(3.0))


def test_resume_accepts_same_closure(tmp_path):
    run = _first_then_resume(tmp_path, _make_scaled(1.0), _make_scaled(1.0))
    assert run.theta.shape[0] == 2


def _weighted(o, t, w):
    return w * ((o - t) ** 2).sum()


def test_resume_refuses_changed_partial_argument(tmp_path):
    with pytest.raises(ValueError, match="cannot resume.*loss"):
        _first_then_resume(tmp_path, functools.partial(_weighted, w=1.0),
                           functools.partial(_weighted, w=3.0))


def test_resume_refuses_changed_huber_delta(tmp_path):
    with pytest.raises(ValueError, match="cannot resume.*HuberLoss"):
        _first_then_resume(tmp_path, torch.nn.HuberLoss(delta=0.1, reduction="sum"),
                           torch.nn.HuberLoss(delta=10.0, reduction="sum"))


def _twin_modules():
    """Two classes of one name and repr whose forwards differ."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x)
    a = Net

    class Net(torch.nn.Module):  # noqa: F811 (same name on purpose)
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return 2.0 * self.lin(x)
    return a, Net


def test_resume_refuses_module_with_same_repr_other_forward(tmp_path):
    A, B = _twin_modules()
    torch.manual_seed(1)
    ma = A()
    mb = B()
    mb.load_state_dict(ma.state_dict())
    assert repr(ma) == repr(mb)
    with pytest.raises(ValueError, match="cannot resume.*model"):
        _first_then_resume(tmp_path, "mse", "mse", ma, mb)


def test_resume_refuses_changed_plain_module_attribute(tmp_path):
    class Scaled(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)
            self.k = k

        def forward(self, x):
            return self.k * self.lin(x)
    torch.manual_seed(1)
    ma, mb = Scaled(1.0), Scaled(3.0)
    mb.load_state_dict(ma.state_dict())
    with pytest.raises(ValueError, match="cannot resume.*model"):
        _first_then_resume(tmp_path, "mse", "mse", ma, mb)


def test_force_resume_turns_change_into_warning(tmp_path):
    with pytest.warns(UserWarning, match="force_resume"):
        run = _first_then_resume(tmp_path, _make_scaled(1.0), _make_scaled(3.0),
                                 force_resume=True)
    assert run.theta.shape[0] == 2


def _rewrite_version(path, version):
    arrays, meta = sc.io.load_npz(path, kind=ckpt_mod.KIND)
    fp = dict(meta["fingerprint"])
    if version is None:
        fp.pop("sa_clip")
    else:
        fp["sa_clip"] = version
    parts = {k: meta.get(k) for k in ("config", "step", "sampler", "seed")}
    parts["fingerprint"] = fp
    sc.io.save_npz(path, arrays, {"kind": ckpt_mod.KIND, **parts,
                                  "checkpoint_digest": ckpt_mod._content_digest(arrays, parts)})


@pytest.mark.parametrize("version", ["0.0.1", None])
def test_resume_refuses_checkpoint_of_another_version(tmp_path, version):
    path = tmp_path / "run.ckpt.npz"
    p = _reg_problem("mse")
    common = dict(steps=6, chains=2, seed=0, checkpoint=path, checkpoint_every=2)
    sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", **common)
    _rewrite_version(path, version)
    with pytest.raises(ValueError, match=r"written by (sa_clip 0\.0\.1|an older sa_clip).*"
                                         r"this is sa_clip .*--force-resume"):
        sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", resume=True, **common)
    with pytest.warns(UserWarning, match="written by"):
        sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", resume=True,
                        force_resume=True, **common)


class _Opaque:
    __slots__ = ()


def test_resume_with_unfingerprintable_loss_asks_for_force(tmp_path):
    thing = _Opaque()

    def loss(o, t):
        _ = thing
        return ((o - t) ** 2).sum()
    with pytest.raises(ValueError, match="cannot be fingerprinted.*_Opaque.*--force-resume"):
        _first_then_resume(tmp_path, loss, loss)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _first_then_resume(tmp_path, loss, loss, force_resume=True)
    assert any("cannot be fingerprinted" in str(x.message) for x in w)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_resume_from_fifo_is_refused_not_hung(tmp_path):
    fifo = tmp_path / "run.ckpt.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO.*regular file"):
        sc.simulate_sgd(_reg_problem("mse"), sc.NormClip(1.0), "harmonic:0.1", steps=3,
                        checkpoint=fifo, resume=True)


def test_rule_names_cannot_escape_checkpoint_dir(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    rules = {"../escape": sc.NormClip(1.0), str(tmp_path / "abs"): sc.NoClip()}
    sc.run_experiment(_reg_problem("mse"), rules, "harmonic:0.1", steps=6, chains=2,
                      record_every=2, starts=2, checkpoint_dir=d)
    outside = sorted(p.name for p in tmp_path.iterdir())
    assert outside == ["ck"]
    inside = sorted(p.name for p in d.iterdir())
    assert len(inside) == 2 and all(n.endswith(".ckpt.npz") for n in inside)


def test_rule_names_must_be_strings():
    with pytest.raises(TypeError, match="rule name must be a string"):
        sc.run_experiment(_reg_problem("mse"), {1: sc.NoClip()}, "harmonic:0.1", steps=2)


# ------------------------------------------------------------------ overflow-free norms
def _huge_target_problem(dtype=torch.float64, scale=1e200):
    torch.manual_seed(0)
    X = torch.randn(20, 3, dtype=dtype)
    y = scale * torch.randn(20, 1, dtype=dtype)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return sc.Problem(net, X, y, loss="mse", dtype=dtype)


def _reference_field(p, rule, theta):
    """Plain loop over samples, group norms computed scaled by hand (float64)."""
    g = torch.stack([p.per_sample_grads(theta, p.X[i:i + 1], p.y[i:i + 1])[0]
                     for i in range(p.N)]).double()
    layer = rule.granularity == "layer"
    tn = torch.stack([theta[b.start:b.stop].norm() for b in p.blocks]) if layer else None
    out = []
    for gi in g:
        parts = [gi[b.start:b.stop] for b in p.blocks] if layer else [gi]
        norms = torch.stack([q.abs().max() * ((q / q.abs().max()) ** 2).sum().sqrt()
                             for q in parts])
        c = rule.factors(norms, tn)
        out.append(torch.cat([q / ck for q, ck in zip(parts, c)]))
    return torch.stack(out).mean(0)


@pytest.mark.parametrize("method", ["vmap", "fast", "layers"])
@pytest.mark.parametrize("rule", [sc.NormClip(1.0), sc.make_rule("layerwise", lam=1.0)],
                         ids=["global", "layer"])
def test_huge_targets_give_the_clipped_field_not_zero(method, rule):
    p = _huge_target_problem()
    H = sc.MeanField(p, rule, method=method)(p.theta0[None])[0]
    ref = _reference_field(p, rule, p.theta0)
    assert H.norm() > 0.1
    torch.testing.assert_close(H, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("clip_per", ["sample", "batch"])
def test_huge_targets_sgd_moves(clip_per):
    p = _huge_target_problem()
    run = sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", steps=10, chains=2, seed=0,
                          batch_size=3, clip_per=clip_per)
    assert bool((run.blowup_step == -1).all())
    moved = (run.theta[:, -1] - run.theta[:, 0]).norm(dim=-1)
    assert bool((moved > 1e-3).all()) and bool(torch.isfinite(moved).all())
    # every clipped step has length <= a(n) * lam: the update is bounded, not inf or 0
    steps = (run.theta[:, 1:] - run.theta[:, :-1]).norm(dim=-1)
    assert float(steps.max()) <= 0.1 + 1e-9


def test_huge_targets_float32():
    p = _huge_target_problem(torch.float32, scale=1e25)
    H = sc.MeanField(p, sc.NormClip(1.0), method="vmap")(p.theta0[None])[0]
    assert float(H.norm()) > 0.1 and bool(torch.isfinite(H).all())


def test_stable_norm_matches_plain_norm_and_differentiates():
    from torch.func import jacfwd, vmap

    from sa_clip.layout import stable_norm
    x = torch.randn(5, 7, dtype=torch.float64)
    assert torch.equal(stable_norm([x]), torch.linalg.vector_norm(x, dim=-1))
    big = torch.cat([x[:1] * 1e200, x[1:]])
    want = torch.linalg.vector_norm(big / 1e200, dim=-1) * 1e200
    torch.testing.assert_close(stable_norm([big])[:1], want[:1], rtol=1e-14, atol=0)
    torch.testing.assert_close(stable_norm([big], safe=True), stable_norm([big]))
    jac = vmap(jacfwd(lambda v: stable_norm([v], safe=True)))(big)
    torch.testing.assert_close(jac, big / stable_norm([big])[:, None])


# ------------------------------------------------------------------ scale checks up front
def test_pca_plane_thin_route_equals_svd_and_never_forms_p_by_p(monkeypatch):
    from sa_clip.plane import Plane, pca_plane
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(30, 500, generator=gen, dtype=torch.float64) * torch.linspace(
        3, 0.1, 500, dtype=torch.float64)
    pts[4] = float("nan")
    shapes = []
    real_eigh = torch.linalg.eigh

    def spy(a):
        shapes.append(tuple(a.shape))
        return real_eigh(a)
    monkeypatch.setattr(torch.linalg, "eigh", spy)
    thin = pca_plane(pts[:10], pts[10:], chunk=4)
    assert shapes == [(29, 29)]                       # n x n, not 500 x 500
    ref = Plane.pca(pts)
    assert abs(float(thin.d1 @ ref.d1)) == pytest.approx(1.0, abs=1e-10)
    assert abs(float(thin.d2 @ ref.d2)) == pytest.approx(1.0, abs=1e-10)
    assert thin.explained == pytest.approx(ref.explained, rel=1e-10)
    torch.testing.assert_close(thin.center, ref.center)


def test_memory_room_sees_rlimit_as():
    resource = pytest.importorskip("resource")
    from sa_clip._memory import memory_room
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = used + 2 ** 30
    if hard != resource.RLIM_INFINITY and limit > hard:
        pytest.skip("hard RLIMIT_AS too low")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        room, why = memory_room()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert "RLIMIT_AS" in why and room <= 2 ** 30


def test_run_experiment_refuses_too_large_records_up_front(monkeypatch):
    import sa_clip._memory as mem
    monkeypatch.setattr(mem, "memory_room", lambda: (2 ** 20, "room under the process "
                                                     "limit RLIMIT_AS (ulimit -v)"))
    called = []
    monkeypatch.setattr(sc.experiment, "run_rule", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError, match=r"needs about .* GiB \(recorder .*RLIMIT_AS"):
        sc.run_experiment(_reg_problem("mse"), sc.NoClip(), "harmonic:0.1", steps=5000,
                          chains=64, record_every=1)
    assert not called


def test_cli_refuses_a_million_parameters_before_compute(tmp_path, capsys, monkeypatch):
    import sa_clip._memory as mem
    from sa_clip.cli import main
    monkeypatch.setattr(mem, "memory_room", lambda: (4 * 2 ** 30, "physical memory"))
    rc = main(["run", "--quick", "--hidden", "1000,1000", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "P = 1018003" in err and "PCA plane" in err and "recorder" in err
    assert not (tmp_path / "o" / "summary.json").exists()


# ------------------------------------------------------------------ results carry their run
def _shadow_pair():
    p = sc.problems.logistic2d()
    r = sc.NormClip(1.0)
    a = sc.simulate_sgd(p, r, "power:1.0,0.6", steps=200, chains=3, seed=0)
    b = sc.simulate_sgd(p, r, "power:1.0,0.6", steps=5, chains=3, seed=1)
    res = sc.tracking_distance(a, sc.MeanField(p, r), horizon=1.0, keep_paths=[0],
                               starts=[0.5, 4.0], keep_gap=True)
    return p, a, b, res


def test_tracking_result_carries_its_run(tmp_path):
    p, a, b, res = _shadow_pair()
    assert res.run_id == a.run_key() != b.run_key()
    res.save(tmp_path / "t.npz")
    assert sc.TrackingResult.load(tmp_path / "t.npz").run_id == res.run_id


def test_plot_shadowing_refuses_result_of_another_run():
    from sa_clip.viz import plot_shadowing
    p, a, b, res = _shadow_pair()
    with pytest.raises(ValueError, match="computed from another run"):
        plot_shadowing(b, res, problem=p)
    old = dataclasses_replace(res, run_id=None)          # a result of an older version
    with pytest.raises(ValueError, match="past the end of `trajectory`"):
        plot_shadowing(b, old, problem=p)


def test_plot_shadowing_all_chains_blown_up_says_so():
    from sa_clip.viz import plot_shadowing
    p = sc.problems.logistic2d()
    run = sc.simulate_sgd(p, sc.NoClip(), "constant:50", steps=60, chains=2, seed=0,
                          blowup_radius=1.0)
    assert bool((run.blowup_step > 0).all())
    res = sc.tracking_distance(run, sc.MeanField(p, sc.NoClip()), horizon=1.0,
                               starts=[0.5], keep_paths=[0], keep_gap=True)
    with pytest.raises(ValueError, match="no finite tracking distance.*2 of 2 chains blew up"):
        plot_shadowing(run, res, problem=p)


@pytest.mark.parametrize("band, err", [((0.9, 0.1), "reversed"), ((0.1, 1.5), "0 <= lo < hi"),
                                       ("ab", "finite real"), (0.5, "pair")])
def test_band_is_checked(band, err):
    import matplotlib
    matplotlib.use("Agg")
    from sa_clip.viz import plot_ensemble
    with pytest.raises((ValueError, TypeError), match=err):
        plot_ensemble(torch.arange(3.0), torch.ones(2, 3), band=band)


def dataclasses_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


# ------------------------------------------------------------------ steps overflow
def test_simulate_sgd_huge_steps_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`steps` must be an integer from 1 to"):
        sc.simulate_sgd(sc.problems.logistic2d(), sc.NoClip(), "harmonic:1", steps=2 ** 64)
    with pytest.raises(ValueError, match=r"need about .* GiB"):
        sc.simulate_sgd(sc.problems.logistic2d(), sc.NoClip(), "harmonic:1", steps=2 ** 62,
                        record_every=2 ** 61)


# ------------------------------------------------------------------ float32 = float64 network
def test_float32_network_is_the_float64_network_rounded():
    a = sc.problems.real_problem("iris", hidden=(8,), dtype=torch.float64)
    b = sc.problems.real_problem("iris", hidden=(8,), dtype=torch.float32)
    torch.testing.assert_close(b.theta0, a.theta0.float(), rtol=0, atol=0)
    c = sc.problems.logistic2d(dtype=torch.float32)
    torch.testing.assert_close(c.X, sc.problems.logistic2d().X.float(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ worker exceptions
def _raise_local():
    class Local(Exception):
        pass
    raise Local("the secret message")


class _TwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"bad {a} and {b}")


def _raise_two_args():
    raise _TwoArgs(1, 2)


@pytest.mark.parametrize("job, text", [(_raise_local, "Local: the secret message"),
                                       (_raise_two_args, "_TwoArgs: bad 1 and 2")])
def test_unpicklable_worker_exception_keeps_its_message(job, text):
    from sa_clip._workers import WorkerError, fork_available, run_jobs
    if not fork_available()[0]:
        pytest.skip("no fork here")
    with pytest.raises(WorkerError, match=text) as info:
        list(run_jobs([("a", job), ("b", lambda: 1)], workers=2))
    assert any(text.split(":")[1].strip() in n for n in info.value.__notes__)


# ------------------------------------------------------------------ index arguments in use
def test_numpy_chain_index_accepted_by_plot_shadowing_and_path():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sa_clip.viz import plot_shadowing
    p, a, _, res = _shadow_pair()
    assert res.path(np.int64(0)).shape[0] == 2
    plt.close(plot_shadowing(a, res, chain=np.int64(0), problem=p))
    with pytest.raises(TypeError, match="`chain` must be an integer index"):
        plot_shadowing(a, res, chain="0", problem=p)
    with pytest.raises(TypeError, match="`chain` must be an integer index"):
        res.path(0.0)


# ------------------------------------------------------------------ sa-clip run
_FAST = ["--quick", "--samples", "40", "--steps", "40", "--record-every", "4",
         "--noise-chains", "0", "--portrait-grid", "0", "--workers", "1"]


def _cli(args, capsys):
    from sa_clip.cli import main
    rc = main(["run", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_config_with_two_spellings_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("batch-size = 2\nbatch_size = 3\n")
    rc, _, err = _cli([*_FAST, "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "'batch-size' and 'batch_size' both set `--batch-size`" in err


def test_cli_toml_huge_steps_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("steps = 100000000000000000000000000000\n")
    rc, _, err = _cli(["--quick", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "`--steps` must be an integer from 1 to 2**63-1" in err


def test_cli_quick_with_fewer_chains_needs_no_tracking_chains(tmp_path, capsys):
    import json
    rc, _, err = _cli([*_FAST, "--chains", "2", "--rule", "norm", "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert "tracking-chains" not in err
    cfg = json.loads((tmp_path / "o" / "summary.json").read_text())["config"]
    assert cfg["tracking_chains"] == 2


def test_cli_workers_recorded_as_run(tmp_path, capsys):
    import json
    rc, _, err = _cli([*_FAST[:-2], "--workers", "999", "--rule", "norm,adaptive", "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 0, err
    cfg = json.loads((tmp_path / "o" / "summary.json").read_text())["config"]
    assert cfg["workers"] <= 2


def test_cli_starts_1_keeps_every_figure(tmp_path, capsys):
    rc, out, err = _cli([*_FAST, "--starts", "1", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert "log-scaled" not in err + out
    names = sorted(p.name for p in (tmp_path / "o").glob("*.png"))
    assert {"shadowing_norm.png", "shadowing_adaptive.png", "tracking.png"} <= set(names)


def test_cli_all_chains_blown_up_keeps_the_other_figures(tmp_path, capsys):
    rc, out, err = _cli([*_FAST, "--rule", "none", "--schedule", "constant:1e8", "--out",
                         str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert "log-scaled" not in err + out
    assert "shadowing_none.png not drawn" in out + err and "blew up" in out + err
    names = {p.name for p in (tmp_path / "o").glob("*.png")}
    assert {"ode_vs_sgd_none.png", "tracking.png", "loss.png"} <= names


def test_interpolate_chain_indices_accept_numpy_and_refuse_strings():
    run = sc.simulate_sgd(sc.problems.logistic2d(), sc.NoClip(), "harmonic:1", steps=5,
                          chains=3, seed=0)
    t = torch.tensor([0.5])
    torch.testing.assert_close(run.interpolate(t, np.int64(1)), run.interpolate(t, 1))
    torch.testing.assert_close(run.interpolate(t, [0, np.int64(2)]), run.interpolate(t)[[0, 2]])
    for bad in ("1", 1.0, [0.5]):
        with pytest.raises(TypeError, match="`chains"):
            run.interpolate(t, bad)
