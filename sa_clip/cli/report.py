"""What the commands print and record: tables, chatter, the problem as fields, stage timings
and peak memory."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

from .._memory import peak_rss_mb

RULE_LABELS = {"none": "no clipping", "norm": "classic (norm)", "adaptive": "adaptive",
               "layerwise": "layer-wise adaptive", "unitwise": "unit-wise (AGC)",
               "value": "value clipping"}
COLORS = ["#2166ac", "#b35806", "#1b7837", "#762a83", "#d6604d"]


def label(name: str) -> str:
    """The human name of a rule's registry name."""
    return RULE_LABELS.get(name, name)


def color(k: int) -> str:
    return COLORS[k % len(COLORS)]


def log(args: argparse.Namespace, msg: str) -> None:
    """Print unless ``--quiet``."""
    if not args.quiet:
        print(msg, flush=True)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A right-aligned text table with a rule under the header."""
    cells = [[str(h) for h in header]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def num(x: Any) -> float | None:
    """A finite float for JSON, None for NaN/inf."""
    v = float(x)
    return v if math.isfinite(v) else None


def problem_fields(problem: Any) -> dict[str, Any]:
    """The problem as structured JSON fields (not a repr)."""
    return {"name": problem.name, "N": int(problem.N), "P": int(problem.P),
            "loss": getattr(problem, "loss_name", None), "dtype": str(problem.dtype),
            "device": str(problem.device), "model": type(problem.model).__name__}


class StageClock:
    """Wall time and peak RSS at the end of each named stage of a command.

    >>> clock = StageClock()
    >>> clock.stage("setup")
    >>> list(clock.seconds)
    ['setup']
    """

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    def stage(self, name: str) -> None:
        """Close stage ``name`` now: the time since the previous :meth:`stage`."""
        now = time.perf_counter()
        self.record(name, now - self.last)
        self.last = now

    def record(self, name: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere to ``name`` (a sub-stage inside the current stage,
        such as one rule's tracking inside ``rules``); the next :meth:`stage` still counts
        from the previous one."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.peak_rss_mb[name] = round(peak_rss_mb(), 1)

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "total_seconds": round(self.total, 3),
                "peak_rss_mb_after": self.peak_rss_mb, "peak_rss_mb": round(peak_rss_mb(), 1)}
