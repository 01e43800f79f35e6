"""sa_clip: clipped SGD as stochastic approximation of the ODE ``d theta/d tau = -H(theta)``.

Public names are re-exported here; see ``docs/theory.md`` for the mathematics.

``sa_clip.viz`` (matplotlib figures) is loaded on first use, ``sc.viz.plot_phase_portrait(...)``
after ``import sa_clip as sc``, so that code using only the engines never imports matplotlib.
"""

from . import distributed, io, problems
from ._version import __version__ as __version__
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

_LAZY_MODULES = ("viz",)    # imported on first attribute access (matplotlib stays unloaded)


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'sa_clip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES))
