"""MeanField: H, batched theta, clip statistics, directions and the Jacobian against brute
force; its errors, model-mode and dtype notes, and theta validation at every entry point."""

import warnings

import pytest
import torch
from helpers import rel_err

import sa_clip as sc
from problems import ALL_RULES, brute_clip, brute_grads, brute_H, mlp_problem, shared_problem


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "callable"])
@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.name)
def test_H_matches_brute_force_loop(loss, rule):
    p = shared_problem(loss)
    field = sc.MeanField(p, rule, chunk_size=5)   # uneven chunks on purpose
    theta = p.theta0
    assert rel_err(field(theta), brute_H(p, rule, theta)) < 1e-10


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.name)
def test_batched_theta_matches_brute_force(rule):
    p = mlp_problem(loss="cross_entropy")
    gen = torch.Generator().manual_seed(0)
    thetas = p.theta0 + 0.5 * torch.randn(3, p.P, generator=gen, dtype=p.dtype)
    H = sc.MeanField(p, rule)(thetas)
    assert H.shape == (3, p.P)
    for k in range(3):
        assert rel_err(H[k], brute_H(p, rule, thetas[k])) < 1e-10


def test_rules_actually_clip_on_the_test_problems():
    # a reference that cannot fail would hide bugs: every rule must clip something here
    p = shared_problem("mse")
    for rule in ALL_RULES[1:]:
        assert float(sc.MeanField(p, rule).clip_stats(p.theta0).fraction) > 0, rule


def test_huge_lam_equals_unclipped_gradient():
    p = mlp_problem()
    H = sc.MeanField(p, sc.NormClip(1e12))(p.theta0)
    assert rel_err(H, p.gradient(p.theta0)) < 1e-12
    assert rel_err(sc.MeanField(p, sc.NoClip())(p.theta0), p.gradient(p.theta0)) < 1e-12


def test_clip_stats_match_brute_force():
    p = shared_problem("mse")
    rule = sc.NormClip(0.3)
    st = sc.MeanField(p, rule).clip_stats(p.theta0)
    G = brute_grads(p, p.theta0)
    c = torch.clamp(G.norm(dim=1) / 0.3, min=1)
    assert torch.allclose(st.factors[:, 0], c, rtol=1e-12)
    assert float(st.fraction) == pytest.approx(float((c > 1).double().mean()))
    lw = sc.MeanField(p, sc.LayerwiseAdaptiveClip(0.1)).clip_stats(p.theta0)
    assert lw.factors.shape == (p.N, len(p.blocks))


def test_directions_sample_and_batch_clipping():
    p = mlp_problem()
    field = sc.MeanField(p, sc.NormClip(0.3))
    theta = torch.stack([p.theta0, p.theta0 * 0.5])
    idx = torch.tensor([[0, 3, 3], [5, 1, 2]])
    G = brute_grads(p, p.theta0)
    u = field.directions(theta, idx, "sample")
    ref0 = torch.stack([brute_clip(field.rule, G[i], p.theta0, p) for i in [0, 3, 3]]).mean(0)
    assert rel_err(u[0], ref0) < 1e-10
    ub = field.directions(theta, idx, "batch")
    refb = brute_clip(field.rule, G[[0, 3, 3]].mean(0), p.theta0, p)
    assert rel_err(ub[0], refb) < 1e-10


def test_jacobian_matches_finite_differences():
    p = mlp_problem()
    field = sc.MeanField(p, sc.NormClip(0.3))
    th = p.theta0
    J = field.jacobian(th)
    h = 1e-6
    fd = torch.stack([(field(th + h * e) - field(th - h * e)) / (2 * h)
                      for e in torch.eye(p.P, dtype=p.dtype)], 1)
    assert rel_err(J, fd) < 1e-6


def test_float32_follows_model():
    X = torch.randn(10, 2)
    p = sc.Problem(torch.nn.Linear(2, 1), X, X.sum(1))
    H = sc.MeanField(p, sc.NormClip(1.0))(p.theta0)
    assert H.dtype == torch.float32 and p.theta0.dtype == torch.float32


