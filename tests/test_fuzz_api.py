"""Property-based bad-input tests over the public API (hypothesis).

Every call either works, giving finite output (or the documented NaN/status for a blow-up or a
failed solve), or raises the documented ValueError/TypeError with a message; never anything else,
and never hangs (examples are small). No per-example deadline: hypothesis measures one after
the example has returned (it cannot stop a hang) and a loaded machine would trip it.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sa_clip as sc

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
D = torch.float64

# numbers a user may pass: ordinary, zero, negative, huge, tiny, NaN, inf, bool, strings, None
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0, 0.0, -1, 1, 1e-300, 5e-324, 1e300, 1e308, float("nan"), float("inf"),
                     -float("inf"), True, False, "1", None, 2 ** 70]),
    st.integers(-5, 10 ** 6))
ints = st.one_of(st.integers(-3, 7), st.sampled_from([0, 1, 2 ** 40, 2.0, 1.5, True, "3",
                                                        None, float("nan")]))


def call(f, *args, **kwargs):
    """``f(*args, **kwargs)``, or ``None`` if it raised the documented error: exactly a
    ``ValueError`` or ``TypeError``, or sa_clip's own subclass of one (not a subclass leaking from
    a library, such as numpy's
    ``AxisError`` or ``json.JSONDecodeError``) whose message names the argument in backticks.
    Anything else propagates and fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return f(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        ours = type(exc).__module__.startswith("sa_clip")     # e.g. NonFiniteThetaError
        assert type(exc) in (ValueError, TypeError) or ours, f"{type(exc).__name__} leaked: {exc}"
        assert _names_an_argument(str(exc)), f"message names no argument: {exc}"
        return None


def _names_an_argument(message):
    """True when the message names what was wrong: an argument in backticks (the package's
    convention), or one of the few documented messages about a derived quantity."""
    return "`" in message or "ODE time tau" in message or "step sizes must be" in message


def positive(x):
    """A finite real number > 0 (bools excluded): what the rules and tolerances accept."""
    return (not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
            and x > 0)


def real_array(x, ndims):
    """``np.asarray(x)`` when it is a finite real array with ``ndim`` in ``ndims``, else None:
    an oracle for what the API accepts as times or parameter vectors, written without sa_clip."""
    try:
        a = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x)
    except (ValueError, TypeError):
        return None
    if a.dtype.kind not in "biuf" or a.ndim not in ndims or not np.isfinite(
            a.astype(np.float64)).all():
        return None
    return a


def finite(t):
    return bool(torch.isfinite(torch.as_tensor(t)).all())


def overflows(t):
    """Entries beyond ~1e150: squared norms overflow float64, so NaN output is documented
    (docs/reliability.md)."""
    t = torch.as_tensor(t)
    return not finite(t) or bool((t.abs() > 1e150).any())


_P = {}


def loc(n=5):
    if n not in _P:
        _P[n] = sc.problems.location_problem(np.linspace(-2, 3, n).tolist(), theta0=1.0)
    return _P[n]


def logi():
    if "l" not in _P:
        _P["l"] = sc.problems.logistic2d(n=8)
    return _P["l"]


RULE_CLASSES = [sc.NormClip, sc.AdaptiveClip, sc.LayerwiseAdaptiveClip, sc.UnitwiseAGC,
                sc.ValueClip]


@SETTINGS
@given(cls=st.sampled_from(RULE_CLASSES), lam=numbers, eps=numbers)
def test_rules_accept_positive_numbers_only(cls, lam, eps):
    kw = {"lam": lam} if cls is not sc.ValueClip else {"v": lam}
    if cls.relative:
        kw["eps"] = eps
    rule = call(cls, **kw)
    ok = (not isinstance(lam, bool) and isinstance(lam, (int, float)) and lam > 0
          and math.isfinite(lam))
    if cls.relative:
        ok = ok and not isinstance(eps, bool) and isinstance(eps, (int, float)) and eps > 0 \
            and math.isfinite(eps)
    assert (rule is not None) == ok
    if rule is not None:  # a valid rule gives a finite field, whatever the scale of lam
        h = call(sc.MeanField(loc(), rule), torch.tensor([0.5], dtype=D))
        assert h is not None and finite(h)


@SETTINGS
@given(name=st.one_of(st.sampled_from(sorted(sc.RULES)), st.text(max_size=6)), lam=numbers,
       eps=numbers)
