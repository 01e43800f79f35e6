"""The explorer's settings and command-line options (``sa_clip.viz.explore``).

:class:`Settings` and its limits, the option parser (:func:`add_arguments`,
:func:`settings_from_args`) and the picture size (:func:`parse_size`, :func:`figure_size`);
split out of ``explore.py``, which re-exports every name here.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields, replace

from .. import problems as zoo

#: ``sa-clip explore --help`` (plain text: no reST markup in the terminal)
HELP = "interactive explorer of a 2-parameter problem (sliders, animated chains, D_T)"
DESCRIPTION = ("An interactive window on a 2-parameter problem: streamlines of -H, nullclines, "
               "equilibria by stability, animated SGD chains against the ODE from their start, "
               "and D_T(s); sliders for lam, eps, a0, alpha and the batch size, radio buttons "
               "for the rule and per-sample/per-batch clipping. --snapshot PATH writes one "
               "frame as a PNG and --gif PATH the animation, with no window.")

PROG = "sa-clip explore"
#: what ``--quick`` changes (options left at their defaults only)
QUICK = {"grid": 15, "chains": 12, "steps": 80}
#: the ready-made 2-parameter problems the explorer accepts
PROBLEMS_2D = ("tanh", "logistic2d")
#: the rules on the radio buttons (registry names of :func:`sa_clip.make_rule`)
RULE_CHOICES = ("norm", "adaptive", "layerwise", "unitwise", "value", "none")
RULE_LABELS = {"norm": "classic norm", "adaptive": "adaptive", "layerwise": "layer-wise",
               "unitwise": "unit-wise (AGC)", "value": "value", "none": "none (plain SGD)"}
CLIP_PER_CHOICES = ("sample", "batch")
CLIP_PER_LABELS = {"sample": "per-sample", "batch": "per-batch"}
#: slider ranges (a value given outside is accepted and the range grows to hold it)
SLIDER_RANGES = {"lam": (0.05, 5.0), "eps": (0.001, 1.0), "a0": (0.05, 2.0),
                 "alpha": (0.3, 1.0), "batch_size": (1, 32)}
#: samples in each problem's data set (the largest batch size)
DATA_SIZE = {"tanh": 64, "logistic2d": 100}
DEFAULT_EXTENT = {"tanh": 3.0, "logistic2d": 5.0}
#: window / snapshot size in pixels at :data:`DPI` (fits a 1024 x 768 projector)
SIZE = (1024, 768)
DPI = 100
FIGSIZE = (SIZE[0] / DPI, SIZE[1] / DPI)
#: largest accepted values (beyond them a grid, a view or a picture is not useful, only slow)
MAX_GRID = 200
MAX_EXTENT = 1e4
MAX_DPI = 600
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Settings:
    """Everything the explorer draws depends on these (the controls change the first eight).

    ``a0``, ``alpha``: the power schedule ``a(n) = a0 / (n + 1)^alpha``; ``extent``: the plane
    shown is ``[-extent, extent]^2`` (default per problem: tanh 3, logistic2d 5); ``grid``:
    ``G``, points per side of the field grid;
    ``horizon``: ``T`` of ``D_T(s)`` (shortened to a third of the run's ODE time if the run is
    shorter than ``1.5 T``); ``starts``: start times ``s`` of ``D_T(s)``.
    """

    problem: str = "tanh"
    rule: str = "norm"
    lam: float = 1.0
    eps: float = 1e-3
    a0: float = 1.0
    alpha: float = 0.7
    batch_size: int = 1
    clip_per: str = "sample"
    chains: int = 24
    steps: int = 150
    seed: int = 0
    extent: float | None = None
    grid: int = 25
    horizon: float = 1.0
    starts: int = 8

    def check(self) -> Settings:
        """Raise ``ValueError`` naming the first bad option, its value and what is accepted."""
        if self.problem not in PROBLEMS_2D:
            extra = ""
            if self.problem in zoo.PROBLEMS:
                extra = " (it has more than 2 parameters; the explorer draws the plane itself)"
            raise ValueError(f"`--problem` must be one of {list(PROBLEMS_2D)}, got "
                             f"{self.problem!r}{extra}.")
        if self.rule not in RULE_CHOICES:
            raise ValueError(f"`--rule` must be one of {list(RULE_CHOICES)}, got {self.rule!r}.")
        if self.clip_per not in CLIP_PER_CHOICES:
            raise ValueError(f"`--clip-per` must be one of {list(CLIP_PER_CHOICES)}, got "
                             f"{self.clip_per!r}.")
        if self.extent is None:
            return replace(self, extent=DEFAULT_EXTENT[self.problem]).check()
        for name in ("lam", "eps", "a0", "alpha", "extent", "horizon"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v > 0):
                raise ValueError(f"`--{name}` must be a finite number > 0, got {v!r}.")
        if self.extent > MAX_EXTENT:
            raise ValueError(f"`--extent` must be at most {MAX_EXTENT:g} (the half-width of the "
                             f"square drawn), got {self.extent!r}.")
        for name, low in (("batch_size", 1), ("chains", 1), ("steps", 10), ("grid", 5),
                          ("starts", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"`--{name.replace('_', '-')}` must be an integer >= {low}, "
                                 f"got {v!r}.")
        if self.grid > MAX_GRID:
            raise ValueError(f"`--grid` must be at most {MAX_GRID} points per side (the field "
                             f"is evaluated at grid^2 points), got {self.grid}.")
        n = DATA_SIZE[self.problem]
        if self.batch_size > n:
            raise ValueError(f"`--batch-size` must be at most {n} (the {self.problem} data set "
                             f"has {n} samples), got {self.batch_size}.")
        if self.chains > 1000:
            raise ValueError(f"`--chains` must be at most 1000, got {self.chains}.")
        if self.steps > 1_000_000:
            raise ValueError(f"`--steps` must be at most 1000000, got {self.steps}.")
        return self



def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the explorer's options to ``parser`` (what ``sa-clip explore`` takes)."""
    d = Settings()
    g = parser.add_argument_group("explorer options (the controls start at these values)")
    g.add_argument("--problem", default=d.problem,
                   help=f"2-parameter problem: {', '.join(PROBLEMS_2D)} (default {d.problem})")
    g.add_argument("--rule", default=d.rule,
                   help=f"clipping rule: {', '.join(RULE_CHOICES)} (default {d.rule})")
    g.add_argument("--lam", type=float, default=d.lam, help=f"threshold lambda ({d.lam})")
    g.add_argument("--eps", type=float, default=d.eps, help=f"epsilon of adaptive rules "
                                                            f"({d.eps})")
    g.add_argument("--a0", type=float, default=d.a0,
                   help=f"step size a(n) = a0 / (n + 1)^alpha: a0 (default {d.a0})")
    g.add_argument("--alpha", type=float, default=d.alpha, help=f"alpha (default {d.alpha})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"samples per SGD step M (default {d.batch_size})")
    g.add_argument("--clip-per", default=d.clip_per,
                   help="sample (clip each gradient, default) or batch (clip the batch mean)")
    g.add_argument("--chains", type=int, default=d.chains, help=f"SGD chains ({d.chains})")
    g.add_argument("--steps", type=int, default=d.steps, help=f"SGD steps ({d.steps})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    g.add_argument("--extent", type=float, default=d.extent,
                   help="half-width of the square drawn (default: tanh 3, logistic2d 5)")
    g.add_argument("--grid", type=int, default=d.grid, help=f"grid points per side ({d.grid})")
    g.add_argument("--horizon", type=float, default=d.horizon, help=f"T of D_T(s) "
                                                                    f"({d.horizon})")
    g.add_argument("--snapshot", metavar="PATH",
                   help="render once with no window and write a PNG to PATH")
    g.add_argument("--gif", metavar="PATH",
                   help="render the animation of the chains with no window and write a GIF "
                        "to PATH (for a lecture machine without Python)")
    g.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", metavar="WxH",
                   help=f"window / picture size in pixels at --dpi {DPI} "
                        f"(default {SIZE[0]}x{SIZE[1]}, a projector)")
    g.add_argument("--dpi", type=int, default=DPI,
                   help=f"dots per inch: text and lines scale with it, the layout does not; the "
                        f"picture is WxH * dpi/{DPI} pixels (default {DPI})")
    g.add_argument("--quick", action="store_true",
                   help="a coarser grid and fewer, shorter chains, for a slow machine: "
                        + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    return parser



def settings_from_args(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` named by parsed options (``ValueError`` for a bad one)."""
    names = {f.name for f in fields(Settings)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if getattr(args, "quick", False):          # --quick changes only what was left at default
        default = Settings()
        values.update({k: v for k, v in QUICK.items() if values.get(k) == getattr(default, k)})
    return Settings(**values).check()


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)``; ``ValueError`` naming ``--size`` otherwise."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"`--size` must be WIDTHxHEIGHT in pixels, e.g. 1024x768, got "
                         f"{text!r}.") from None
    if not (320 <= w <= 8192 and 240 <= h <= 8192):
        raise ValueError(f"`--size` must be between 320x240 and 8192x8192 pixels, got {text!r}.")
    return w, h


def figure_size(args: argparse.Namespace) -> tuple[tuple[float, float], int]:
    """``(figsize in inches, dpi)`` from ``--size`` and ``--dpi``, checked: the layout is
    that of ``--size`` at :data:`DPI`, the picture ``size * dpi / DPI`` pixels."""
    w, h = parse_size(getattr(args, "size", f"{SIZE[0]}x{SIZE[1]}"))
    dpi = getattr(args, "dpi", DPI)
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= MAX_DPI:
        raise ValueError(f"`--dpi` must be an integer in [20, {MAX_DPI}], got {dpi!r}.")
    pixels = w * h * (dpi / DPI) ** 2
    if pixels > MAX_PIXELS:
        raise ValueError(f"`--dpi` {dpi} with `--size` {w}x{h} makes a picture of "
                         f"{pixels / 1e6:.0f} million pixels; at most {MAX_PIXELS / 1e6:.0f} "
                         "million are accepted: lower --dpi or --size.")
    return (w / DPI, h / DPI), dpi

