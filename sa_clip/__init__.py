"""sa_clip: clipped SGD as stochastic approximation of the ODE ``d theta/d tau = -H(theta)``.

Public names are re-exported here; see ``docs/theory.md`` for the mathematics.

Each name is loaded on first use: ``sc.MeanField`` imports torch then, and
``sc.viz.plot_phase_portrait(...)`` matplotlib, so code using only the engines never imports
matplotlib and the ``sa-clip`` command answers ``--help`` before torch loads.
"""

import sys
import types
from typing import TYPE_CHECKING

from ._version import __version__ as __version__

# Every public name is imported on first use (PEP 562 ``__getattr__`` below), so that
# ``import sa_clip`` costs milliseconds and ``sa-clip --help`` or a bad argument answers
# before torch loads. ``import sa_clip as sc; sc.MeanField`` imports sa_clip.meanfield (and
# torch) at that moment. The imports below are what static tools (type checkers, the API
# reference) read; ``_EXPORTS`` is what runs, and tests/test_cli_light.py checks they agree.
if TYPE_CHECKING:
    from . import distributed, io, problems
    from .batchfield import FixedBatchField, batch_mean_field
    from .clipping import (
        RULES,
        AdaptiveClip,
        ClipRule,
        LayerwiseAdaptiveClip,
        NoClip,
        NormClip,
        UnitwiseAGC,
        ValueClip,
        make_rule,
    )
    from .equilibria import ClippingBias, Equilibria, Equilibrium, clipping_bias, find_equilibria
    from .experiment import Experiment, RuleReport, run_experiment
    from .fluctuations import (
        clt_covariance,
        empirical_covariance,
        noise_covariance,
        scaled_errors,
        trajectory_scaled_errors,
    )
    from .linear_noise import LinearNoiseResult, linear_noise
    from .meanfield import ClipStats, MeanField, ModelNotSupportedError, NonFiniteThetaError
    from .ode import OdeSolution, solve_ode
    from .plane import Plane, PlaneField, field_on_plane
    from .problem import Block, Layout, Problem
    from .schedules import (
        Constant,
        FunctionSchedule,
        Harmonic,
        PowerLaw,
        Schedule,
        make_schedule,
        schedule_from_dict,
    )
    from .sgd import ChainState, StepInfo, make_generator, sgd_init, sgd_step, simulate_sgd
    from .sources import TensorData
    from .stability import (
        BlowupResult,
        azuma_log_bound,
        blowup_frequency,
        claim2_ratio,
        exceedance_frequency,
        update_directions,
    )
    from .streamed import ArrayData, ChunkedData, DataSource, NpyData, StreamedProblem
    from .tracking import TrackingResult, tracking_distance
    from .trajectory import Trajectory

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "FixedBatchField": ".batchfield", "batch_mean_field": ".batchfield",
    "RULES": ".clipping", "AdaptiveClip": ".clipping", "ClipRule": ".clipping",
    "LayerwiseAdaptiveClip": ".clipping", "NoClip": ".clipping", "NormClip": ".clipping",
    "UnitwiseAGC": ".clipping", "ValueClip": ".clipping", "make_rule": ".clipping",
    "ClippingBias": ".equilibria", "Equilibria": ".equilibria", "Equilibrium": ".equilibria",
    "clipping_bias": ".equilibria", "find_equilibria": ".equilibria",
    "Experiment": ".experiment", "RuleReport": ".experiment", "run_experiment": ".experiment",
    "clt_covariance": ".fluctuations", "empirical_covariance": ".fluctuations",
    "noise_covariance": ".fluctuations", "scaled_errors": ".fluctuations",
    "trajectory_scaled_errors": ".fluctuations",
    "LinearNoiseResult": ".linear_noise", "linear_noise": ".linear_noise",
    "ClipStats": ".meanfield", "MeanField": ".meanfield", "NonFiniteThetaError": ".meanfield",
    "ModelNotSupportedError": ".meanfield",
    "OdeSolution": ".ode", "solve_ode": ".ode",
    "Plane": ".plane", "PlaneField": ".plane", "field_on_plane": ".plane",
    "Block": ".problem", "Layout": ".problem", "Problem": ".problem",
    "Constant": ".schedules", "FunctionSchedule": ".schedules", "Harmonic": ".schedules",
    "PowerLaw": ".schedules", "Schedule": ".schedules", "make_schedule": ".schedules",
    "schedule_from_dict": ".schedules",
    "ChainState": ".sgd", "StepInfo": ".sgd", "make_generator": ".sgd", "sgd_init": ".sgd",
    "sgd_step": ".sgd", "simulate_sgd": ".sgd",
    "TensorData": ".sources",
    "BlowupResult": ".stability", "azuma_log_bound": ".stability",
    "blowup_frequency": ".stability", "claim2_ratio": ".stability",
    "exceedance_frequency": ".stability", "update_directions": ".stability",
    "ArrayData": ".streamed", "ChunkedData": ".streamed", "DataSource": ".streamed",
    "NpyData": ".streamed", "StreamedProblem": ".streamed",
    "TrackingResult": ".tracking", "tracking_distance": ".tracking",
    "Trajectory": ".trajectory",
}
#: submodules that are attributes of the package (``sc.problems``, ``sc.viz``)
_SUBMODULES = ("distributed", "io", "problems", "viz")

__all__ = [
    "Problem", "Block", "Layout",
    "ClipRule", "NoClip", "NormClip", "AdaptiveClip", "LayerwiseAdaptiveClip", "UnitwiseAGC",
    "ValueClip", "RULES", "make_rule",
    "MeanField", "ClipStats", "problems",
    "find_equilibria", "Equilibrium", "clipping_bias", "ClippingBias",
    "noise_covariance", "clt_covariance", "scaled_errors", "empirical_covariance",
    "trajectory_scaled_errors",
    "azuma_log_bound", "exceedance_frequency", "claim2_ratio", "update_directions",
    "blowup_frequency", "BlowupResult",
    "StreamedProblem", "DataSource", "ArrayData", "NpyData", "ChunkedData", "distributed",
    "Schedule", "Constant", "Harmonic", "PowerLaw", "FunctionSchedule", "make_schedule",
    "schedule_from_dict", "solve_ode", "OdeSolution", "simulate_sgd", "Trajectory",
    "batch_mean_field", "FixedBatchField", "tracking_distance", "TrackingResult", "io",
    "Plane", "PlaneField", "field_on_plane", "TensorData",
    "linear_noise", "LinearNoiseResult", "Equilibria", "NonFiniteThetaError",
    "ModelNotSupportedError",
    "ChainState", "StepInfo", "make_generator", "sgd_init", "sgd_step",
    "run_experiment", "Experiment", "RuleReport",
]

def __getattr__(name: str):
    import importlib
    import importlib.util

    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBMODULES or (not name.startswith("__") and importlib.util.find_spec(
            f"{__name__}.{name}") is not None):        # any submodule, as when all were loaded
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'sa_clip' has no attribute {name!r}")
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The package's module type: a submodule named like the function it exports
    (``sa_clip.linear_noise``) must not replace that function when the import system binds
    the loaded submodule to the package, as ``from .linear_noise import linear_noise`` here
    would have rebound it."""

    def __setattr__(self, name: str, value: object) -> None:
        if (name in _EXPORTS and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