def test_make_rule(name, lam, eps):
    rule = call(sc.make_rule, name, lam=lam, eps=eps)
    cls = sc.RULES.get(name)
    ok = cls is not None and (cls is sc.NoClip or positive(lam)) and (
        not cls.relative or eps is None or positive(eps))
    assert (rule is not None) == ok, (name, lam, eps, rule)
    if rule is not None:
        assert type(rule) is cls
        if cls is sc.ValueClip:
            assert rule.v == float(lam)
        elif cls is not sc.NoClip:
            assert rule.lam == float(lam)
            if cls.relative and eps is not None:
                assert rule.eps == float(eps)


@SETTINGS
@given(spec=st.one_of(
    st.builds(lambda k, a: f"{k}:{','.join(a)}",
              st.sampled_from(["constant", "harmonic", "power", "cosine", ""]),
              st.lists(st.sampled_from(["0.5", "0", "-1", "nan", "inf", "1e308", "0.7", "x",
                                        "", "2", "1e-320"]), max_size=4)),
    st.text(max_size=10), numbers))
def test_make_schedule(spec, ):
    s = call(sc.make_schedule, spec)
    if s is not None:
        r = call(s.rates, 5)
        assert r is not None and finite(r) and bool((r > 0).all())
        assert finite(s.tau(5))


@SETTINGS
@given(data=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=4),
       theta0=numbers)
def test_location_problem_data(data, theta0):
    p = call(sc.problems.location_problem, data, theta0=theta0)
    if p is not None:
        assert p.N == len(data) >= 1 and all(math.isfinite(x) for x in data)
        h = call(sc.MeanField(p, sc.NormClip(1.0)), p.theta0)
        assert h is None or finite(h) or overflows(p.theta0)


@SETTINGS
@given(shape=st.lists(st.integers(0, 3), max_size=3),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.int64, torch.bool,
                              torch.complex64]),
       fill=st.sampled_from([0.5, 0.0, float("nan"), float("inf"), 1e300]),
       method=st.sampled_from(["auto", "vmap", "loop", "bad"]))  # loop: not a method
def test_meanfield_theta(shape, dtype, fill, method):
    p = logi()
    f = call(sc.MeanField, p, sc.NormClip(0.5), method=method)
    if f is None:
        assert method in ("bad", "loop")
        return
    theta = torch.full(shape, fill, dtype=torch.float64)
    if dtype not in (torch.float64, torch.float32):
        theta = theta.nan_to_num(0.0).to(dtype) if dtype != torch.complex64 else \
            theta.to(dtype)
    else:
        theta = theta.to(dtype)
    # accepted: shape (2,) or (K, 2) with K >= 1, real, finite once in the problem's float64
    ok = (len(shape) in (1, 2) and shape[-1] == p.P and (len(shape) == 1 or shape[0] >= 1)
          and not theta.is_complex() and bool(torch.isfinite(theta.to(D)).all()))
    h = call(f, theta)
    assert (h is not None) == ok, (shape, dtype, fill, h)
    if h is not None:
        assert h.shape == theta.shape
        assert finite(h) or overflows(theta)
    jac = call(f.jacobian, theta)
    assert (jac is not None) == ok
    if jac is not None:
        assert jac.shape == (*theta.shape, p.P)
    stats = call(f.clip_stats, theta)
    assert (stats is not None) == ok
    if stats is not None:
        assert stats.factors.shape[:-1] == (*theta.shape[:-1], p.N)   # (..., N, groups)


@SETTINGS
@given(steps=ints, chains=ints, batch_size=ints, record_every=ints,
       sampling=st.sampled_from(["iid", "epoch", "x"]),
       clip_per=st.sampled_from(["sample", "batch", "y"]),
       lam=st.sampled_from([1e-300, 1e-8, 0.5, 1e8, 1e300]),
       n=st.sampled_from([1, 2, 5]))
def test_simulate_sgd_sizes(steps, chains, batch_size, record_every, sampling, clip_per, lam, n):
    run = call(sc.simulate_sgd, loc(n), sc.NormClip(lam), "harmonic:0.5", steps=steps,
               chains=chains, batch_size=batch_size, record_every=record_every,
               sampling=sampling, clip_per=clip_per, seed=0)
    if run is not None:
        assert run.theta.shape[:2] == (chains, run.steps.numel())
        assert finite(run.theta) and not bool(run.blown_up.any())
        assert run.steps[-1] == steps and run.theta.dtype == D


