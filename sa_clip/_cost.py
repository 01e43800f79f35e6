r"""Long work says what it costs: a cost estimate before a long stage, then a progress bar.

A :class:`Meter` counts the units of work of one stage (evaluations of ``H``, SGD steps). After
the first unit (which pays one-off costs: ``vmap`` set-up, caches) it times the next ones (up
to :data:`WINDOW` of them or :data:`WINDOW_SECONDS`) and multiplies their mean by the
expected number of units, then, if the stage will take more than
:data:`QUIET_SECONDS` (or ``progress=True``), prints one line to stderr, such as

    tracking: 24 flows x about 600 evaluations x 0.1 s: about 25 min

and opens a tqdm bar (on stderr). ``progress=False`` prints nothing; ``progress=None`` (the
default of the long functions) prints only for long stages, and nothing at all when the
environment variable ``SA_CLIP_PROGRESS`` is ``0`` (the test suite sets it).

How many evaluations an adaptive ODE solve takes cannot be known before it runs: it depends
on how ``H`` varies along the path. :func:`ode_evaluations` gives a rough figure from the
tolerance, the span of times and the method (see its docstring); the bar, which runs over ODE
time, shows the real progress.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._tqdm import tqdm

#: A stage estimated to take longer than this (seconds) says so when ``progress=None``.
QUIET_SECONDS = 5.0
#: The time of one unit is the mean over a window of up to WINDOW units or WINDOW_SECONDS
#: (whichever ends first, at least one unit), so that fast units (SGD steps of a few ms) are
#: not timed one by one against the noise of a busy machine.
WINDOW = 5
WINDOW_SECONDS = 0.25

#: Adaptive torchdiffeq methods: (order of the error estimate's lower method + 1, new
#: evaluations per step, FSAL counted once).
_ADAPTIVE = {"dopri5": (5, 6), "dopri8": (8, 12), "bosh3": (3, 3), "fehlberg2": (2, 3),
             "adaptive_heun": (2, 2)}
#: Fixed-step methods: evaluations per step.
_FIXED = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


def check_progress(progress: Any, name: str = "progress") -> bool | None:
    """``progress`` if it is True, False or None (or a :class:`Meter`, passed on), else raise."""
    if progress is None or isinstance(progress, (bool, Meter)):
        return progress
    raise TypeError(f"`{name}` must be True, False or None (automatic: a cost estimate and a "
                    f"bar for stages longer than {QUIET_SECONDS:g} s), got {progress!r}.")


def auto_enabled() -> bool:
    """Whether ``progress=None`` may print (``SA_CLIP_PROGRESS=0`` silences it)."""
    return os.environ.get("SA_CLIP_PROGRESS", "1").strip().lower() not in ("0", "false", "no")


def duration(seconds: float) -> str:
    """``0.12 s``, ``25 s``, ``4 min``, ``2.5 h``: a rounded duration for estimates."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 0.095:
        return f"{seconds * 1e3:.2g} ms"
    if seconds < 60:
        return f"{seconds:.2g} s"
    if seconds < 3600:
        return f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.2g} h"


def ode_evaluations(solver: str, rtol: float, span: float, outputs: int,
                    options: dict[str, Any] | None = None) -> int:
    r"""A rough number of evaluations of ``H`` for an ODE solve over ``span`` units of time.

    Fixed-step methods: exact, (evaluations per step) x (steps: ``span / step_size``, or one
    per output interval). Adaptive methods of order ``q`` take steps ``h`` with local error
    ``~ h^(q+1)`` held near ``rtol``, so ``h ~ rtol^(1/(q+1))`` times the time scale on which
    ``H`` changes along the path; that scale grows as the path settles towards an
    equilibrium (steps lengthen), which a logarithm of the span models:

    .. math:: n_{\rm eval} \approx s\,\Big(\mathrm{rtol}^{-1/(q+1)}\,
              \log(1 + |\,\mathrm{span}\,|) + 2\Big),

    with ``s`` new evaluations per step (6 for dopri5). On the package's problems (toys,
    wine, the digits CNN; spans 5 and 20, float64 and float32 defaults) the real count was
    within a factor of 5 of this either way (mostly 3). It counts no rejected steps: a stiff
    field or many kinks cost more. Read it as the order of magnitude only.
    """
    span = abs(float(span))
    if solver in _FIXED:
        step = (options or {}).get("step_size")
        steps = math.ceil(span / float(step)) if step else max(1, outputs - 1)
        return _FIXED[solver] * steps
    order, stages = _ADAPTIVE.get(solver, (5, 6))
    return int(stages * (rtol ** (-1.0 / (order + 1)) * math.log1p(span) + 2))


