"""Matplotlib figures from results. Functions take an ``ax`` (or make a figure), return it,
compute nothing that the engines compute, and never save: callers decide where files go.
Every figure function takes ``dpi`` and ``style`` (``"paper"``: a journal column, vector
friendly; ``"talk"``: large text, at most two panels across); see :mod:`sa_clip.viz._style`."""

from ._save import save_animation, save_figure
from ._style import STYLES, add_figure_options, figsize_for, styled, subplots
from .animation import animate_chains
from .dynamics import (
    ODE_VS_SGD_CAPTION,
    noise_figure,
    ode_vs_sgd_figure,
    plot_batch_mean_field,
    plot_clip_fraction,
    plot_ensemble,
    plot_norms,
    plot_ode_vs_sgd,
    plot_tracking,
)
from .names import describe_rule
from .phase import plot_phase_portrait
from .shadowing import plot_shadowing, step_size_at
from .theory import plot_azuma, plot_basins, plot_blowup, plot_fluctuation_ellipses

__all__ = ["plot_phase_portrait", "plot_ensemble", "plot_ode_vs_sgd", "ode_vs_sgd_figure",
           "plot_tracking", "plot_clip_fraction", "noise_figure", "plot_norms",
           "plot_batch_mean_field", "animate_chains", "plot_fluctuation_ellipses", "plot_azuma",
           "plot_blowup", "plot_basins",
           "plot_shadowing", "step_size_at", "save_figure", "save_animation", "describe_rule",
           "ODE_VS_SGD_CAPTION", "STYLES", "styled", "subplots", "figsize_for",
           "add_figure_options"]