@SETTINGS
@given(theta0=st.one_of(numbers, st.lists(numbers, max_size=3),
                        st.sampled_from([[[0.1], [0.2]], [[0.1, 0.2]], np.zeros((2, 1)),
                                         torch.zeros(2, 1, dtype=torch.int64), "ab", object()])),
       seed=st.one_of(numbers, st.just(torch.Generator().manual_seed(1))),
       project_radius=numbers, blowup_radius=numbers,
       schedule=st.sampled_from(["harmonic:0.5", "constant:1e300", "power:0.5,0.7",
                                 lambda n: 0.1, lambda n: -1.0, lambda n: float("nan"), 3.0]))
def test_simulate_sgd_values(theta0, seed, project_radius, blowup_radius, schedule):
    run = call(sc.simulate_sgd, loc(4), sc.NormClip(1.0), schedule, steps=3, chains=2,
               theta0=theta0, seed=seed, project_radius=project_radius,
               blowup_radius=blowup_radius)
    if run is not None:
        alive = ~run.blown_up
        assert finite(run.theta[alive])
        assert torch.isnan(run.theta[run.blown_up, -1]).all()


@SETTINGS
@given(indices=st.one_of(
    st.lists(st.lists(st.integers(-2, 6), min_size=0, max_size=3), max_size=4),
    st.sampled_from([np.zeros((3, 1)), np.zeros((3, 1), dtype=bool), np.zeros((2, 3, 1)),
                     np.full((3, 1), 1e20), torch.zeros(3, 1, dtype=torch.int8), "idx"])))
def test_simulate_sgd_indices(indices, ):
    run = call(sc.simulate_sgd, loc(4), sc.NormClip(1.0), "harmonic:0.5", steps=3, chains=2,
               batch_size=1, indices=indices)
    if run is not None:
        assert finite(run.theta)


@SETTINGS
@given(t=st.one_of(st.lists(numbers, max_size=4),
                   st.sampled_from([[], [0.0], [[0.0, 1.0]], [0.0, 0.0], [0.0, 1.0, 0.5],
                                    [1.0, 0.0], np.arange(3), torch.tensor([0, 2]), "t"])),
       theta0=st.one_of(numbers, st.sampled_from([[0.5], [[0.5], [1.0]], [], [[[1.0]]]])),
       method=st.sampled_from(["dopri5", "rk4", "euler", "nope"]),
       rtol=st.sampled_from([1e-7, 0.0, -1.0, float("nan"), 1e-300, 1.0]))
def test_solve_ode(t, theta0, method, rtol):
    f = sc.MeanField(loc(4), sc.NormClip(1.0))
    sol = call(sc.solve_ode, f, theta0, t, method=method, rtol=rtol, max_nfev=20000)
    times, start = real_array(t, (1,)), real_array(theta0, (1, 2))
    ok = (method != "nope" and positive(rtol) and times is not None and times.size >= 1
          and (times.size == 1 or bool((np.diff(times) > 0).all() or (np.diff(times) < 0).all()))
          and start is not None and start.shape[-1] == 1 and start.size >= 1)
    assert (sol is not None) == ok, (t, theta0, method, rtol, sol)
    if sol is not None:
        assert sol.status in (0, -1) and sol.message
        assert torch.equal(sol.t, torch.as_tensor(times, dtype=D))
        assert sol.theta.shape == (times.size, *start.shape)
        assert torch.equal(sol.theta[0], torch.as_tensor(start, dtype=D))   # starts at theta0
        if sol.status == 0:
            assert finite(sol.theta) and sol.message == "success"
        else:
            assert not finite(sol.theta)     # a failure is marked by NaN where not reached


@SETTINGS
@given(theta=st.sampled_from([[0.5], [[0.5], [1.0]], [float("nan")], [], [[1.0, 2.0]], "x"]),
       batch_size=ints, samples=st.sampled_from([-1, 0, 1, 2, 7, 100, 2.5, None]),
       seed=numbers, replace=st.booleans(),
       max_elements=st.sampled_from([1, 10, 2 ** 22, 0, -1]))
