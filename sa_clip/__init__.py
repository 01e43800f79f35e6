"""sa_clip: clipped SGD as stochastic approximation of the ODE ``d theta/d tau = -H(theta)``.

Public names are re-exported here; see ``SPEC.md`` for the mathematics.
"""

from . import distributed, problems
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
from .fluctuations import clt_covariance, empirical_covariance, noise_covariance, scaled_errors
from .meanfield import ClipStats, MeanField
from .problem import Block, Layout, Problem
from .stability import azuma_log_bound, claim2_ratio, exceedance_frequency
from .streamed import ArrayData, ChunkedData, DataSource, NpyData, StreamedProblem

__version__ = "0.1.0"

__all__ = [
    "Problem", "Block", "Layout",
    "ClipRule", "NoClip", "NormClip", "AdaptiveClip", "LayerwiseAdaptiveClip", "UnitwiseAGC",
    "ValueClip", "RULES", "make_rule",
    "MeanField", "ClipStats", "problems",
    "find_equilibria", "Equilibrium", "clipping_bias", "ClippingBias",
    "noise_covariance", "clt_covariance", "scaled_errors", "empirical_covariance",
    "azuma_log_bound", "exceedance_frequency", "claim2_ratio",
    "StreamedProblem", "DataSource", "ArrayData", "NpyData", "ChunkedData", "distributed",
]
