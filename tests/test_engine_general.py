"""The general (vmap) engine, asked for by name, on models the fast path does not serve: a CNN
with GroupNorm and a model with a tied weight, every rule, against float64 per-sample loops
(tests/problems.py); the layer engine that "auto" picks for them is tested in test_layers.py.

The engine forms norms, factors and clipped sums block by block and differentiates one
parameter vector without an outer vmap; these tests pin each of those paths (K = 1 and K > 1,
shared data and SGD minibatches, a rule with its own factors, a rule with its own clip, the
differentiable path at a zero gradient block) to the hand-written references.
"""

import warnings

import pytest
import torch
from helpers import rel_err, smooth_rule
from torch import nn

import sa_clip as sc
from problems import ALL_RULES, brute_clip, brute_grads, brute_H, shared_problem
from sa_clip.engine import VmapEngine

D = torch.float64


def cnn_problem(loss="cross_entropy", n=9, seed=0):
    """Conv2d 1->3, GroupNorm, Tanh, Conv2d 3->4 stride 2, Tanh, Flatten, Linear -> 3 on
    1x6x6 images (the benchmark's CNN, small)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.GroupNorm(1, 3), nn.Tanh(),
                          nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(36, 3)).to(D)
    with torch.no_grad():
        for q in model.parameters():
            q.copy_(torch.randn(q.shape, generator=g, dtype=D) * 0.6)
    X = torch.randn(n, 1, 6, 6, generator=g, dtype=D)
    y = torch.randint(0, 3, (n,), generator=g) if loss == "cross_entropy" else \
        torch.randn(n, 3, generator=g, dtype=D)
    return sc.Problem(model, X, y, loss)


def thetas(p, k=3, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return p.theta0 + scale * torch.randn(k, p.P, generator=g, dtype=D)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.name)
def test_cnn_matches_brute_force(rule, loss):
    p = cnn_problem(loss)
    field = sc.MeanField(p, rule, engine="vmap", chunk_size=4)          # chunks 4 + 4 + 1
    assert field.method == "vmap"
    th = thetas(p)
    H = field(th)                                         # K = 3: vmap over theta
    for k in range(3):
        ref = brute_H(p, rule, th[k])
        assert rel_err(H[k], ref) < 1e-10
        assert rel_err(field(th[k]), ref) < 1e-10         # K = 1: no outer vmap
    if rule.granularity != "none":
        assert float(field.clip_stats(th[0]).fraction) > 0


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.name)
def test_directions_and_factors_match_brute_force(rule):
    p = cnn_problem()
    field = sc.MeanField(p, rule, engine="vmap")
    th = thetas(p, 2)
    idx = torch.tensor([[0, 3, 3, 7], [5, 1, 2, 8]])
    for k_rows in (slice(0, 2), slice(1, 2)):             # K = 2 and K = 1 minibatches
        t, ix = th[k_rows], idx[k_rows]
        u, frac = field.directions_stats(t, ix)
        ub = field.directions(t, ix, "batch")
        for k in range(t.shape[0]):
            G = brute_grads(p, t[k])[ix[k]]
            U = torch.stack([brute_clip(rule, G[i], t[k], p) for i in range(len(G))])
            assert rel_err(u[k], U.mean(0)) < 1e-10
            assert rel_err(ub[k], brute_clip(rule, G.mean(0), t[k], p)) < 1e-10
            clipped = (U - G).abs().amax(1) > 1e-12 * G.abs().amax()
            assert float(frac[k]) == pytest.approx(float(clipped.double().mean()))


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.name)
def test_norms_moments_and_stats(rule):
    p = cnn_problem("mse")
    th = p.theta0 * 0.8
    field = sc.MeanField(p, rule, engine="vmap", chunk_size=5)
    G = brute_grads(p, th)
    U = torch.stack([brute_clip(rule, G[i], th, p) for i in range(p.N)])
    m, s2 = field.update_moments(th)
    assert rel_err(m, U.mean(0)) < 1e-10 and rel_err(s2, U.T @ U / p.N) < 1e-10
    st = field.clip_stats(th)
    if isinstance(rule, sc.NormClip):
        assert torch.allclose(st.ratios[:, 0], G.norm(dim=1) / rule.lam, rtol=1e-12)
    elif isinstance(rule, sc.ValueClip):
        assert torch.allclose(st.ratios[:, 0], G.abs().amax(1) / rule.v, rtol=1e-12)
    elif isinstance(rule, sc.LayerwiseAdaptiveClip):
        norms = torch.stack([G[:, b.slice].norm(dim=1) for b in p.blocks], 1)
        tau = torch.stack([rule.lam * th[b.slice].norm().clamp(min=rule.eps)
                           for b in p.blocks])
        assert torch.allclose(st.ratios, norms / tau, rtol=1e-12)
    elif isinstance(rule, sc.UnitwiseAGC):
        assert st.factors.shape == (p.N, p.layout.groups("unit")[1])
        assert torch.allclose(st.factors, st.ratios.clamp(min=1), rtol=1e-12)


def test_tied_weights_model_every_rule_batched():
    p = shared_problem("cross_entropy")                  # a tied weight, 0-d and 3-d tensors
    th = thetas(p, 2, 0.2)
    for rule in ALL_RULES:
        H = sc.MeanField(p, rule, engine="vmap", chunk_size=6)(th)
        for k in range(2):
            assert rel_err(H[k], brute_H(p, rule, th[k])) < 1e-10, rule


@pytest.mark.parametrize("base", [sc.NormClip, sc.LayerwiseAdaptiveClip, sc.UnitwiseAGC])
def test_rule_with_its_own_factors(base):
    rule = smooth_rule(base)
    p = cnn_problem()
    th = p.theta0
    G = brute_grads(p, th)
    gran = rule.granularity
    index, n_groups = p.layout.groups(gran)
    tn = sc.layout.group_norms(th, p.layout, gran) if rule.relative else None
    U = G / rule.factors(sc.layout.group_norms(G, p.layout, gran), tn)[:, index]
    assert rel_err(sc.MeanField(p, rule, engine="vmap")(th), U.mean(0)) < 1e-10
    assert VmapEngine(p, rule)._mode == "scale"


def test_rule_with_its_own_clip_is_served_whole():
    class Sign(sc.NormClip):                              # not a scaling per group
        def clip(self, g, theta, layout):
            return torch.sign(g) * self.lam

    rule = Sign(0.1)
    p = cnn_problem()
    assert VmapEngine(p, rule)._mode == "generic"
    th = thetas(p, 2)
    H = sc.MeanField(p, rule, engine="vmap", chunk_size=4)(th)
    for k in range(2):
        assert rel_err(H[k], 0.1 * torch.sign(brute_grads(p, th[k])).mean(0)) < 1e-12


class WithUnused(nn.Module):
    """A parameter the loss never touches: its per-sample gradient block is exactly zero."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2, dtype=D)
        self.unused = nn.Parameter(torch.ones(2, dtype=D))

    def forward(self, x):
        return torch.tanh(self.lin(x))


