"""Real data sets bundled with scikit-learn, standardised. Nothing is downloaded."""

from __future__ import annotations

import numpy as np
import torch

from .._validate import check_choice, check_float_dtype, check_nonneg_int

#: name -> (scikit-learn loader name, task)
DATASETS = {
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "digits": ("load_digits", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}


def load_dataset(name: str, *, dtype: torch.dtype = torch.float64, n: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Load a bundled data set as ``(X, y, task)``.

    Features are standardised (zero mean, unit variance per column; constant columns left at 0);
    regression targets are standardised too; class labels are ``int64``. ``n`` keeps the first
    ``n`` samples of a fixed shuffle (seed 0), for quick runs: an integer from 1 to the size of
    the data set (a ``ValueError`` says the range otherwise; nothing is clamped). The
    standardisation uses the full data set either way.

    >>> X, y, task = load_dataset("wine")
    >>> X.shape, task
    (torch.Size([178, 13]), 'classification')
    """
    check_choice("name", name, DATASETS)
    dtype = check_float_dtype("dtype", dtype)
    import sklearn.datasets

    loader, task = DATASETS[name]
    data = getattr(sklearn.datasets, loader)()
    X = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target)
    sd = X.std(0)
    X = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
    if task == "regression":
        y = (y - y.mean()) / y.std()
    if n is not None:
        n = check_nonneg_int("n", n, minimum=1)
        if n > len(X):
            raise ValueError(f"`n` must be an integer from 1 to {len(X)} (the samples of "
                             f"{name!r}), or None for all, got {n}.")
        order = np.random.default_rng(0).permutation(len(X))[:n]
        X, y = X[order], y[order]
    Xt = torch.as_tensor(X, dtype=dtype)
    yt = torch.as_tensor(y, dtype=dtype) if task == "regression" else torch.as_tensor(
        y, dtype=torch.long)
    return Xt, yt, task
