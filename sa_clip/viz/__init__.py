"""Matplotlib figures from results. Functions take an ``ax`` (or make a figure), return it,
compute nothing that the engines compute, and never save: callers decide where files go."""

from .phase import plot_phase_portrait
from .theory import plot_azuma, plot_basins, plot_blowup, plot_fluctuation_ellipses

__all__ = ["plot_phase_portrait", "plot_fluctuation_ellipses", "plot_azuma", "plot_blowup",
           "plot_basins"]
