r"""Step-size schedules ``a(n)``, ``n = 0, 1, ...``, and their ODE times (docs/theory.md#ode-time).

Assumption (A2) of the paper: ``a(n) > 0``, ``sum a(n) = inf`` and ``sum a(n)^2 < inf``. The ODE
time of step ``n`` is

.. math:: \tau_0 = 0, \qquad \tau_n = \sum_{k<n} a(k).

=====================================  ==========================  =====================
schedule                               ``a(n)``                    (A2)
=====================================  ==========================  =====================
``Constant(a0)``                       ``a0``                      no (O(a) tracking)
``Harmonic(a0, n0=1)``                 ``a0 / (n + n0)``           yes
``PowerLaw(a0, alpha, n0=1)``          ``a0 / (n + n0)^alpha``     iff ``1/2 < alpha <= 1``
``FunctionSchedule(fn, a2=False)``     ``fn(n)``                   as declared by ``a2``
=====================================  ==========================  =====================

Example
-------
>>> from sa_clip.schedules import make_schedule
>>> s = make_schedule("power:0.5,0.7")
>>> s.satisfies_a2, s.tau(2)
(True, tensor([0.0000, 0.5000, 0.8078], dtype=torch.float64))
"""

from __future__ import annotations

import math
import numbers
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ._validate import check_nonneg_int, check_positive


def _check_n(n: Any) -> torch.Tensor | int:
    """Validate a step index (int >= 0) or an integer tensor of them."""
    if isinstance(n, torch.Tensor):
        if n.is_floating_point() or n.is_complex() or n.dtype == torch.bool:
            raise TypeError(f"`n` must be an integer tensor of step indices, got dtype {n.dtype}.")
        if n.numel() and int(n.min()) < 0:
            raise ValueError(f"`n` must hold step indices >= 0, got a minimum of {int(n.min())}.")
        return n
    return check_nonneg_int("n", n)


