"""Shared look and helpers of the figures: colours for equilibrium kinds, getting an axes,
tensors to numpy, NaN-aware quantiles over chains, one legend style, and the figure styles.

Every figure function of :mod:`sa_clip.viz` takes ``dpi`` and ``style`` (the
:func:`figure_function` decorator adds them):

* ``style=None`` or ``"default"``: the screen look (10 pt text);
* ``"paper"``: a journal column: 3.4 in wide for one panel, 7 in for several, 8 pt text, thin
  lines, TrueType fonts embedded in PDF/PS and text kept as text in SVG (save as ``.pdf`` or
  ``.svg`` for a vector figure);
* ``"talk"``: a 4:3 projector slide: 14 pt text, thick lines, at most two panels across
  (three or four panels go 2 x 2).

``dpi`` sets the figure's resolution, which :func:`sa_clip.viz.save_figure` then writes
(matplotlib's ``savefig.dpi`` is ``"figure"`` by default).

Example
-------
>>> import numpy as np
>>> from sa_clip.viz import plot_ensemble
>>> ax = plot_ensemble(np.arange(4.0), np.ones((3, 4)), style="talk", dpi=150)
>>> float(ax.figure.get_dpi()), ax.figure.get_size_inches().tolist()
(150.0, [8.0, 6.0])
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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

#: the styles a figure function accepts, and the matplotlib settings of each
STYLES: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
              "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.0,
              "lines.markersize": 4, "axes.linewidth": 0.6, "pdf.fonttype": 42,
              "ps.fonttype": 42, "svg.fonttype": "none"},
    "talk": {"font.size": 14, "axes.titlesize": 14, "axes.labelsize": 14,
             "legend.fontsize": 11, "xtick.labelsize": 12, "ytick.labelsize": 12,
             "lines.linewidth": 2.2, "lines.markersize": 8, "axes.linewidth": 1.2},
}
#: widths in inches of a paper figure: one column, two columns (several panels)
PAPER_WIDTH = (3.4, 7.0)
#: a 4:3 slide in inches (1024 x 768 pixels at 100 dpi)
TALK_SIZE = (10.24, 7.68)
MAX_DPI = 1200

_STATE = threading.local()


def current_style() -> str:
    """The style of the figure function running now (``"default"`` outside one)."""
    return getattr(_STATE, "style", "default")


def check_style(style: str | None) -> str:
    """``None`` -> ``"default"``; ``ValueError`` naming ``style`` for an unknown one."""
    if style is None:
        return "default"
    if not isinstance(style, str) or style not in STYLES:
        raise ValueError(f"`style` must be one of {list(STYLES)} or None, got {style!r}.")
    return style


def check_dpi(dpi: Any) -> int | None:
    """``None`` or an integer in ``[20, MAX_DPI]``; ``ValueError`` naming ``dpi`` otherwise."""
    if dpi is None:
        return None
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or not (
            20 <= int(dpi) <= MAX_DPI):
        raise ValueError(f"`dpi` must be an integer in [20, {MAX_DPI}], got {dpi!r}.")
    return int(dpi)


def panel_grid(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels: one row, except in the talk style, which puts at
    most two panels across (``n = 3, 4`` go 2 x 2)."""
    if current_style() == "talk" and n > 2:
        return math.ceil(n / 2), 2
    return 1, n


def figsize_for(default: tuple[float, float], nrows: int = 1,
                ncols: int = 1) -> tuple[float, float]:
    """The figure size of the current style for a grid of panels (``default`` is the
    default style's size, whose aspect the paper style keeps)."""
    style = current_style()
    if style == "paper":
        w = PAPER_WIDTH[0] if ncols == 1 else PAPER_WIDTH[1]
        h = w * default[1] / default[0]
        return w, max(h, 2.2 * nrows)
    if style == "talk":
        if nrows == 1 and ncols == 1:
            return 8.0, 6.0
        return TALK_SIZE[0], TALK_SIZE[1] if nrows > 1 else 4.8
    return default


def subplots(n: int, default: tuple[float, float], **kwargs: Any):
    """A constrained-layout figure with ``n`` panels laid out by :func:`panel_grid`;
    returns ``(fig, axes)`` with ``axes`` a list of ``n`` (unused grid cells removed)."""
    nrows, ncols = panel_grid(n)
    if nrows > 1 and "width_ratios" in kwargs:
        kwargs.pop("width_ratios")
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize_for(default, nrows, ncols),
                             layout="constrained", squeeze=False, **kwargs)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def get_ax(ax=None, figsize=(6.4, 5.2)):
    """Return ``ax`` or a new figure's axes (sized for the current style)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize_for(figsize), layout="constrained")
    return ax


@contextlib.contextmanager
def styled(style: str | None) -> Iterator[str]:
    """Draw under ``style`` (``None``: keep the enclosing one)."""
    if style is None:
        yield current_style()
        return
    name = check_style(style)
    prev = current_style()
    with plt.rc_context(STYLES[name]):
        _STATE.style = name
        try:
            yield name
        finally:
            _STATE.style = prev


def _figure_of(out: Any):
    if hasattr(out, "savefig"):
        return out
    fig = getattr(out, "figure", None) or getattr(out, "_fig", None)
    if fig is None and isinstance(out, (list, tuple, np.ndarray)) and len(out):
        return _figure_of(np.asarray(out, dtype=object).ravel()[0])
    return fig


def figure_function(fn: Callable) -> Callable:
    """Give a figure function the keywords ``dpi`` and ``style`` (see the module)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, dpi: int | None = None, style: str | None = None, **kwargs: Any):
        check_style(style)
        dpi = check_dpi(dpi)
        with styled(style) as name:
            out = fn(*args, **kwargs)
            fig = _figure_of(out)
            if fig is not None and style is not None and name != "default":
                size = STYLES[name]["xtick.labelsize"]
                for ax in fig.axes:               # ticks are made lazily, at draw time
                    if ax.get_axes_locator() is None:        # not an inset
                        ax.tick_params(which="both", labelsize=size)
        if fig is not None and dpi is not None:
            fig.set_dpi(dpi)
        return out

    wrapper.__doc__ = (fn.__doc__ or "") + (
        "\n    ``dpi`` (resolution) and ``style`` (``None``, ``\"paper\"`` or ``\"talk\"``): see "
        ":mod:`sa_clip.viz._style`.\n")
    return wrapper


#: the resolution the examples and the gallery write by default
GALLERY_DPI = 150


def add_figure_options(parser, dpi: int = GALLERY_DPI):
    """Add ``--dpi`` and ``--style`` to an ``argparse`` parser (the examples' options)."""
    parser.add_argument("--dpi", type=int, default=dpi,
                        help=f"resolution of the figures written (default {dpi})")
    parser.add_argument("--style", choices=[s for s in STYLES if s != "default"],
                        default=None, help="paper: a journal column, vector friendly (save "
                        "as .pdf/.svg); talk: large text, at most 2 panels across (default: "
                        "the screen look)")
    return parser


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


def legend(ax, loc: str = "best", fontsize: float | str = "small", **kwargs):
    """The legend every figure uses (small, mostly opaque), only if something is labelled."""
    if not ax.get_legend_handles_labels()[0] and "handles" not in kwargs:
        return None
    return ax.legend(loc=loc, fontsize=fontsize, framealpha=0.85, **kwargs)
