"""A failing ODE solve keeps what it computed (status -1 and a message), and never hangs."""

import math
import time

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

    t0 = time.perf_counter()
    sol = sc.solve_ode(sign, torch.tensor([1.0], dtype=D), [0.0, 0.5, 1.0, 2.0], max_nfev=3000)
    assert time.perf_counter() - t0 < 20
    assert sol.status == -1 and "more than max_nfev = 3000 evaluations" in sol.message
    assert sol.theta[1, 0].item() == pytest.approx(0.5, abs=1e-7)
    assert sol.nfev <= 2 * 3000 + 2


def test_a_blown_up_field_at_a_kink_free_problem_still_succeeds():
    p = sc.problems.location_problem([0.0, 1.0, 5.0], theta0=4.0)
    sol = sc.solve_ode(sc.MeanField(p, sc.NormClip(1.0)), p.theta0, [0.0, 1.0, 5.0])
    assert sol.status == 0 and sol.message == "success" and torch.isfinite(sol.theta).all()


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_max_nfev_validation(bad, err):
    with pytest.raises(err, match="`max_nfev` must be an integer >= 1"):
        sc.solve_ode(lambda th: th, torch.ones(1), [0.0, 1.0], max_nfev=bad)
