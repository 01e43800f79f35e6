"""A failing ODE solve keeps what it computed (status -1 and a message), and never hangs."""

import math

import pytest
import torch

import sa_clip as sc

D = torch.float64


def nan_below_half(th):
    """H = 1 (theta decreases at unit speed) where theta >= 0.5, NaN below: the exact solution
    is 1 - t until t = 0.5, then the field is not finite."""
    return torch.where(th < 0.5, torch.full_like(th, math.nan), torch.ones_like(th))


def test_step_size_underflow_keeps_the_values_before_the_failure():
    t = torch.linspace(0, 2, 9)                    # outputs every 0.25: 0.25 still reachable
    sol = sc.solve_ode(nan_below_half, torch.tensor([1.0], dtype=D), t)
    assert sol.status == -1 and not sol.success
    assert "underflow in dt" in sol.message and "between t = 0.5 and t = 0.75" in sol.message
    assert "first 3 of 9 output times" in sol.message
    assert torch.allclose(sol.theta[:3, 0], torch.tensor([1.0, 0.75, 0.5], dtype=D),
                          atol=1e-9, rtol=0)
    assert torch.isnan(sol.theta[3:]).all()


def test_batched_failure_keeps_all_starts_up_to_the_failing_interval():
    th0 = torch.tensor([[1.0], [3.0]], dtype=D)
    sol = sc.solve_ode(nan_below_half, th0, [0.0, 0.25, 0.45, 1.0])
    assert sol.status == -1
    assert torch.allclose(sol.theta[:3, :, 0], torch.tensor([[1.0, 3.0], [0.75, 2.75],
                                                             [0.55, 2.55]], dtype=D), atol=1e-9)
    assert torch.isnan(sol.theta[3]).all()


def test_non_finite_field_with_a_fixed_step_method():
    sol = sc.solve_ode(nan_below_half, torch.tensor([1.0], dtype=D), torch.linspace(0, 2, 5),
                       method="rk4", options={"step_size": 0.1})
    assert sol.status == -1
    assert "non-finite at t = 1 (output 2 of 5)" in sol.message
    assert torch.allclose(sol.theta[:2, 0], torch.tensor([1.0, 0.5], dtype=D), atol=1e-12)


def test_discontinuous_field_stops_at_max_nfev_instead_of_hanging():
    def sign(th):  # a jump at 0.3: dopri5 would take ever smaller steps there
        return torch.sign(th - 0.3)

    # no wall-clock limit (the suite runs on loaded machines): the evaluation count is the
    # bound, and a hang would never reach the asserts
    sol = sc.solve_ode(sign, torch.tensor([1.0], dtype=D), [0.0, 0.5, 1.0, 2.0], max_nfev=3000)
    assert sol.status == -1 and "more than max_nfev = 3000 evaluations" in sol.message
    assert sol.theta[1, 0].item() == pytest.approx(0.5, abs=1e-7)
    assert sol.nfev <= 3000 and sol.max_nfev == 3000     # one budget, the recovery included
    assert "evaluations of max_nfev = 3000" in sol.message


def test_one_budget_when_the_solver_is_slow_everywhere():
    # a fast rotation costs the same per unit time everywhere: with half the evaluations it
    # needs, the first attempt runs out part-way, and the outputs it had passed are recovered
    # from its accepted steps (a few evaluations each), all within the one budget
    rot = torch.tensor([[0.0, 30.0], [-30.0, 0.0]], dtype=D)

    def spin(th):
        return th @ rot

    t = torch.linspace(0, 2, 9, dtype=D)
    th0 = torch.tensor([1.0, 0.0], dtype=D)
    ref = sc.solve_ode(spin, th0, t, max_nfev=None)
    assert ref.success and ref.max_nfev is None
    budget = ref.nfev // 2
    sol = sc.solve_ode(spin, th0, t, max_nfev=budget)
    assert sol.status == -1 and sol.nfev <= budget and sol.max_nfev == budget
    kept = torch.isfinite(sol.theta).all(1)
    assert 2 < int(kept.sum()) < len(t) and not kept[int(kept.sum()):].any()
    assert torch.allclose(sol.theta[kept], ref.theta[kept], atol=1e-5)
    assert "recovering the outputs" in sol.message


def test_old_method_keyword_is_the_solver():
    f = lambda th: th  # noqa: E731
    a = sc.solve_ode(f, torch.ones(1, dtype=D), [0.0, 1.0], method="rk4")
    b = sc.solve_ode(f, torch.ones(1, dtype=D), [0.0, 1.0], solver="rk4")
    assert torch.equal(a.theta, b.theta)
    with pytest.raises(ValueError, match="`method` is the old name of `solver`"):
        sc.solve_ode(f, torch.ones(1, dtype=D), [0.0, 1.0], method="rk4", solver="euler")
    with pytest.raises(ValueError, match=r"`solver` must be one of \[.*'dopri5'.*\], got 'x'"):
        sc.solve_ode(f, torch.ones(1, dtype=D), [0.0, 1.0], solver="x")


def test_torchdiffeq_shim_matches_what_torchdiffeq_runs():
    from torchdiffeq import odeint

    from sa_clip import _torchdiffeq
    names = _torchdiffeq.solver_names()
    assert {"dopri5", "rk4", "euler", "bosh3"} <= set(names)
    assert _torchdiffeq.is_adaptive_rk("dopri5") and not _torchdiffeq.is_adaptive_rk("rk4")
    assert _torchdiffeq.is_fixed_grid("rk4") and not _torchdiffeq.is_fixed_grid("dopri5")
    # adaptive solvers honour step_t, and report accepted steps to the callback we use
    seen = []

    class F:
        def __call__(self, t, y):
            return -y

        def callback_accept_step(self, t0, y0, dt):
            seen.append(float(t0))

    odeint(F(), torch.ones(1, dtype=D), torch.tensor([0.0, 1.0], dtype=D), method="dopri5",
           options={"step_t": torch.tensor([0.5], dtype=D)})
    assert seen and seen[0] == 0.0 and 0.5 in seen


def test_meanfield_theta0_must_be_real_and_finite():
    p = sc.problems.location_problem([0.0, 1.0])
    f = sc.MeanField(p, sc.NormClip(1.0))
    with pytest.raises(ValueError, match="`theta0` must be real"):
        sc.solve_ode(f, torch.tensor([1 + 1j]), [0.0, 1.0])
    with pytest.raises(ValueError, match="`theta0` must be finite"):
        sc.solve_ode(f, torch.tensor([float("inf")], dtype=D), [0.0, 1.0])


def test_a_blown_up_field_at_a_kink_free_problem_still_succeeds():
    p = sc.problems.location_problem([0.0, 1.0, 5.0], theta0=4.0)
    sol = sc.solve_ode(sc.MeanField(p, sc.NormClip(1.0)), p.theta0, [0.0, 1.0, 5.0])
    assert sol.status == 0 and sol.message == "success" and torch.isfinite(sol.theta).all()


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_max_nfev_validation(bad, err):
    with pytest.raises(err, match="`max_nfev` must be an integer >= 1"):
        sc.solve_ode(lambda th: th, torch.ones(1), [0.0, 1.0], max_nfev=bad)