class Schedule(ABC):
    """A step-size schedule ``n -> a(n) > 0``. Concrete schedules are frozen dataclasses.

    ``schedule(n)`` takes an ``int`` (returns a float) or an integer tensor (returns float64).
    """

    kind: ClassVar[str]

    @abstractmethod
    def _eval(self, n: torch.Tensor) -> torch.Tensor:
        """``a(n)`` for an int64 tensor ``n`` (float64 result)."""

    @property
    @abstractmethod
    def satisfies_a2(self) -> bool:
        """Whether (A2) holds: ``sum a = inf`` and ``sum a^2 < inf``."""

    def __call__(self, n: int | torch.Tensor) -> float | torch.Tensor:
        n = _check_n(n)
        if isinstance(n, torch.Tensor):
            return self._checked(n.to(torch.int64))
        return float(self._checked(torch.tensor([n]))[0])

    def _checked(self, n: torch.Tensor) -> torch.Tensor:
        a = torch.as_tensor(self._eval(n), dtype=torch.float64).reshape(n.shape)
        bad = ~(torch.isfinite(a) & (a > 0))
        if bool(bad.any()):
            i = torch.nonzero(bad.reshape(-1))[0, 0]
            raise ValueError(f"step sizes must be finite and > 0; schedule {self!r} gives "
                             f"a({int(n.reshape(-1)[i])}) = {float(a.reshape(-1)[i])}.")
        return a

    def rates(self, steps: int) -> torch.Tensor:
        """``a(0), ..., a(steps-1)``: float64 tensor of shape ``(steps,)``."""
        steps = check_nonneg_int("steps", steps)
        return self._checked(torch.arange(steps, dtype=torch.int64))

    def tau(self, steps: int) -> torch.Tensor:
        """ODE times ``tau_0 = 0, ..., tau_steps``: float64 tensor of shape ``(steps + 1,)``."""
        a = self.rates(steps)
        tau = torch.cat([a.new_zeros(1), torch.cumsum(a, 0)])
        if bool(torch.isinf(tau[-1])):  # increasing: the last is the largest
            raise ValueError(f"the ODE time tau = sum of a(n) overflows float64 for schedule "
                             f"{self!r} over {steps} steps; use smaller step sizes.")
        return tau

    def to_dict(self) -> dict[str, Any]:
        """``{"schedule": kind, **parameters}`` (JSON-ready), inverse of
        :func:`schedule_from_dict`."""
        return {"schedule": self.kind,
                **{f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]


def _check_n0(n0: Any, alpha: float = 1.0) -> float:
    if isinstance(n0, bool) or not isinstance(n0, numbers.Real) or not math.isfinite(n0) \
            or n0 < 0:
        raise ValueError(f"`n0` must be a finite number >= 0, got {n0!r}.")
    if n0 == 0:
        raise ValueError(f"`n0` = 0 gives a(0) = a0 / 0^{alpha} = inf: `n0` must be >= 0 with "
                         "a(0) finite, i.e. n0 > 0 (n0 = 1 is the usual choice).")
    return float(n0)


@dataclass(frozen=True)
class Constant(Schedule):
    """``a(n) = a0``. Violates (A2): iterates stay only in an O(a0) neighbourhood of the ODE.

    >>> Constant(0.1).rates(3)
    tensor([0.1000, 0.1000, 0.1000], dtype=torch.float64)
    """

    a0: float
    kind: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        object.__setattr__(self, "a0", check_positive("a0", self.a0))

    def _eval(self, n: torch.Tensor) -> torch.Tensor:
        return torch.full(n.shape, self.a0, dtype=torch.float64)

    @property
    def satisfies_a2(self) -> bool:
        return False


@dataclass(frozen=True)
class Harmonic(Schedule):
    """``a(n) = a0 / (n + n0)``: satisfies (A2).

    >>> Harmonic(1.0)(1)
    0.5
    """

    a0: float
    n0: float = 1.0
    kind: ClassVar[str] = "harmonic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "a0", check_positive("a0", self.a0))
        object.__setattr__(self, "n0", _check_n0(self.n0))
        self._checked(torch.zeros(1, dtype=torch.int64))  # a(0) = a0 / n0 finite

    def _eval(self, n: torch.Tensor) -> torch.Tensor:
        return self.a0 / (n.to(torch.float64) + self.n0)

    @property
    def satisfies_a2(self) -> bool:
        return True


@dataclass(frozen=True)
class PowerLaw(Schedule):
    """``a(n) = a0 / (n + n0)^alpha``. (A2) holds iff ``1/2 < alpha <= 1``; other ``alpha > 0``
    are allowed (flagged by ``satisfies_a2 = False``).

    >>> PowerLaw(1.0, 0.5).satisfies_a2, PowerLaw(1.0, 0.75).satisfies_a2
    (False, True)
    """

    a0: float
    alpha: float
    n0: float = 1.0
    kind: ClassVar[str] = "power"

    def __post_init__(self) -> None:
        object.__setattr__(self, "a0", check_positive("a0", self.a0))
        object.__setattr__(self, "alpha", check_positive("alpha", self.alpha))
        object.__setattr__(self, "n0", _check_n0(self.n0, self.alpha))
        self._checked(torch.zeros(1, dtype=torch.int64))  # a(0) = a0 / n0^alpha finite

    def _eval(self, n: torch.Tensor) -> torch.Tensor:
        return self.a0 / (n.to(torch.float64) + self.n0) ** self.alpha

    @property
    def satisfies_a2(self) -> bool:
        return 0.5 < self.alpha <= 1.0


@dataclass(frozen=True)
class FunctionSchedule(Schedule):
    """Any callable ``fn(n) -> a(n)``. ``fn`` is first tried on a float64 tensor holding the
    step numbers (vectorised; exact for ``n < 2**53``, and evaluated in float64: an int64 tensor
    would make ``0.3 / (n + 5)`` float32); when that fails or gives the wrong shape it is called
    once per step with a Python ``int``. Values must be finite and > 0: checked where
    evaluated, the error names the step. (A2) cannot be checked, so it is declared with ``a2``
    (default False).

    >>> FunctionSchedule(lambda n: 0.5 / (n + 2), a2=True).rates(2)
    tensor([0.2500, 0.1667], dtype=torch.float64)
    """

    fn: Callable[[Any], Any]
    a2: bool = False
    kind: ClassVar[str] = "function"

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"`fn` must be a callable n -> a(n), got {type(self.fn).__name__}.")

    def _eval(self, n: torch.Tensor) -> torch.Tensor:
        try:
            a = torch.as_tensor(self.fn(n.to(torch.float64)), dtype=torch.float64)
            if a.shape == n.shape:
                return a
        except Exception:  # noqa: BLE001 - not vectorisable: fall back to a loop over steps
            pass
        values = []
        for k in n.reshape(-1).tolist():
            v = self.fn(int(k))                  # the user's own exceptions pass through
            try:
                values.append(float(v))
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"a callable `schedule` must return one step size a(n) per "
                                 f"step (a number for an int n, or a float tensor of n's shape "
                                 f"for a tensor n); got {v!r} for n = {k}.") from None
        return torch.tensor(values, dtype=torch.float64).reshape(n.shape)

    @property
    def satisfies_a2(self) -> bool:
        return bool(self.a2)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.kind, "fn": getattr(self.fn, "__qualname__", repr(self.fn)),
                "a2": bool(self.a2)}