class Meter:
    """Cost estimate and progress bar of one long stage.

    ``units``: the expected number of units (evaluations, steps); ``describe(seconds)`` turns
    the time of one unit into the estimate's words (without the stage name and total), e.g.
    ``"24 flows x about 600 evaluations x 0.1 s"``. ``total``/``unit``: the bar's scale (ODE
    time, steps), advanced by :meth:`tick`'s ``position``. ``after``: the first unit that is
    timed (the second by default: the first pays one-off costs; ``1`` for units that are each
    a whole sub-stage).
    """

    def __init__(self, stage: str, progress: bool | None, *, units: float,
                 describe: Callable[[float], str], total: float, unit: str,
                 after: int = 2, stream: Any = None):
        self.stage, self.progress, self.units, self.describe = stage, progress, units, describe
        self.after = after
        self.total, self.unit = total, unit
        self.stream = stream
        self.count = 0
        self.bar: Any = None
        self.estimate: float | None = None
        self.message: str | None = None
        self._last = time.perf_counter()
        self._position = 0.0
        # the timed window: from unit `after - 1` on (at once when after is 1)
        self._since: float | None = self._last if after <= 1 else None
        self._from = 0

    def tick(self, position: float | None = None, n: int = 1) -> None:
        """``n`` units done; ``position`` (on the bar's scale) reached."""
        now = time.perf_counter()
        self.count += n
        if position is not None:
            self._position = min(self.total, max(self._position, float(position)))
        if self._since is None:
            if self.count >= self.after - 1:            # the timed window starts here
                self._since, self._from = now, self.count
        elif self.message is None and self.progress is not False:
            done = self.count - self._from
            if done >= WINDOW or (done >= 1 and now - self._since >= WINDOW_SECONDS):
                self._announce((now - self._since) / done)
        if self.bar is not None:
            self.bar.n = self._position
            self.bar.update(0)               # redraws at most every mininterval
        self._last = now

    def _announce(self, per_unit: float) -> None:
        self.estimate = per_unit * self.units
        self.message = (f"{self.stage}: {self.describe(per_unit)}: about "
                        f"{duration(self.estimate)}")
        if self.progress is None and not (auto_enabled() and self.estimate > QUIET_SECONDS):
            return
        stream = self.stream if self.stream is not None else sys.stderr
        print(self.message, file=stream, flush=True)
        fmt = None if isinstance(self.total, int) else (
            "{desc}: {percentage:3.0f}%|{bar}| {n:.3g}/{total:.3g} {unit} [{elapsed}<{remaining}]")
        self.bar = tqdm(total=self.total, unit=self.unit, desc=self.stage, file=stream,
                        initial=self._position, bar_format=fmt)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self._position
            self.bar.close()
            self.bar = None


_SLOW_CONV_WARNED = False


def warn_slow_conv(model: nn.Module, dtype: torch.dtype, device: torch.device,
                   stacklevel: int = 4) -> bool:
    """Warn, once per session, when a model with convolutions runs in float64 on the CPU:
    torch has no fast float64 convolution there (no oneDNN/MKL kernels; a slow fallback), so
    every gradient costs several times its float32 price (docs/own-model.md). Returns whether
    it warned."""
    global _SLOW_CONV_WARNED
    if _SLOW_CONV_WARNED or dtype != torch.float64 or torch.device(device).type != "cpu":
        return False
    convs = [type(m).__name__ for m in model.modules()
             if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        return False
    _SLOW_CONV_WARNED = True
    warnings.warn(f"this float64 model has convolutions ({', '.join(sorted(set(convs)))}) and "
                  "runs on the CPU, where torch has no fast float64 convolution: each gradient "
                  "costs 2-3 times its float32 price or more. For long runs build the problem "
                  "with dtype=torch.float32 (sa-clip: --dtype float32), keeping float64 for "
                  "checks. (Said once per session.)", UserWarning, stacklevel=stacklevel)
    return True


__all__ = ["Meter", "warn_slow_conv", "QUIET_SECONDS", "check_progress", "ode_evaluations",
           "duration", "auto_enabled"]
