"""Deprecated home of the streamed problem; the data sources now live in :mod:`sa_clip.sources`.

A :class:`~sa_clip.Problem` always holds a :class:`~sa_clip.DataSource`, in-memory tensors
being one kind, so a problem over data that stay on disk is simply
``Problem(model, data=NpyData(x_path, y_path), loss=...)`` (or :meth:`Problem.from_npy`).
:func:`StreamedProblem` remains as a constructor function for code written against the old
class: it returns that :class:`~sa_clip.Problem` (so ``isinstance(p, StreamedProblem)`` no
longer works: test ``not p.in_memory`` instead). The source classes are re-exported here.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .problem import LossSpec, Problem
from .sources import ArrayData, ChunkedData, DataSource, NpyData, TensorData


def StreamedProblem(model: nn.Module, source: DataSource, loss: LossSpec = "mse",  # noqa: N802
                    **kwargs: Any) -> Problem:
    """Deprecated: ``Problem(model, data=source, loss=loss, **kwargs)``.

    Example
    -------
    >>> import numpy as np, torch, warnings, sa_clip as sc
    >>> X = np.linspace(-1, 1, 8)[:, None]; y = 3 * X[:, 0]
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     p = sc.StreamedProblem(torch.nn.Linear(1, 1), sc.ArrayData(X, y), "mse")
    >>> type(p).__name__, p.in_memory
    ('Problem', False)
    """
    warnings.warn("StreamedProblem(model, source, loss) is deprecated: use "
                  "Problem(model, data=source, loss=loss).", DeprecationWarning, stacklevel=2)
    if not isinstance(source, DataSource):
        raise TypeError(f"`source` must be a sa_clip.DataSource (ArrayData, NpyData, "
                        f"ChunkedData), got {type(source).__name__}.")
    return Problem(model, data=source, loss=loss, **kwargs)


__all__ = ["StreamedProblem", "DataSource", "TensorData", "ArrayData", "NpyData", "ChunkedData"]
