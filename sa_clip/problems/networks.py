"""The paper's network: sigmoid hidden layers, linear read-out (regression) or softmax
(classification, via cross-entropy on the logits)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from .._validate import check_float_dtype, seeded_generator
from ..problem import Problem
from .datasets import DATASETS, load_dataset


def n_classes(name: str) -> int:
    """Number of classes of a bundled classification data set, from the full data set (so a
    subsample that misses a class still gets one logit per class).

    >>> n_classes("iris")
    3
    """
    _, y, _ = load_dataset(name)
    return int(y.max()) + 1


def paper_network(n_in: int, n_out: int, hidden: Sequence[int] = (16,), *,
                  activation: type[nn.Module] = nn.Sigmoid, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """``Linear -> sigmoid -> ... -> Linear``: the network of the paper's section 2.

    Weights are initialised by PyTorch's default rule from a private generator seeded by
    ``seed`` (the global RNG is not touched), drawn in float64 and rounded to ``dtype``: one
    seed, one network, whatever the precision.
    """
    dtype = check_float_dtype("dtype", dtype)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or any(
            isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise ValueError(f"`hidden` must be a sequence of layer widths, integers >= 1 (e.g. "
                         f"(16,) or (32, 32); () for none), got {hidden!r}.")
    sizes = [n_in, *hidden, n_out]
    layers: list[nn.Module] = []
    gen = seeded_generator(seed)
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, dtype=dtype)
        bound = 1.0 / a ** 0.5
        with torch.no_grad():
            # drawn in float64 whatever ``dtype`` (then rounded): the same seed gives the
            # same network in float32 and float64, so the two are one experiment
            f64 = torch.float64
            lin.weight.copy_(torch.rand(b, a, generator=gen, dtype=f64) * 2 * bound - bound)
            lin.bias.copy_(torch.rand(b, generator=gen, dtype=f64) * 2 * bound - bound)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def real_problem(name: str = "wine", hidden: Sequence[int] = (16,), *, seed: int = 0,
                 dtype: torch.dtype = torch.float64, n: int | None = None,
                 activation: type[nn.Module] = nn.Sigmoid) -> Problem:
    """The paper's network on a bundled data set (see :func:`load_dataset`).

    Classification data sets get cross-entropy on ``C`` logits (``C`` from the full data set,
    whatever ``n``), ``diabetes`` gets ``"mse"``.

    >>> p = real_problem("iris", hidden=(4,))
    >>> p.N, p.P
    (150, 35)
    """
    X, y, task = load_dataset(name, dtype=check_float_dtype("dtype", dtype), n=n)
    n_out = n_classes(name) if task == "classification" else 1
    model = paper_network(X.shape[1], n_out, hidden, activation=activation, seed=seed,
                          dtype=dtype)
    loss = "cross_entropy" if task == "classification" else "mse"
    return Problem(model, X, y, loss, name=f"{name}-mlp{'-'.join(map(str, hidden))}")


def logistic_regression(name: str = "wine", *, dtype: torch.dtype = torch.float64,
                        n: int | None = None) -> Problem:
    """Multinomial logistic regression (one ``nn.Linear`` layer, cross-entropy) on a standardised
    bundled classification data set: a convex real-data problem. Weights start at zero.

    >>> logistic_regression("wine").P
    42
    """
    if name in DATASETS and DATASETS[name][1] != "classification":
        raise ValueError(f"`name` must be a classification data set, got {name!r} "
                         f"({DATASETS[name][1]}).")
    X, y, _ = load_dataset(name, dtype=dtype, n=n)
    model = nn.Linear(X.shape[1], n_classes(name), dtype=dtype)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    return Problem(model, X, y, "cross_entropy", name=f"{name}-logreg")
