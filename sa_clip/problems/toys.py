"""Two-parameter toys, whose phase portraits are the plane itself, and 1-D closed forms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._validate import check_float_dtype, check_nonneg_int, check_real, seeded_generator
from ..problem import Problem


class TanhToy(nn.Module):
    """``f(w, x) = w2 * tanh(w1 * x)`` with two 0-d parameters ``w1``, ``w2``."""

    def __init__(self, w1: float = 0.5, w2: float = -0.5, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(check_real("w1", w1), dtype=dtype))
        self.w2 = nn.Parameter(torch.tensor(check_real("w2", w2), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2 * torch.tanh(self.w1 * x.reshape(-1))


class Logistic2D(nn.Module):
    """Two-weight logistic regression without bias: logits ``[0, w . x]`` for classes 0 and 1,
    so cross-entropy is exactly the binary logistic loss."""

    def __init__(self, w: Sequence[float] = (0.0, 0.0), dtype: torch.dtype = torch.float64):
        super().__init__()
        if isinstance(w, (str, bytes)) or not isinstance(w, Sequence) or len(w) != 2:
            raise TypeError(f"`w` must be a sequence of two real numbers, got {w!r}.")
        self.w = nn.Parameter(torch.tensor([check_real(f"w[{i}]", v) for i, v in enumerate(w)],
                                           dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.w
        return torch.stack([torch.zeros_like(z), z], -1)


class Scalar(nn.Module):
    """``f(theta, x) = theta`` for every input: one 0-d parameter (location problems)."""

    def __init__(self, theta: float = 0.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(check_real("theta0", theta), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0])


def _randn(gen: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    """Standard normals drawn in float64 and rounded to ``dtype``: one seed gives the same
    data in float32 and float64."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def tanh_regression(n: int = 64, *, w_true: tuple[float, float] = (1.5, 2.0), noise: float = 0.3,
                    seed: int = 0, dtype: torch.dtype = torch.float64) -> Problem:
    """Regression ``y = w2 tanh(w1 x) + noise`` fitted by ``w2 * tanh(w1 * x)``, squared loss.

    The landscape is symmetric under ``w -> -w``: two minima, a saddle at the origin.

    >>> tanh_regression().P
    2
    """
    n = check_nonneg_int("n", n, minimum=1)
    dtype = check_float_dtype("dtype", dtype)
    if isinstance(w_true, (str, bytes)) or not isinstance(w_true, Sequence) or len(w_true) != 2:
        raise TypeError(f"`w_true` must be a pair of real numbers, got {w_true!r}.")
    w_true = (check_real("w_true[0]", w_true[0]), check_real("w_true[1]", w_true[1]))
    noise = check_real("noise", noise)
    gen = seeded_generator(seed)
    x = _randn(gen, dtype, n) * 1.5
    y = w_true[1] * torch.tanh(w_true[0] * x) + noise * _randn(gen, dtype, n)
    return Problem(TanhToy(dtype=dtype), x[:, None], y, "mse", name="tanh")


def logistic2d(n: int = 100, *, seed: int = 0, separation: float = 1.0,
               dtype: torch.dtype = torch.float64) -> Problem:
    """Two Gaussian classes at ``+-separation * (1, 0.5)``, fitted by 2-weight logistic
    regression (cross-entropy on logits ``[0, w . x]``).

    >>> logistic2d().P
    2
    """
    n = check_nonneg_int("n", n, minimum=1)
    dtype = check_float_dtype("dtype", dtype)
    separation = check_real("separation", separation)
    gen = seeded_generator(seed)
    labels = torch.arange(n) % 2
    centre = torch.tensor([1.0, 0.5], dtype=dtype) * separation
    x = _randn(gen, dtype, n, 2) + (2 * labels[:, None] - 1) * centre
    return Problem(Logistic2D(dtype=dtype), x, labels, "cross_entropy", name="logistic2d")


def half_squared(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(output - target)^2 / 2`` for one sample: gradient ``theta - x`` in location problems."""
    return 0.5 * (output - target) ** 2


def location_problem(data: Sequence[float], *, theta0: float = 0.0,
                     dtype: torch.dtype = torch.float64) -> Problem:
    """Mean estimation ``l_i = (theta - x_i)^2 / 2``: with classic per-sample clipping at ``lam``
    the equilibrium is the Huber estimate with threshold ``lam`` (docs/theory.md#clipping-bias).

    >>> location_problem([-3.0, -3.0, 9.0]).P
    1
    """
    try:
        x = torch.as_tensor(np.asarray(list(data), dtype=np.float64), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`data` must be a sequence of real numbers, got {data!r}.") from exc
    if x.dim() != 1:
        raise ValueError(f"`data` must be a flat sequence of numbers, got shape {tuple(x.shape)}.")
    if x.numel() == 0:
        raise ValueError("`data` must hold at least one number, got an empty sequence.")
    return Problem(Scalar(theta0, dtype=dtype), x[:, None], x, half_squared, name="location")


def quartic_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(output^2 - target)^2 / 4`` for one sample: gradient ``theta (theta^2 - x_i)``."""
    return 0.25 * (output ** 2 - target) ** 2


def quartic(n: int = 16, *, theta0: float = 0.5, seed: int = 0,
            dtype: torch.dtype = torch.float64) -> Problem:
    """A scalar double well built to explode without clipping: ``l_i = (theta^2 - x_i)^2 / 4``
    with ``x_i = 1 + 0.1 z_i``, minima near ``theta = +-1``.

    The gradient grows like ``theta^3``, so plain SGD with step ``a`` diverges (in a few steps,
    faster than exponentially) from any ``|theta| > sqrt(2 / a + 1)``; near the minima it
    converges for ``a < 1``. Norm clipping bounds every step by ``a * lam`` and never explodes.

    >>> quartic().P
    1
    """
    n = check_nonneg_int("n", n, minimum=1)
    dtype = check_float_dtype("dtype", dtype)
    gen = seeded_generator(seed)
    x = 1.0 + 0.1 * _randn(gen, dtype, n)
    return Problem(Scalar(theta0, dtype=dtype), x[:, None], x, quartic_loss, name="quartic")


def linear1d(n: int = 64, *, spread: float = 1.3, theta0: float = 2.0, noise: float = 0.3,
             seed: int = 0, dtype: torch.dtype = torch.float64) -> Problem:
    """One-weight linear regression ``y = w x`` (no bias), ``l_i = (w x_i - y_i)^2 / 2``, with
    log-normal inputs ``x_i = exp(spread z_i)`` so the per-sample curvatures ``x_i^2`` spread
    over orders of magnitude; data ``y_i = x_i + noise * z'_i``, start ``w = theta0``.

    With adaptive clipping the step multiplies ``w - w*`` by about ``1 - a min(x_i^2, lam)``:
    for ``a lam > 2`` some samples expand it, so chains blow up at random (more often as
    ``lam`` grows), while classic clipping moves at most ``a lam`` per step.

    >>> linear1d().P
    1
    """
    n = check_nonneg_int("n", n, minimum=1)
    dtype = check_float_dtype("dtype", dtype)
    spread, noise = check_real("spread", spread), check_real("noise", noise)
    theta0 = check_real("theta0", theta0)
    gen = seeded_generator(seed)
    x = torch.exp(spread * _randn(gen, dtype, n))
    y = x + noise * _randn(gen, dtype, n)
    model = nn.Linear(1, 1, bias=False, dtype=dtype)
    with torch.no_grad():
        model.weight.fill_(theta0)
    return Problem(model, x[:, None], y, half_squared, name="linear1d")
