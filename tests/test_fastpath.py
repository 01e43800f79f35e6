"""The fast path (per-sample norms without per-sample gradients) against the vmap path."""

import warnings

import numpy as np
import pytest
import torch
from helpers import rel_err, smooth_rule
from torch import nn

import sa_clip as sc
from problems import ALL_RULES, brute_clip, brute_grads, brute_H, shared_problem
from sa_clip.fastpath import LinearStackEngine, unsupported_reason

D = torch.float64
RULES = [r for r in ALL_RULES if not isinstance(r, sc.ValueClip)]
LOSSES = ["mse", "cross_entropy", "callable"]


def logcosh(o, t):
    return torch.log(torch.cosh(o - t)).sum()


def stack_problem(loss="mse", bias=True, n=17, acts=(nn.Tanh, nn.Sigmoid), x_shape=(4,),
                  pre=(), seed=0):
    """A 4-5-6-3 stack (or ``x_shape`` flattened) with the given activations."""
    g = torch.Generator().manual_seed(seed)
    d0 = int(torch.tensor(x_shape).prod())
    mods = list(pre)
    sizes = [d0, 5, 6, 3]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, bias=bias, dtype=D)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=D) * 0.8)
            if bias:
                lin.bias.copy_(torch.randn(b, generator=g, dtype=D) * 0.3)
        mods.append(lin)
        if i < len(acts):
            mods.append(acts[i]())
    X = torch.randn(n, *x_shape, generator=g, dtype=D)
    if loss == "cross_entropy":
        y = torch.randint(0, 3, (n,), generator=g)
    else:
        y = torch.randn(n, 3, generator=g, dtype=D)
    return sc.Problem(nn.Sequential(*mods), X, y, logcosh if loss == "callable" else loss)


