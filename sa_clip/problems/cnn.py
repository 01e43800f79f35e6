"""A small convolutional network on scikit-learn's digits (8x8 images, 10 classes): the zoo's
conv model, for ``sa-clip run --problem digits-cnn``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from .._validate import check_float_dtype, seeded_generator
from ..problem import Problem
from .datasets import load_dataset


def digits_cnn_network(channels: Sequence[int] = (6, 12), *, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``Conv(1->c1, 3x3) -> tanh -> avgpool 2 -> Conv(c1->c2, 3x3) -> tanh -> avgpool 2 ->
    Linear(4 c2 -> 10)`` for ``(N, 1, 8, 8)`` inputs (padding 1 keeps 8x8, each pool halves).

    Weights follow PyTorch's default uniform rule (bound ``1/sqrt(fan_in)``) drawn from a
    private generator seeded by ``seed``, in float64 and then cast, so float32 and float64
    networks start from the same weights (to round-off); the global RNG is not touched.
    """
    dtype = check_float_dtype("dtype", dtype)
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or \
            len(channels) != 2 or any(isinstance(c, bool) or not isinstance(c, numbers.Integral)
                                      or c < 1 for c in channels):
        raise ValueError(f"`channels` must be two channel counts, integers >= 1 (e.g. (6, 12)), "
                         f"got {channels!r}.")
    c1, c2 = (int(c) for c in channels)
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * c2, 10))
    gen = seeded_generator(seed)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / (layer.weight[0].numel()) ** 0.5
                for w in (layer.weight, layer.bias):
                    w.copy_(torch.rand(w.shape, generator=gen, dtype=torch.float64)
                            * 2 * bound - bound)
    return model.to(dtype)


def digits_cnn(channels: Sequence[int] = (6, 12), *, seed: int = 0,
               dtype: torch.dtype = torch.float32, n: int | None = None) -> Problem:
    """:func:`digits_cnn_network` on the standardised digits (``N = 1797``, or the first ``n``
    of a fixed shuffle), cross-entropy on the 10 logits. Float32 by default: torch has no fast
    float64 convolution on the CPU (a float64 conv problem on the CPU warns once).

    >>> p = digits_cnn()
    >>> p.N, p.P, p.dtype
    (1797, 1210, torch.float32)
    """
    dtype = check_float_dtype("dtype", dtype)
    X, y, _ = load_dataset("digits", dtype=dtype, n=n)
    model = digits_cnn_network(channels, seed=seed, dtype=dtype)
    c1, c2 = (int(c) for c in channels)
    return Problem(model, X.reshape(-1, 1, 8, 8), y, "cross_entropy",
                   name=f"digits-cnn{c1}-{c2}")


__all__ = ["digits_cnn", "digits_cnn_network"]