SCHEDULES: dict[str, type[Schedule]] = {c.kind: c for c in (Constant, Harmonic, PowerLaw)}

_WARNED: set[str] = set()


def warn_if_not_a2(schedule: Schedule, stacklevel: int = 3) -> None:
    """Warn (once per distinct schedule) that ``schedule`` does not satisfy (A2)."""
    if schedule.satisfies_a2:
        return
    key = repr(schedule.to_dict())
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(f"the schedule {schedule!r} does not satisfy (A2) (sum a = inf, sum a^2 < inf): "
                  "allowed, but the iterates only track the ODE up to O(a).",
                  UserWarning, stacklevel=stacklevel)


def make_schedule(spec: Schedule | str | Callable[[Any], Any]) -> Schedule:
    """A schedule from a CLI string, or passed through.

    Strings: ``"constant:A0"``, ``"harmonic:A0[,N0]"``, ``"power:A0,ALPHA[,N0]"``. A
    :class:`Schedule` is returned as is; another callable is wrapped in
    :class:`FunctionSchedule`.

    >>> make_schedule("harmonic:0.5,10")
    Harmonic(a0=0.5, n0=10.0)
    """
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, str):
        if callable(spec):
            return FunctionSchedule(spec)
        raise TypeError(f"`schedule` must be a Schedule, a string such as 'power:0.5,0.7' or a "
                        f"callable n -> a(n), got {type(spec).__name__}.")
    kind, _, args = spec.partition(":")
    kind = kind.strip()
    if kind not in SCHEDULES:
        raise ValueError(f"`schedule` must start with one of {sorted(SCHEDULES)} "
                         f"(e.g. 'constant:0.1', 'harmonic:0.5', 'power:0.5,0.7'), got {spec!r}.")
    try:
        nums = [float(v) for v in args.split(",")] if args.strip() else []
    except ValueError:
        raise ValueError(f"`schedule` {spec!r}: the parameters after ':' must be numbers."
                         ) from None
    counts = {"constant": (1, 1), "harmonic": (1, 2), "power": (2, 3)}[kind]
    if not counts[0] <= len(nums) <= counts[1]:
        usage = {"constant": "constant:A0", "harmonic": "harmonic:A0[,N0]",
                 "power": "power:A0,ALPHA[,N0]"}[kind]
        raise ValueError(f"`schedule` {spec!r} has {len(nums)} parameters; expected {usage}.")
    return SCHEDULES[kind](*nums)


def schedule_from_dict(d: dict[str, Any]) -> Schedule:
    """Inverse of :meth:`Schedule.to_dict` (a ``FunctionSchedule`` cannot be rebuilt: its
    callable is not stored)."""
    d = dict(d)
    kind = d.pop("schedule", None)
    if kind == "function":
        raise ValueError("a FunctionSchedule cannot be rebuilt from a saved configuration "
                         f"(its callable {d.get('fn')!r} is not stored); pass the schedule again.")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r} in a saved configuration; known: "
                         f"{sorted(SCHEDULES)}")
    return SCHEDULES[kind](**d)


__all__ = ["Schedule", "Constant", "Harmonic", "PowerLaw", "FunctionSchedule", "SCHEDULES",
           "make_schedule", "schedule_from_dict", "warn_if_not_a2"]
