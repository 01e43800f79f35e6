import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sa_clip as sc
from problems import mlp_problem

P = mlp_problem()           # a layout with several blocks and units
LAYOUT = P.layout

floats = st.floats(-1e3, 1e3, allow_nan=False, width=64)
vec = st.lists(floats, min_size=P.P, max_size=P.P).map(
    lambda v: torch.tensor(v, dtype=torch.float64))
lams = st.floats(1e-3, 1e3)
epss = st.floats(1e-6, 1.0)

SCALING = [
    lambda lam, eps: sc.NormClip(lam),
    lambda lam, eps: sc.AdaptiveClip(lam, eps),
    lambda lam, eps: sc.LayerwiseAdaptiveClip(lam, eps),
    lambda lam, eps: sc.UnitwiseAGC(lam, eps),
]


def group_ranges(rule):
    if rule.granularity == "global":
        return [(0, LAYOUT.size)]
    sizes = LAYOUT.group_sizes(rule.granularity)
    edges = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    return list(zip(edges[:-1], edges[1:]))


@settings(max_examples=60, deadline=None)
@given(g=vec, theta=vec, lam=lams, eps=epss, k=st.integers(0, 3))
def test_clipped_norms_within_bound_and_idempotent(g, theta, lam, eps, k):
    rule = SCALING[k](lam, eps)
    u = rule.clip(g, theta, LAYOUT)
    assert u.shape == g.shape and u.dtype == g.dtype
    for a, b in group_ranges(rule):
        tau = lam * max(float(theta[a:b].norm()), eps) if rule.relative else lam
        assert float(u[a:b].norm()) <= tau * (1 + 1e-12) + 1e-300
        # the direction is kept: u is a non-negative multiple of g on each group
        assert torch.allclose(u[a:b] * float(g[a:b].norm()), g[a:b] * float(u[a:b].norm()),
                              atol=1e-9 * max(1.0, float(g[a:b].norm()) ** 2))
    assert torch.equal(rule.clip(u, theta, LAYOUT), u) or torch.allclose(
        rule.clip(u, theta, LAYOUT), u, rtol=1e-14, atol=0)


@settings(max_examples=40, deadline=None)
@given(g=vec, theta=vec, k=st.integers(0, 3))
def test_huge_lam_changes_nothing(g, theta, k):
    rule = SCALING[k](1e300 if k == 0 else 1e290, 1.0)
    assert torch.equal(rule.clip(g, theta, LAYOUT), g)


@settings(max_examples=40, deadline=None)
@given(g=vec, v=st.floats(1e-3, 1e3))
def test_value_clip_bounds_coordinates(g, v):
    u = sc.ValueClip(v).clip(g, None, LAYOUT)
    assert float(u.abs().max()) <= v
    assert torch.equal(sc.ValueClip(v).clip(u, None, LAYOUT), u)


def test_batched_shapes_and_float32():
    g = torch.randn(4, 7, P.P, dtype=torch.float32)
    th = torch.randn(4, 1, P.P, dtype=torch.float32)
    for rule in [sc.NoClip(), sc.NormClip(0.1), sc.AdaptiveClip(0.1), sc.UnitwiseAGC(0.1),
                 sc.LayerwiseAdaptiveClip(0.1), sc.ValueClip(0.1)]:
        u = rule.clip(g, th, LAYOUT)
        assert u.shape == g.shape and u.dtype == torch.float32


def test_exact_max_semantics():
    # a gradient exactly on the bound is untouched, bit for bit (no +1e-6 anywhere)
    g = torch.tensor([3.0, 4.0], dtype=torch.float64)
    p = sc.problems.location_problem([0.0, 1.0])
    lay = sc.Layout((sc.Block("w", (2,), 0, 2),))
    assert torch.equal(sc.NormClip(5.0).clip(g, None, lay), g)
    assert torch.equal(sc.NormClip(2.5).clip(g, None, lay), g / 2)
    assert p.P == 1


def test_factors_closed_form():
    assert torch.equal(sc.NormClip(2.0).factors(torch.tensor([1.0, 4.0])), torch.tensor([1.0, 2.0]))
    f = sc.AdaptiveClip(0.5, eps=0.1).factors(torch.tensor([4.0, 4.0]), torch.tensor([2.0, 0.0]))
    assert torch.allclose(f, torch.tensor([4.0, 80.0]))


@pytest.mark.parametrize("cls", [sc.NormClip, sc.AdaptiveClip, sc.LayerwiseAdaptiveClip,
                                 sc.UnitwiseAGC])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_lam(cls, bad):
    with pytest.raises(ValueError, match=r"`lam` must be a number > 0"):
        cls(bad)


def test_bad_types_and_eps():
    with pytest.raises(TypeError, match="`lam` must be a positive real number"):
        sc.NormClip("1")
    for bad in (0.0, -1e-3, math.nan):
        with pytest.raises(ValueError, match="`eps` must be a number > 0"):
            sc.AdaptiveClip(1.0, eps=bad)
    with pytest.raises(ValueError, match="`v` must be"):
        sc.ValueClip(0)


def test_registry():
    assert sc.make_rule("norm", lam=2.0) == sc.NormClip(2.0)
    assert sc.make_rule("unitwise", lam=0.1, eps=1e-2) == sc.UnitwiseAGC(0.1, 1e-2)
    assert sc.make_rule("none") == sc.NoClip()
    r = sc.AdaptiveClip(0.3, 0.2)
    assert sc.clipping.rule_from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match=r"`rule` must be one of \['adaptive'"):
        sc.make_rule("clipz", lam=1.0)
    with pytest.raises(ValueError, match="`lam` is required"):
        sc.make_rule("norm")


def test_regression_tiny_threshold_gives_no_nan():
    # found by tests/test_fuzz_api.py: AdaptiveClip(5e-324) has threshold lam*eps = 0 (float64),
    # and clamp(0 / 0, min=1) made the factor of a zero gradient NaN
    rule = sc.AdaptiveClip(5e-324, eps=0.5)
    c = rule.factors(torch.tensor([0.0, 2.0], dtype=torch.float64),
                     torch.tensor([0.0, 0.0], dtype=torch.float64))
    assert c.tolist() == [1.0, float("inf")]
    p = sc.problems.location_problem([0.0, 0.5, 2.0], theta0=0.5)  # sample 0.5: zero gradient
    h = sc.MeanField(p, rule)(p.theta0)
    assert torch.equal(h, torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize("rule", [sc.NoClip(), sc.NormClip(0.1), sc.AdaptiveClip(0.1),
                                  sc.LayerwiseAdaptiveClip(0.1), sc.UnitwiseAGC(0.1),
                                  sc.ValueClip(0.1)], ids=lambda r: r.name)
def test_clip_and_factors_equals_clip_of_scaled(rule):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, P.P, generator=gen, dtype=torch.float64)
    th = torch.randn(5, P.P, generator=gen, dtype=torch.float64)
    u, c = rule.clip_and_factors(g, th, LAYOUT, 0.25)
    assert torch.allclose(u, rule.clip(0.25 * g, th, LAYOUT), rtol=1e-14, atol=0)
    assert torch.allclose(c, rule.group_factors(0.25 * g, th, LAYOUT), rtol=1e-14, atol=0)
