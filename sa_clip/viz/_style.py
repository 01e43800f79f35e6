"""Shared look and helpers of the figures: colours for equilibrium kinds, getting an axes,
tensors to numpy, NaN-aware quantiles over chains, and one legend style."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

KIND_STYLE = {
    "stable": dict(marker="o", color="#1a9850", label="stable equilibrium"),
    "saddle": dict(marker="X", color="#fdae61", label="saddle"),
    "unstable": dict(marker="s", color="#d73027", label="unstable equilibrium"),
    "degenerate": dict(marker="D", color="#7b3294", label="degenerate equilibrium"),
}
ODE_COLOR = "#b2182b"
SGD_COLOR = "#2166ac"


def get_ax(ax=None, figsize=(6.4, 5.2)):
    """Return ``ax`` or a new figure's axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def to_numpy(x) -> np.ndarray:
    """A float64 numpy array of a tensor (detached, on the CPU) or of anything array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def nan_quantiles(values: np.ndarray, qs: Sequence[float], axis: int = 0) -> list[np.ndarray]:
    """Quantiles over ``axis`` ignoring NaN (blown-up chains); all-NaN columns give NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [np.nanquantile(values, q, axis=axis) for q in qs]


def legend(ax, loc: str = "best", fontsize: float = 8, **kwargs):
    """The legend every figure uses (small, mostly opaque), only if something is labelled."""
    if not ax.get_legend_handles_labels()[0] and "handles" not in kwargs:
        return None
    return ax.legend(loc=loc, fontsize=fontsize, framealpha=0.85, **kwargs)