def test_batch_mean_field(theta, batch_size, samples, seed, replace, max_elements):
    out = call(sc.batch_mean_field, loc(4), sc.NormClip(1.0), theta, batch_size,
               samples=samples, seed=seed, replace=replace, max_elements=max_elements)
    if out is not None:
        mean, se = out
        assert mean.shape == se.shape
        assert finite(mean) or not finite(torch.tensor(theta))


_RUN = {}


def run4():
    if not _RUN:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _RUN["r"] = sc.simulate_sgd(loc(4), sc.NormClip(1.0), "harmonic:0.5", steps=6,
                                        chains=2, seed=0)
    return _RUN["r"]


@SETTINGS
@given(horizon=numbers, starts=st.one_of(st.none(), st.lists(numbers, max_size=3)),
       n_grid=ints)
def test_tracking_distance(horizon, starts, n_grid):
    run = run4()
    res = call(sc.tracking_distance, run, sc.MeanField(loc(4), sc.NormClip(1.0)),
               horizon=horizon, starts=starts, n_grid=n_grid)
    if res is not None:
        assert res.status == 0 and finite(res.distance)


@SETTINGS
@given(tau=st.one_of(numbers, st.lists(numbers, max_size=3)))
def test_trajectory_interpolate(tau):
    out = call(run4().interpolate, tau)
    if out is not None:
        assert finite(out)


@SETTINGS
@given(n_starts=ints, scale=numbers, seed=numbers, tol=numbers,
       starts=st.sampled_from([None, [[0.5]], [[float("nan")]], [0.5], [[0.5, 1.0]], []]))
def test_find_equilibria(n_starts, scale, seed, tol, starts):
    f = sc.MeanField(loc(4), sc.NormClip(1.0))
    if starts is not None:
        starts = torch.tensor(starts, dtype=D)
    eqs = call(sc.find_equilibria, f, starts, n_starts=n_starts, scale=scale, seed=seed,
               tol=tol, max_iter=50)
    if eqs is not None:
        for e in eqs:
            assert finite(e.theta) and e.residual >= 0


def test_fuzz_suite_is_not_vacuous():
    # the strategies reach both outcomes: a good call works, a bad one raises
    assert call(sc.simulate_sgd, loc(4), sc.NormClip(1.0), "harmonic:0.5", steps=1) is not None
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        sc.simulate_sgd(loc(4), sc.NormClip(1.0), "harmonic:0.5", steps=0)


# ---------------------------------------------------------------- regressions found by the fuzz
def test_regression_schedule_with_infinite_first_step_is_refused():
    with pytest.raises(ValueError, match=r"step sizes must be finite and > 0.*a\(0\) = inf"):
        sc.make_schedule("harmonic:0.5,1e-320")
    with pytest.raises(ValueError, match=r"a\(0\) = inf"):
        sc.PowerLaw(1.0, 2.0, 1e-200)


def test_regression_overflowing_ode_time_is_refused():
    with pytest.raises(ValueError, match="ODE time tau = sum of a\\(n\\) overflows float64"):
        sc.make_schedule("constant:1e308").tau(5)
    with pytest.raises(ValueError, match="overflows float64"):
        sc.simulate_sgd(loc(3), sc.NormClip(1.0), "constant:1e308", steps=3)


@pytest.mark.parametrize("kw", [dict(chains=2 ** 40), dict(batch_size=2 ** 40),
                                dict(steps=2 ** 40, record_every=1)])
def test_regression_impossible_sizes_raise_valueerror_not_allocator_error(kw):
    with pytest.raises(ValueError, match=r"need about .* GiB, more than the .* GiB of memory"):
        sc.simulate_sgd(loc(3), sc.NormClip(1.0), "harmonic:0.5", **{"steps": 2, **kw})


def test_regression_find_equilibria_validates_seed_scale_and_starts():
    f = sc.MeanField(loc(4), sc.NormClip(1.0))
    with pytest.raises(TypeError, match="`seed` must be an integer >= 0, got 0.0"):
        sc.find_equilibria(f, seed=0.0)
    with pytest.raises(ValueError, match="`scale` must be a finite number >= 0, got nan"):
        sc.find_equilibria(f, scale=float("nan"))
    with pytest.raises(ValueError, match="`starts` must be finite"):
        sc.find_equilibria(f, torch.tensor([[float("nan")]], dtype=D))
    with pytest.raises(TypeError, match="`field` must be a sa_clip.MeanField"):
        sc.find_equilibria(lambda t: t)
    assert sc.find_equilibria(f, seed=3)[0].kind == "stable"
