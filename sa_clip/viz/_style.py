"""Shared look: colours for equilibrium kinds, a helper to get an axes."""

from __future__ import annotations

import matplotlib.pyplot as plt

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
