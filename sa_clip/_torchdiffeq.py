"""The one place that touches torchdiffeq's private module ``torchdiffeq._impl``.

:func:`sa_clip.solve_ode` needs what the public API does not give: the names of the
solvers (to validate ``solver=`` before integrating) and whether a solver is adaptive (its
steps can land on an output time with the ``step_t`` option; it reports accepted steps to
``callback_accept_step``) or steps on a fixed grid (``callback_step``). All come from
``torchdiffeq._impl``; if a future torchdiffeq moves it, only this module
changes (``tests/test_ode.py`` checks it against the solvers torchdiffeq runs).
"""

from __future__ import annotations

try:   # private: keep every use behind the two functions below
    from torchdiffeq._impl.odeint import SOLVERS as _SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver as _Adaptive
    from torchdiffeq._impl.solvers import FixedGridODESolver as _Fixed
except ImportError:  # pragma: no cover - a torchdiffeq that reorganised its internals
    _SOLVERS, _Adaptive, _Fixed = None, None, None

#: Used when the private table is not there (torchdiffeq 0.2.x names).
_FALLBACK_ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
_FALLBACK_FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                   "implicit_adams", "fixed_adams", "scipy_solver")


def solver_names() -> list[str]:
    """Every solver name ``torchdiffeq.odeint(method=...)`` accepts, sorted."""
    if _SOLVERS is not None:
        return sorted(_SOLVERS)
    return sorted(_FALLBACK_ADAPTIVE + _FALLBACK_FIXED)  # pragma: no cover


def is_adaptive_rk(name: str) -> bool:
    """Whether solver ``name`` is an adaptive Runge-Kutta method (accepts ``step_t``)."""
    if _SOLVERS is not None and _Adaptive is not None:
        return issubclass(_SOLVERS[name], _Adaptive)
    return name in _FALLBACK_ADAPTIVE  # pragma: no cover


def is_fixed_grid(name: str) -> bool:
    """Whether solver ``name`` steps on a fixed grid (calls ``callback_step`` each step)."""
    if _SOLVERS is not None and _Fixed is not None:
        return issubclass(_SOLVERS[name], _Fixed)
    return name in _FALLBACK_FIXED[:-1]  # pragma: no cover


__all__ = ["solver_names", "is_adaptive_rk", "is_fixed_grid"]
