import math
import warnings

import pytest
import torch

import sa_clip as sc
from sa_clip.schedules import _WARNED, warn_if_not_a2


def test_values_and_tau_are_cumulative_sums():
    for s, f in [(sc.Constant(0.1), lambda n: 0.1),
                 (sc.Harmonic(0.5, 3), lambda n: 0.5 / (n + 3)),
                 (sc.PowerLaw(0.5, 0.7), lambda n: 0.5 / (n + 1) ** 0.7),
                 (sc.FunctionSchedule(lambda n: 1 / math.sqrt(n + 4)),
                  lambda n: 1 / (n + 4) ** .5)]:
        ref = [f(n) for n in range(7)]
        assert s.rates(7).tolist() == pytest.approx(ref, rel=1e-15)
        assert s.rates(7).dtype == torch.float64
        tau = s.tau(7)
        assert tau.shape == (8,) and float(tau[0]) == 0.0
        assert tau.tolist() == pytest.approx([sum(ref[:k]) for k in range(8)], rel=1e-14)
        assert s(3) == pytest.approx(f(3)) and isinstance(s(3), float)
        assert s(torch.tensor([0, 2])).tolist() == pytest.approx([f(0), f(2)])


def test_satisfies_a2():
    assert not sc.Constant(1.0).satisfies_a2
    assert sc.Harmonic(1.0).satisfies_a2
    assert sc.PowerLaw(1.0, 0.75).satisfies_a2 and sc.PowerLaw(1.0, 1.0).satisfies_a2
    assert not sc.PowerLaw(1.0, 0.5).satisfies_a2 and not sc.PowerLaw(1.0, 1.5).satisfies_a2
    assert not sc.FunctionSchedule(lambda n: 1.0).satisfies_a2
    assert sc.FunctionSchedule(lambda n: 1.0 / (n + 1), a2=True).satisfies_a2


def test_warns_once_per_schedule():
    s = sc.PowerLaw(0.123, 0.3)
    _WARNED.discard(repr(s.to_dict()))
    with pytest.warns(UserWarning, match=r"does not satisfy \(A2\)"):
        warn_if_not_a2(s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_not_a2(s)                    # second time: silent
        warn_if_not_a2(sc.Harmonic(1.0))     # (A2) holds: silent


def test_make_schedule_and_round_trip():
    assert sc.make_schedule("constant:0.1") == sc.Constant(0.1)
    assert sc.make_schedule("harmonic:0.5") == sc.Harmonic(0.5)
    assert sc.make_schedule("harmonic:0.5,10") == sc.Harmonic(0.5, 10)
    assert sc.make_schedule("power:0.5,0.7") == sc.PowerLaw(0.5, 0.7)
    assert sc.make_schedule("power:0.5,0.7,3") == sc.PowerLaw(0.5, 0.7, 3)
    s = sc.PowerLaw(0.5, 0.7, 2)
    assert sc.make_schedule(s) is s
    assert isinstance(sc.make_schedule(lambda n: 0.1), sc.FunctionSchedule)
    for s in [sc.Constant(0.2), sc.Harmonic(0.5, 2), sc.PowerLaw(1.0, 0.6)]:
        assert sc.schedule_from_dict(s.to_dict()) == s
    d = sc.FunctionSchedule(lambda n: 0.1).to_dict()
    assert d["schedule"] == "function"
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        sc.schedule_from_dict(d)


def test_schedule_errors():
    with pytest.raises(ValueError, match="`a0`"):
        sc.Constant(0.0)
    with pytest.raises(ValueError, match="`a0`"):
        sc.Harmonic(-1.0)
    with pytest.raises(ValueError, match="`alpha`"):
        sc.PowerLaw(1.0, 0.0)
    with pytest.raises(ValueError, match="`n0`"):
        sc.Harmonic(1.0, 0)
    with pytest.raises(ValueError, match="`n0`"):
        sc.PowerLaw(1.0, 0.7, -2)
    with pytest.raises(TypeError, match="`fn`"):
        sc.FunctionSchedule(3.0)
    with pytest.raises(ValueError, match=r"a\(2\) = -1"):
        sc.FunctionSchedule(lambda n: 1.0 if n < 2 else -1.0).rates(5)
    with pytest.raises(ValueError, match=r"a\(0\) = inf"):
        sc.FunctionSchedule(lambda n: 1.0 / n).rates(3)
    with pytest.raises(ValueError, match="`n`"):
        sc.Constant(1.0)(-1)
    with pytest.raises(ValueError, match="`steps`"):
        sc.Constant(1.0).rates(-1)
    with pytest.raises(ValueError, match="must start with one of"):
        sc.make_schedule("cosine:0.1")
    with pytest.raises(ValueError, match="must be numbers"):
        sc.make_schedule("constant:abc")
    with pytest.raises(ValueError, match=r"expected power:A0,ALPHA\[,N0\]"):
        sc.make_schedule("power:0.5")
    with pytest.raises(TypeError, match="`schedule`"):
        sc.make_schedule(3)
    with pytest.raises(ValueError, match="unknown schedule"):
        sc.schedule_from_dict({"schedule": "bogus"})


def test_callable_schedule_is_evaluated_in_float64():
    # issue 11 item 6: on an int64 tensor `0.3 / (n + 5)` is float32 (off by ~4e-8 relative)
    s = sc.FunctionSchedule(lambda n: 0.3 / (n + 5))
    a = s.rates(1000)
    ref = torch.tensor([0.3 / (k + 5) for k in range(1000)], dtype=torch.float64)
    # float64 to the last bits (torch's scalar / tensor may round once more than Python)
    assert a.dtype == torch.float64 and float(((a - ref) / ref).abs().max()) < 1e-15
    assert float(((s.tau(1000)[1:] - torch.cumsum(ref, 0)) / torch.cumsum(ref, 0)).abs().max()) \
        < 1e-14
    # a callable that needs Python ints still works (the per-step fallback)
    steps = [0.2, 0.1, 0.05]
    assert sc.FunctionSchedule(lambda n: steps[n]).rates(3).tolist() == steps


def test_callable_schedule_of_the_wrong_shape_is_named():
    # the attack: "only one element tensors can be converted to Python scalars"
    sched = sc.make_schedule(lambda n: torch.tensor([0.1, 0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="a callable `schedule` must return one step size"):
        sched.rates(5)

    def own_error(n):
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):          # the user's own exception is kept
        sc.make_schedule(own_error).rates(3)