@pytest.mark.parametrize("rule", [sc.NormClip(0.3), sc.LayerwiseAdaptiveClip(0.1),
                                  sc.UnitwiseAGC(0.2)], ids=lambda r: r.name)
def test_jacobian_through_zero_gradients_is_finite_and_right(rule):
    g = torch.Generator().manual_seed(4)
    model = WithUnused()
    X = torch.randn(7, 3, generator=g, dtype=D)
    y = torch.randn(7, 2, generator=g, dtype=D)
    X[0] = 0.0                                  # sample 0 fitted exactly: its whole gradient
    y[0] = torch.tanh(model.lin.bias.detach())  # is zero (the global norm's kink at 0)
    p = sc.Problem(model, X, y)
    field = sc.MeanField(p, rule, engine="vmap")
    assert field.method == "vmap"
    th = p.theta0
    J = field.jacobian(th)
    assert bool(torch.isfinite(J).all())
    h = 1e-6
    fd = torch.stack([(field(th + h * e) - field(th - h * e)) / (2 * h)
                      for e in torch.eye(p.P, dtype=D)], 1)
    assert rel_err(J, fd) < 1e-6
    # and autograd through H itself
    t = th.clone().requires_grad_(True)
    field._h(t[None])[0].sum().backward()
    assert bool(torch.isfinite(t.grad).all())
    assert rel_err(t.grad, J.sum(0)) < 1e-10