def test_meanfield_errors():
    p = mlp_problem()
    with pytest.raises(TypeError, match="`problem`"):
        sc.MeanField("nope", sc.NoClip())
    with pytest.raises(ValueError, match="`rule` must be one of"):
        sc.MeanField(p, "bogus")
    with pytest.raises(ValueError, match="`method`"):
        sc.MeanField(p, sc.NoClip(), method="magic")
    with pytest.raises(ValueError, match="`chunk_size`"):
        sc.MeanField(p, sc.NoClip(), chunk_size=0)
    with pytest.raises(ValueError, match=r"`theta` must have shape \(P,\) or \(K, P\) with P = "):
        sc.MeanField(p, sc.NoClip())(torch.zeros(p.P + 1))
    with pytest.raises(ValueError, match="`clip_per`"):
        sc.MeanField(p, sc.NoClip()).directions(p.theta0[None], torch.zeros(1, 1, dtype=int),
                                                 "epoch")


# ------------------------------------------------- models and theta (engines: test_engine.py)
def test_batchnorm_and_dropout_warn_once_per_problem():
    D = torch.float64
    model = torch.nn.Sequential(torch.nn.Linear(4, 3, dtype=D), torch.nn.BatchNorm1d(3, dtype=D),
                                torch.nn.Dropout(0.5), torch.nn.Linear(3, 2, dtype=D))
    X, y = torch.randn(8, 4, dtype=D), torch.randn(8, 2, dtype=D)
    p = sc.Problem(model, X, y)
    with pytest.warns(UserWarning, match=r"BatchNorm1d at '1', Dropout at '2': sa_clip "
                                         r"evaluates it in eval mode") as rec:
        f = sc.MeanField(p, sc.NormClip(0.5))
    assert "running statistics" in str(rec[0].message) and "couple the samples" in \
        str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.MeanField(p, sc.NoClip())                  # the same problem: said once
    # eval mode: dropout off, batch norm with running stats, so H is deterministic
    H = f(p.theta0)
    assert torch.equal(H, f(p.theta0))


def test_float32_note_is_given_once(monkeypatch):
    from sa_clip import meanfield
    monkeypatch.setattr(meanfield, "_NOTED", set())
    X = torch.randn(10, 2)
    with pytest.warns(UserWarning, match="float32: allowed, but float64 is the reference"):
        sc.MeanField(sc.Problem(torch.nn.Linear(2, 1), X, X.sum(1)), sc.NoClip())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.MeanField(sc.Problem(torch.nn.Linear(2, 1), X, X.sum(1)), sc.NoClip())
        sc.MeanField(mlp_problem(), sc.NoClip())       # float64: no note


@pytest.mark.parametrize("bad, match", [
    (float("nan"), "`theta` must be finite; found nan"),
    (float("inf"), "`theta` must be finite; found inf"),
])
def test_non_finite_theta_is_refused_at_every_entry_point(bad, match):
    p = mlp_problem()
    th = p.theta0.clone()
    th[3] = bad
    for engine in ("fast", "vmap"):
        f = sc.MeanField(p, sc.NormClip(0.3), engine=engine)
        for call in (f, f.jacobian, f.clip_stats, f.update_moments):
            with pytest.raises(ValueError, match=match):
                call(th)
        with pytest.raises(ValueError, match=match):
            f(torch.stack([p.theta0, th]))
    assert f.nfev == 0
    # also a RuntimeError: code that treats solver RuntimeErrors as a failed solve keeps working
    with pytest.raises(RuntimeError, match=match):
        f(th)


def test_complex_theta_is_refused_not_truncated():
    p = mlp_problem()
    f = sc.MeanField(p, sc.NormClip(0.3))
    for th in (p.theta0.to(torch.complex128), (p.theta0 + 0j).tolist(),
               (p.theta0 + 1j).numpy()):
        with pytest.raises(ValueError, match=r"`theta` must be real, got a complex tensor"):
            f(th)
    with pytest.raises(ValueError, match="`theta` must be real"):
        f.jacobian(p.theta0 + 1j)


def test_theta_that_overflows_the_problem_dtype_is_refused(monkeypatch):
    from sa_clip import meanfield
    monkeypatch.setattr(meanfield, "_NOTED", {"dtype"})           # no float32 note here
    X = torch.randn(6, 2)
    f = sc.MeanField(sc.Problem(torch.nn.Linear(2, 1), X, X.sum(1)), sc.NoClip())
    with pytest.raises(meanfield.NonFiniteThetaError, match=r"found inf at index \(1,\)"):
        f(torch.tensor([0.0, 1e300, 0.0], dtype=torch.float64))    # 1e300 is inf in float32
