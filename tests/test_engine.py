"""Engines (:mod:`sa_clip.engine`, :data:`sa_clip.meanfield.ENGINES`): each one against brute
force, the choice between them and why, the model analysed once, a registered engine by name."""

import pytest
import torch
from helpers import rel_err

import sa_clip as sc
from problems import ALL_RULES, brute_clip, brute_grads, brute_H, mlp_problem


@pytest.mark.parametrize("engine", ["vmap", "fast"])
@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.name)
def test_update_moments_and_ratios_match_brute_force(rule, engine):
    if engine == "fast" and isinstance(rule, sc.ValueClip):
        pytest.skip("the fast engine does not serve ValueClip")
    p = mlp_problem(n=9)
    th = p.theta0 * 0.7
    field = sc.MeanField(p, rule, engine=engine, chunk_size=4)   # chunks 4 + 4 + 1
    assert field.method == engine
    G = brute_grads(p, th)
    U = torch.stack([brute_clip(rule, G[i], th, p) for i in range(p.N)])
    m, s2 = field.update_moments(th)
    assert rel_err(m, U.mean(0)) < 1e-10
    assert rel_err(s2, U.T @ U / p.N) < 1e-10
    # the noise covariance goes through the same engine
    S = sc.noise_covariance(field, th, batch_size=2)
    ref = (U - U.mean(0)).T @ (U - U.mean(0)) / p.N / 2
    assert rel_err(S, ref) < 1e-10
    st = field.clip_stats(th)
    if isinstance(rule, sc.NoClip):
        assert torch.equal(st.ratios, torch.zeros(p.N, 1, dtype=p.dtype))
    elif isinstance(rule, sc.ValueClip):
        assert torch.allclose(st.ratios[:, 0], G.abs().amax(1) / rule.v, rtol=1e-12)
    elif isinstance(rule, sc.NormClip):
        assert torch.allclose(st.ratios[:, 0], G.norm(dim=1) / rule.lam, rtol=1e-12)
    else:   # relative rules: the factor is max(ratio, 1)
        assert torch.allclose(st.factors, st.ratios.clamp(min=1), rtol=1e-12)


def test_switch_margin_goes_through_the_engine():
    p = mlp_problem(n=9)
    th = p.theta0 * 0.7
    for rule in (sc.NormClip(0.3), sc.UnitwiseAGC(0.2)):
        G = brute_grads(p, th)
        fast, slow = sc.MeanField(p, rule), sc.MeanField(p, rule, engine="vmap")
        assert fast.method == "fast"
        a, b = sc.equilibria.switch_margin(fast, th), sc.equilibria.switch_margin(slow, th)
        assert a == pytest.approx(b, rel=1e-10)
        if isinstance(rule, sc.NormClip):
            assert a == pytest.approx(float((G.norm(dim=1) / 0.3 - 1).abs().min()), rel=1e-10)


def test_reason_says_which_engine_and_why():
    p = mlp_problem()
    assert sc.MeanField(p, sc.NormClip(0.3)).reason.startswith("fast: a stack of Linear")
    r = sc.MeanField(p, sc.NormClip(0.3), engine="vmap").reason
    assert r.startswith("vmap: requested (engine='vmap')")
    r = sc.MeanField(p, sc.ValueClip(0.1)).reason
    assert r.startswith("vmap: the fast engine does not apply (rule ValueClip clamps")
    q = sc.Problem(torch.nn.Sequential(torch.nn.Linear(4, 3, dtype=torch.float64),
                                       torch.nn.LayerNorm(3, dtype=torch.float64)),
                   p.X, p.y)
    r = sc.MeanField(q, sc.NoClip()).reason
    assert r.startswith("layers: the fast engine does not apply (LayerNorm at module 1 ")


def test_engine_keyword_and_its_old_name():
    p = mlp_problem()
    assert sc.MeanField(p, sc.NoClip(), method="vmap").method == "vmap"
    assert sc.MeanField(p, sc.NoClip(), engine="vmap", method="vmap").method == "vmap"
    with pytest.raises(ValueError, match="`method` is the old name of `engine`"):
        sc.MeanField(p, sc.NoClip(), engine="fast", method="vmap")
    with pytest.raises(ValueError,
                       match=r"`engine` must be one of \['auto', 'fast', 'layers', 'vmap'\]"):
        sc.MeanField(p, sc.NoClip(), engine="loop")
    with pytest.raises(ValueError, match="`engine`='fast' does not apply: rule ValueClip"):
        sc.MeanField(p, sc.ValueClip(0.1), engine="fast")


def test_model_is_analysed_once_per_problem(monkeypatch):
    from sa_clip import fastpath
    calls = []
    real = fastpath.analyse_stack
    monkeypatch.setattr(fastpath, "analyse_stack", lambda pr: calls.append(1) or real(pr))
    p = mlp_problem()
    for rule in (sc.NoClip(), sc.NormClip(0.3), sc.ValueClip(0.1), sc.UnitwiseAGC(0.1)):
        sc.MeanField(p, rule)
    sc.MeanField(p, sc.NoClip(), engine="vmap")
    assert len(calls) == 1


def test_a_registered_engine_is_used_by_name(monkeypatch):
    from sa_clip import meanfield
    from sa_clip.engine import VmapEngine

    class Counting(VmapEngine):
        """The vmap engine, counting the chunks it is given."""
        name = "counting"
        summary = "vmap, counted"
        chunks = 0

        def clipped_sum(self, theta, x, y, shared=True, *, safe=False):
            Counting.chunks += 1
            return super().clipped_sum(theta, x, y, shared, safe=safe)

    p = mlp_problem(n=9)
    sc.MeanField(p, sc.NoClip())                # analysed before the engine is registered
    monkeypatch.setitem(meanfield.ENGINES, "counting", Counting)
    f = sc.MeanField(p, sc.NormClip(0.3), engine="counting", chunk_size=4)
    assert f.method == "counting" and f.reason.startswith("counting: requested")
    assert rel_err(f(p.theta0), brute_H(p, sc.NormClip(0.3), p.theta0)) < 1e-10
    assert Counting.chunks == 3
    assert sc.MeanField(p, sc.NormClip(0.3)).method == "fast"       # auto: unchanged
