"""sa_clip: clipped SGD as stochastic approximation of the ODE ``d theta/d tau = -H(theta)``.

Public names are re-exported here; see ``SPEC.md`` for the mathematics.
"""

from . import problems
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
from .tracking import TrackingResult, tracking_distance
from .trajectory import Trajectory

__version__ = "0.1.0"

__all__ = [
    "Problem", "Block", "Layout",
    "ClipRule", "NoClip", "NormClip", "AdaptiveClip", "LayerwiseAdaptiveClip", "UnitwiseAGC",
    "ValueClip", "RULES", "make_rule",
    "MeanField", "ClipStats", "problems",
    "Schedule", "Constant", "Harmonic", "PowerLaw", "FunctionSchedule", "make_schedule",
    "schedule_from_dict", "solve_ode", "OdeSolution", "simulate_sgd", "Trajectory",
    "batch_mean_field", "tracking_distance", "TrackingResult",
]
