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
from .meanfield import ClipStats, MeanField
from .problem import Block, Layout, Problem
from .streamed import ArrayData, ChunkedData, DataSource, NpyData, StreamedProblem

__version__ = "0.1.0"

__all__ = [
    "Problem", "Block", "Layout",
    "ClipRule", "NoClip", "NormClip", "AdaptiveClip", "LayerwiseAdaptiveClip", "UnitwiseAGC",
    "ValueClip", "RULES", "make_rule",
    "MeanField", "ClipStats", "problems",
    "StreamedProblem", "DataSource", "ArrayData", "NpyData", "ChunkedData", "distributed",
]
