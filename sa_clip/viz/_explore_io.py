"""The explorer's output (``sa_clip.viz.explore``): whether a window can open here
(:func:`display_problem`, and the ways out when it cannot) and the pictures written with no
window (``--snapshot`` PNG and ``--gif`` animation, atomically: an existing file is replaced
only by a complete one). Split out of ``explore.py``, which re-exports every name here.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

from ._save import atomic_path, save_animation

_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def _interactive_backend() -> bool:
    """Whether pyplot's backend shows figures live (a GUI or ipympl), not as images."""
    name = matplotlib.get_backend().lower()
    return "inline" not in name and name.rsplit(".", 1)[-1] not in _NON_INTERACTIVE


def display_problem() -> str | None:
    """Why no window can open here, or None. matplotlib falls back to Agg without a word
    when the backend asked for (``MPLBACKEND=TkAgg``) needs a display that is missing; this
    names the cause instead of the fallback."""
    backend = matplotlib.get_backend()
    asked = os.environ.get("MPLBACKEND", "")
    name = backend.lower()
    if "ipympl" in name or "widget" in name or "nbagg" in name:
        return None
    headless = (sys.platform.startswith("linux")
                and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")))
    if headless:
        return ("there is no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
                + (f", which the backend MPLBACKEND={asked!r} needs" if asked else ""))
    if not _interactive_backend():
        return (f"matplotlib's backend {backend!r} draws only images"
                + (f" (MPLBACKEND={asked!r})" if asked else "")
                + "; set MPLBACKEND to a GUI backend such as TkAgg or QtAgg")
    return None


WAYS_OUT = ("Ways out: (1) --snapshot PATH.png or --gif PATH.gif write the picture or the "
            "animation with no window; (2) in Jupyter: pip install 'sa-clip[explore]' (ipympl), "
            "then %matplotlib widget and sa_clip.viz.explore.Explorer(); (3) over SSH: connect "
            "with ssh -X (X forwarding) so that DISPLAY is set.")


def check_picture_path(args: argparse.Namespace) -> None:
    """``ValueError`` unless ``--snapshot`` names a ``.png`` file (else ``--gif`` a ``.gif``),
    before anything is computed."""
    path = args.snapshot or args.gif
    suffix = ".png" if args.snapshot else ".gif"
    if not str(path).lower().endswith(suffix):
        opt = "--snapshot" if args.snapshot else "--gif"
        raise ValueError(f"`{opt}` must name a {suffix} file, got {path!r}.")


def write_pictures(ex, args: argparse.Namespace, dpi: int) -> str:
    """Write the explorer ``ex``'s figure as the ``--snapshot`` PNG and / or its animation as
    the ``--gif`` GIF at ``dpi``; returns the paths written, joined by " and "."""
    if args.snapshot:
        with atomic_path(args.snapshot) as tmp:   # a full disk leaves the old file whole
            ex.fig.savefig(tmp, dpi=dpi, format="png")
    if args.gif:
        save_animation(ex.animation(), args.gif, fps=8, dpi=dpi)
    return " and ".join(p for p in (args.snapshot, args.gif) if p)