def thetas(p, k=3, scale=0.4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return p.theta0 + scale * torch.randn(k, p.P, generator=g, dtype=D)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_fast_matches_vmap(rule, loss, bias):
    p = stack_problem(loss, bias)
    fast, ref = sc.MeanField(p, rule), sc.MeanField(p, rule, method="vmap")
    assert fast.method == "fast" and ref.method == "vmap"
    th = thetas(p)
    H = ref(th)
    assert rel_err(fast(th), H) < 1e-10                       # batched
    assert rel_err(fast(th[1]), H[1]) < 1e-10                 # one theta
    chunked = sc.MeanField(p, rule, method="fast", chunk_size=5)   # 5 + 5 + 5 + 2
    assert rel_err(chunked(th), H) < 1e-10
    if rule.granularity != "none":   # a comparison where nothing is clipped proves little
        frac = ref.clip_stats(th).fraction
        assert float(frac.max()) > 0


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_fast_matches_brute_force_loop(rule):
    p = stack_problem("cross_entropy")
    th = thetas(p, 1)[0]
    assert rel_err(sc.MeanField(p, rule, method="fast")(th), brute_H(p, rule, th)) < 1e-10


@pytest.mark.parametrize("acts", [
    (nn.ReLU, nn.LeakyReLU), (nn.GELU, nn.SiLU), (nn.Softplus, nn.ELU),
    (lambda: nn.GELU(approximate="tanh"), lambda: nn.Softplus(beta=2.0, threshold=1.0)),
    (lambda: nn.LeakyReLU(0.2), lambda: nn.ELU(alpha=0.5)), (nn.Identity, nn.Tanh),
    (), (nn.Tanh, nn.Sigmoid, nn.Sigmoid),    # the last one acts on the output
], ids=["relu", "gelu-silu", "softplus-elu", "params", "leaky-elu", "identity", "linear",
        "output-act"])
def test_every_activation(acts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the (A1) warning for ReLU-like activations
        p = stack_problem("mse", acts=acts)
    rule = sc.LayerwiseAdaptiveClip(0.1)
    th = thetas(p)
    field = sc.MeanField(p, rule)
    assert field.method == "fast"
    assert rel_err(field(th), sc.MeanField(p, rule, method="vmap")(th)) < 1e-10


def test_two_activations_in_a_row_and_flatten_and_input_activation():
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(4, 5, dtype=D), nn.Tanh(),
                          nn.Softplus(), nn.Linear(5, 3, dtype=D))
    X = torch.randn(11, 2, 2, generator=g, dtype=D)
    q = sc.Problem(model, X, torch.randint(0, 3, (11,), generator=g), "cross_entropy")
    th = thetas(q)
    for rule in RULES:
        field = sc.MeanField(q, rule)
        assert field.method == "fast"
        assert rel_err(field(th), sc.MeanField(q, rule, method="vmap")(th)) < 1e-10


def test_single_linear_layer():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(9, 3, generator=g, dtype=D)
    p = sc.Problem(nn.Linear(3, 1, dtype=D), X, X.sum(1) + 1)
    for rule in RULES:
        f = sc.MeanField(p, rule)
        assert f.method == "fast"
        th = thetas(p)
        assert rel_err(f(th), sc.MeanField(p, rule, method="vmap")(th)) < 1e-10


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_clip_stats_match(rule):
    p = stack_problem("mse")
    th = thetas(p)
    a = sc.MeanField(p, rule, chunk_size=4).clip_stats(th)
    b = sc.MeanField(p, rule, method="vmap").clip_stats(th)
    assert a.factors.shape == b.factors.shape
    assert rel_err(a.factors, b.factors) < 1e-12
    assert torch.equal(a.fraction, b.fraction)
    one = sc.MeanField(p, rule).clip_stats(th[0])
    assert one.factors.shape == b.factors.shape[1:]


@pytest.mark.parametrize("clip_per", ["sample", "batch"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_directions_match(rule, loss, clip_per):
    p = stack_problem(loss)
    th = thetas(p, 4)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, p.N, (4, 6), generator=g)
    u = sc.MeanField(p, rule).directions(th, idx, clip_per)
    ref = sc.MeanField(p, rule, method="vmap").directions(th, idx, clip_per)
    assert u.shape == (4, p.P)
    assert rel_err(u, ref) < 1e-10


def test_directions_against_brute_force():
    p = stack_problem("cross_entropy")
    rule = sc.UnitwiseAGC(0.2)
    th = thetas(p, 2)
    idx = torch.tensor([[0, 3, 3, 7], [5, 1, 2, 16]])
    field = sc.MeanField(p, rule, method="fast")
    u, ub = field.directions(th, idx, "sample"), field.directions(th, idx, "batch")
    for k in range(2):
        G = brute_grads(p, th[k])[idx[k]]
        ref = torch.stack([brute_clip(rule, gi, th[k], p) for gi in G]).mean(0)
        assert rel_err(u[k], ref) < 1e-10
        assert rel_err(ub[k], brute_clip(rule, G.mean(0), th[k], p)) < 1e-10


@pytest.mark.parametrize("rule", [sc.NormClip(0.3), sc.UnitwiseAGC(0.2)], ids=lambda r: r.name)
def test_jacobian_through_fast_path(rule):
    p = stack_problem("cross_entropy", n=7)
    th = thetas(p, 2)
    J = sc.MeanField(p, rule).jacobian(th)
    Jref = sc.MeanField(p, rule, method="vmap").jacobian(th)
    assert J.shape == (2, p.P, p.P)
    assert rel_err(J, Jref) < 1e-10


def test_float32_close_to_float64():
    p64 = stack_problem("cross_entropy", n=50)
    p32 = sc.Problem(p64.model.float(), p64.X.float(), p64.y, "cross_entropy")
    rule = sc.NormClip(0.3)
    th = thetas(p64)
    h32 = sc.MeanField(p32, rule)(th.float())
    assert h32.dtype == torch.float32
    assert rel_err(h32.double(), sc.MeanField(p64, rule)(th)) < 1e-5


def test_auto_falls_back_and_fast_refuses():
    tied = shared_problem("mse")
    assert sc.MeanField(tied, sc.NormClip(0.3)).method == "vmap"   # no layer it knows
    with pytest.raises(ValueError, match="`method`='fast' does not apply: the model is a "
                                         "SharedTied"):
        sc.MeanField(tied, sc.NormClip(0.3), method="fast")
    p = stack_problem("mse")
    assert sc.MeanField(p, sc.ValueClip(0.05)).method == "vmap"
    with pytest.raises(ValueError, match="ValueClip clamps coordinates"):
        sc.MeanField(p, sc.ValueClip(0.05), method="fast")
    with pytest.raises(ValueError, match="the fast path does not apply"):
        LinearStackEngine(tied, sc.NoClip())


def test_unsupported_models_are_detected():
    X, y = torch.randn(6, 4, dtype=D), torch.randn(6, 4, dtype=D)
    lin = nn.Linear(4, 4, dtype=D)
    cases = {
        "used twice": nn.Sequential(lin, nn.Tanh(), lin),
        "Dropout": nn.Sequential(nn.Linear(4, 4, dtype=D), nn.Dropout(0.1)),
        "not Flatten": nn.Sequential(nn.Linear(4, 4, dtype=D), nn.Flatten()),
        "LayerNorm": nn.Sequential(nn.Linear(4, 4, dtype=D), nn.LayerNorm(4, dtype=D)),
    }
    for why, model in cases.items():
        p = sc.Problem(model, X, y)
        reason = unsupported_reason(p, sc.NoClip())
        assert reason is not None and why in reason, (why, reason)
        assert sc.MeanField(p, sc.NoClip()).method == "layers"
    # 3-d inputs without a Flatten: the Linear maps the last axis, the norm trick does not hold
    p3 = sc.Problem(nn.Linear(4, 2, dtype=D), torch.randn(5, 3, 4, dtype=D),
                    torch.randn(5, 3, 2, dtype=D))
    assert "needs (N, d)" in unsupported_reason(p3, sc.NoClip())
    h = sc.MeanField(p3, sc.NormClip(0.1))
    assert h.method == "layers"     # Gram matrices over the positions


def test_chunk_size_follows_layer_widths():
    p = stack_problem("mse", n=400)
    fast = sc.MeanField(p, sc.NoClip(), max_elements=10_000)
    slow = sc.MeanField(p, sc.NoClip(), method="vmap", max_elements=10_000)
    per = fast.engine.elements_per_sample
    assert fast._chunk(1) <= 10_000 // per and slow._chunk(1) <= 10_000 // p.P
    assert fast._chunk(1) > 10_000 // per // 2


@pytest.mark.parametrize("base", [sc.NormClip, sc.LayerwiseAdaptiveClip, sc.UnitwiseAGC])
def test_rule_with_its_own_factors(base):
    # a rule that overrides `factors` (a smooth clip) must be served by its own maths
    rule = smooth_rule(base)
    p = stack_problem("cross_entropy")
    th = thetas(p)
    fast = sc.MeanField(p, rule)
    assert fast.method == "fast"
    ref = sc.MeanField(p, rule, method="vmap")
    assert rel_err(fast(th), ref(th)) < 1e-10
    assert rel_err(fast.clip_stats(th).factors, ref.clip_stats(th).factors) < 1e-12
    idx = torch.randint(0, p.N, (3, 5), generator=torch.Generator().manual_seed(0))
    assert rel_err(fast.directions(th, idx), ref.directions(th, idx)) < 1e-10


def test_directions_differentiable_by_autograd():
    p = stack_problem("cross_entropy")
    th = thetas(p, 2).requires_grad_()
    idx = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for rule in RULES:
        u = sc.MeanField(p, rule).directions(th, idx)
        (g,) = torch.autograd.grad(u.sum(), th)
        uref = sc.MeanField(p, rule, method="vmap").directions(th, idx)
        (gref,) = torch.autograd.grad(uref.sum(), th)
        assert rel_err(g, gref) < 1e-10


@pytest.mark.parametrize("clip_per", ["sample", "batch"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_directions_stats_match(rule, clip_per):
    p = stack_problem("mse")
    th = thetas(p, 4)
    idx = torch.randint(0, p.N, (4, 6), generator=torch.Generator().manual_seed(2))
    u, frac = sc.MeanField(p, rule).directions_stats(th, idx, clip_per)
    uref, fref = sc.MeanField(p, rule, method="vmap").directions_stats(th, idx, clip_per)
    assert rel_err(u, uref) < 1e-10
    assert torch.equal(frac, fref)
    if clip_per == "sample" and rule.granularity != "none":
        assert 0 < float(fref.mean()) <= 1


def test_default_chunks_stay_near_the_cache_on_cpu():
    # 20,000 samples of a 64-128-128-10 stack: chunks of 5,000 (working set near
    # CPU_CHUNK_BYTES), balanced; max_elements still caps them; chunk_size overrides both
    from sa_clip import meanfield
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(),
                          nn.Linear(128, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        p = sc.Problem(model, torch.randn(20_000, 64, generator=g),
                       torch.randint(0, 10, (20_000,), generator=g), "cross_entropy")
        f = sc.MeanField(p, sc.NormClip(1.0))
    per = f.engine.elements_per_sample
    most = meanfield.CPU_CHUNK_BYTES // (4 * per)
    assert f._chunk(1) == 5_000 and 5_000 <= most < 20_000
    assert sc.MeanField(p, sc.NormClip(1.0), max_elements=1_000 * per)._chunk(1) == 1_000
    assert sc.MeanField(p, sc.NormClip(1.0), chunk_size=20_000)._chunk(1) == 20_000
    # 64 parameter vectors: the cache would ask for 91 samples, below MIN_CHUNK, so
    # max_elements alone decides (367 at most, balanced to 364)
    assert most // 64 < meanfield.MIN_CHUNK
    limit = f.max_elements // (64 * per)
    assert f._chunk(64) == -(-20_000 // -(-20_000 // limit))


@pytest.mark.parametrize("classes", [3, 16, 17, 40])
def test_cross_entropy_softmax_either_side_of_the_small_class_path(classes, monkeypatch):
    # up to SMALL_SOFTMAX classes the output gradient takes the softmax over a transposed
    # view; both paths against the float64 loop and against each other
    import sa_clip.fastpath as fastpath

    g = torch.Generator().manual_seed(classes)
    model = nn.Sequential(nn.Linear(4, 6, dtype=D), nn.Tanh(), nn.Linear(6, classes, dtype=D))
    X = torch.randn(13, 4, generator=g, dtype=D)
    y = torch.randint(0, classes, (13,), generator=g)
    p = sc.Problem(model, X, y, "cross_entropy")
    rule = sc.NormClip(0.3)
    th = thetas(p, 2, scale=0.6)
    fast = sc.MeanField(p, rule, method="fast")
    H = fast(th)
    assert rel_err(H[0], brute_H(p, rule, th[0])) < 1e-12
    assert rel_err(H[1], brute_H(p, rule, th[1])) < 1e-12
    other = 10 ** 6 if classes > fastpath.SMALL_SOFTMAX else 0
    monkeypatch.setattr(fastpath, "SMALL_SOFTMAX", other)
    assert rel_err(sc.MeanField(p, rule, method="fast")(th), H) < 1e-13


# ---------------------------------------------------------------- exactness defects (issue 23)
def _central_jacobian(field, theta, eps=1e-7):
    """Central differences of H, column by column (independent of any autodiff)."""
    cols = [(field(theta + eps * e) - field(theta - eps * e)) / (2 * eps)
            for e in torch.eye(theta.numel(), dtype=theta.dtype)]
    return torch.stack(cols, 1)


@pytest.mark.parametrize("rule", [sc.UnitwiseAGC(0.01), sc.UnitwiseAGC(0.5)])
def test_unitwise_jacobian_where_a_layer_input_is_exactly_zero(rule):
    """At theta = 0 a tanh MLP feeds exact zeros to its second layer: the block of
    second-layer weights against first-layer biases is delta_i (unclipped there), not 0."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 3, generator=g, dtype=D), torch.randn(20, generator=g, dtype=D)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(D)
    p = sc.Problem(model, X, y, "mse")
    fast = sc.MeanField(p, rule, method="fast")
    assert fast.method == "fast"
    th = torch.zeros(p.P, dtype=D)
    J, ref = fast.jacobian(th), _central_jacobian(fast, th)
    assert float(ref[16:20, 12:16].abs().max()) > 1e-3        # the block the defect zeroed
    torch.testing.assert_close(J, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(J, sc.MeanField(p, rule, method="vmap").jacobian(th),
                               rtol=1e-10, atol=1e-12)
    # and where only some samples give a zero input (dead ReLU units), away from theta = 0
    relu = sc.Problem(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).to(D), X, y)
    th2 = relu.theta0.clone()
    th2[12:16] = -5.0           # first-layer biases: every ReLU unit dead for every sample
    fr = sc.MeanField(relu, rule, method="fast")
    torch.testing.assert_close(fr.jacobian(th2), _central_jacobian(fr, th2), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("frozen", ["first", "middle", "bias"])
def test_frozen_linear_layers_are_served_by_the_fast_path(frozen):
    """A frozen Linear propagates but has no parameters: the fast path serves the stack and
    agrees with the vmap path (H and DH) and a plain loop over samples."""
    p0 = stack_problem("mse")
    model = p0.model
    lins = [m for m in model if isinstance(m, nn.Linear)]
    if frozen == "bias":
        lins[2].bias.requires_grad_(False)
    else:
        lins[0 if frozen == "first" else 1].requires_grad_(False)
    p = sc.Problem(model, p0.X, p0.y, "mse")
    assert unsupported_reason(p, sc.NormClip(0.3)) is None
    th = p.theta0 + 0.1 * torch.randn(p.P, generator=torch.Generator().manual_seed(1),
                                       dtype=D)
    for rule in (sc.NormClip(0.3), sc.LayerwiseAdaptiveClip(0.2), sc.UnitwiseAGC(0.05)):
        fast, slow = sc.MeanField(p, rule, method="fast"), sc.MeanField(p, rule, method="vmap")
        assert fast.method == "fast"
        torch.testing.assert_close(fast(th), slow(th), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fast(th), brute_H(p, rule, th), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fast.jacobian(th), slow.jacobian(th), rtol=1e-9, atol=1e-11)


def test_find_equilibria_at_an_origin_equilibrium_with_unitwise_clipping():
    """Symmetric data (x, y) and (-x, -y): theta = 0 is an equilibrium of a tanh MLP, with
    exact zeros into the second layer. Its eigenvalues (+-1.95 here, from the coupling of
    second-layer weights and first-layer biases) came back all zero; now they are those of
    the central-difference Jacobian of H."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=g, dtype=D), torch.randn(10, generator=g, dtype=D)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(D)
    p = sc.Problem(model, torch.cat([x, -x]), torch.cat([y, -y]), "mse")
    field = sc.MeanField(p, sc.UnitwiseAGC(0.01))
    th = torch.zeros(p.P, dtype=D)
    assert float(field(th).abs().max()) < 1e-15
    eq = sc.find_equilibria(field, starts=th[None])[0]
    assert float(eq.theta.abs().max()) < 1e-6
    ref = np.sort(np.linalg.eigvals(_central_jacobian(field, th).numpy()).real)
    got = np.sort(np.asarray(eq.eigenvalues).real)
    assert ref.max() > 1.0
    np.testing.assert_allclose(got, ref, atol=1e-5)
