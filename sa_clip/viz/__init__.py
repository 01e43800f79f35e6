"""Matplotlib figures from results. Functions take an ``ax`` (or make a figure), return it,
compute nothing that the engines compute, and never save: callers decide where files go."""

from .phase import plot_phase_portrait

__all__ = ["plot_phase_portrait"]