def test_cnn_jacobian_matches_finite_differences():
    p = cnn_problem("mse", n=5)
    field = sc.MeanField(p, sc.NormClip(0.3), chunk_size=3)
    th = p.theta0
    J = field.jacobian(th)
    h = 1e-6
    cols = [0, 7, 30, p.P - 1]
    for j in cols:
        e = torch.zeros(p.P, dtype=D)
        e[j] = h
        fd = (field(th + e) - field(th - e)) / (2 * h)
        assert rel_err(J[:, j], fd) < 1e-6


def test_float32_cnn_close_to_float64():
    p = cnn_problem()
    p32 = p.to(dtype=torch.float32)
    for rule in (sc.NormClip(0.3), sc.UnitwiseAGC(0.2)):
        h64 = sc.MeanField(p, rule, engine="vmap")(p.theta0)
        h32 = sc.MeanField(p32, rule)(p32.theta0)
        assert h32.dtype == torch.float32
        assert rel_err(h32.double(), h64) < 1e-5


def test_rows_looped_or_batched_give_the_same_numbers(monkeypatch):
    # several thetas on shared data: looped one at a time when a row's work is large (the
    # CNN at full size), batched by vmap otherwise; both against the per-sample loop
    from sa_clip import engine
    p = cnn_problem(n=7)
    th = thetas(p, 3)
    idx = torch.tensor([[0, 1], [2, 3], [4, 6]])
    out = {}
    for limit in (0, 10 ** 12):                            # always loop / never loop
        monkeypatch.setattr(engine, "LOOP_ELEMENTS", limit)
        for rule in (sc.NormClip(0.3), sc.UnitwiseAGC(0.2), sc.ValueClip(0.05)):
            f = sc.MeanField(p, rule, engine="vmap", chunk_size=3)
            assert f.engine.loops_rows(3, 3) == (limit == 0)
            m, s2 = f.update_moments(th)
            out[limit, rule.name] = (f(th), f.clip_stats(th).factors, m, s2,
                                     f.directions(th, idx))
            for k in range(3):
                assert rel_err(out[limit, rule.name][0][k], brute_H(p, rule, th[k])) < 1e-10
    for rule in ("norm", "unitwise", "value"):
        for a, b in zip(out[0, rule], out[10 ** 12, rule]):
            assert rel_err(a, b) < 1e-12


def test_looping_engine_sizes_chunks_for_one_row():
    # the benchmark's CNN (P = 25,322): 12 thetas are looped over, so a chunk holds one row
    # and is as large as for one theta; a 2-parameter toy batches its thetas (K in the budget)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Tanh(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(2048, 10))
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        p = sc.Problem(model, torch.randn(4096, 1, 16, 16, generator=g),
                       torch.randint(0, 10, (4096,), generator=g), "cross_entropy")
    f = sc.MeanField(p, sc.NormClip(1.0), engine="vmap")
    assert f.method == "vmap" and f._chunk(1) == 586 and f._chunk(12) == 586
    assert f.engine.loops_rows(12, 586)
    toy = sc.problems.tanh_regression()
    ft = sc.MeanField(toy, sc.NormClip(1.0), engine="vmap", max_elements=64 * toy.P * 8)
    assert not ft.engine.loops_rows(64, ft._chunk(1))
    assert ft._chunk(64) == -(-toy.N // -(-toy.N // 8))
