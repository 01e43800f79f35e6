"""sa_clip: clipped SGD as stochastic approximation of the ODE ``d theta/d tau = -H(theta)``.

Public names are re-exported here; see ``SPEC.md`` for the mathematics.
"""

from . import distributed, io, problems
from .batchfield import batch_mean_field
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
from .equilibria import ClippingBias, Equilibrium, clipping_bias, find_equilibria
from .experiment import Experiment, RuleReport, run_experiment
from .fluctuations import (
    clt_covariance,
    empirical_covariance,
    noise_covariance,
    scaled_errors,
    trajectory_scaled_errors,
)
from .meanfield import ClipStats, MeanField
from .ode import OdeSolution, solve_ode
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
from .sgd import simulate_sgd
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

__version__ = "0.1.0"

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
    "batch_mean_field", "tracking_distance", "TrackingResult", "io",
]
__all__ += ["run_experiment", "Experiment", "RuleReport"]
