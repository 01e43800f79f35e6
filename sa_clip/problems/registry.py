"""Names for the ready-made problems, as the command line uses them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..problem import Problem
from .cnn import digits_cnn
from .datasets import DATASETS
from .networks import logistic_regression, real_problem
from .toys import logistic2d, quartic, tanh_regression

PROBLEMS: dict[str, Callable[..., Problem]] = {
    "tanh": tanh_regression,
    "logistic2d": logistic2d,
    "quartic": quartic,
    "logreg": logistic_regression,
    "digits-cnn": digits_cnn,
    **{name: (lambda name=name, **kw: real_problem(name, **kw)) for name in DATASETS},
}




def make_problem(name: str, **kwargs: Any) -> Problem:
    """Build a ready-made problem by name: ``"tanh"``, ``"logistic2d"``, ``"quartic"`` (explodes
    without clipping), ``"logreg"`` (logistic regression, keyword ``name`` picks the data set)
    or a data set name
    (``"iris"``, ``"wine"``, ``"breast_cancer"``, ``"digits"``, ``"diabetes"``), the latter with
    the paper's sigmoid network (keywords go to :func:`real_problem`), or ``"digits-cnn"``
    (a two-layer CNN on the digits images, float32 by default: :func:`digits_cnn`)."""
    if name not in PROBLEMS:
        raise ValueError(f"`problem` must be one of {sorted(PROBLEMS)}, got {name!r}.")
    return PROBLEMS[name](**kwargs)
