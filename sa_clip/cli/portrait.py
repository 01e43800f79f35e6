"""sa-clip portrait: the phase portrait of a 2-parameter problem."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .options import CliError, add_common_options
from .output import OutputFolder

HELP = "phase portrait of a 2-parameter problem"
DESCRIPTION = ("Streamlines of -H on the parameter plane of a 2-parameter problem, equilibria "
               "by stability, ODE curves and SGD chains; writes portrait.png (and portrait.gif "
               "with --gif).")
DEFAULTS: dict[str, Any] = dict(
    problem="tanh", rule="norm", lam=1.0, eps=1e-3, schedule="harmonic:1.0", steps=400,
    chains=32, batch_size=1, clip_per="sample", seed=0, record_every=2, out="figures/portrait",
    extent=3.0, grid=41, ode_starts=8, ode_time=8.0, n_starts=12, frames=60)
QUICK: dict[str, Any] = dict(steps=60, chains=8, grid=15, ode_starts=4, n_starts=4, frames=10)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p, DEFAULTS, QUICK)
    p.add_argument("--extent", type=float, help="half-width of the square drawn (default 3)")
    p.add_argument("--grid", type=int, help="grid points per side (default 41)")
    p.add_argument("--ode-starts", type=int, help="ODE curves from a circle (default 8)")
    p.add_argument("--ode-time", type=float, help="ODE time of those curves (default 8)")
    p.add_argument("--n-starts", type=int, help="root-finding starts for equilibria (12)")
    p.add_argument("--gif", action="store_true", default=None,
                   help="also write an animation of the chains, portrait.gif")
    p.add_argument("--frames", type=int, help="frames of the animation (default 60)")


def main(args: argparse.Namespace) -> int:
    """Phase portrait of a 2-parameter problem with equilibria, ODE curves and SGD chains."""
    import torch

    from ..equilibria import find_equilibria
    from ..ode import solve_ode
    from ..plane import Plane, field_on_plane
    from ..viz import animate_chains, plot_phase_portrait
    from .builders import build_problem, build_rule, make_field, rule_names, run_chains

    problem = build_problem(args)
    if problem.P != 2:
        raise CliError(f"`--problem` {args.problem!r} has P = {problem.P} parameters; the "
                       "portrait needs a 2-parameter problem (tanh, logistic2d).")
    rule = build_rule(rule_names(args.rule)[0], args)
    with OutputFolder(args.out, "portrait").open() as folder:
        field = make_field(problem, rule)
        r = args.extent
        pf = field_on_plane(field, Plane.coordinates(problem), (-r, r), (-r, r), n=args.grid)
        eq = find_equilibria(field, n_starts=args.n_starts, scale=r / 2, seed=args.seed)
        run = run_chains(problem, rule, args, field=field)
        angles = torch.linspace(0, 2 * math.pi, args.ode_starts + 1, dtype=torch.float64)[:-1]
        starts = 0.9 * r * torch.stack([angles.cos(), angles.sin()], 1).to(problem.dtype)
        sol = solve_ode(field, starts, torch.linspace(0, args.ode_time, 200,
                                                      dtype=torch.float64))
        ax = plot_phase_portrait(pf, equilibria=eq, ode_paths=sol.theta, chains=run.theta,
                                 title=f"{problem.name}: −H for {rule}")
        print(f"wrote {folder.save_figure(ax.figure, 'portrait.png')}")
        if args.gif:
            ode_run = solve_ode(field, problem.theta0, run.tau)
            anim = animate_chains(pf, run, ode=ode_run, equilibria=eq, frames=args.frames)
            print(f"wrote {folder.save_animation(anim, 'portrait.gif')}")
    return 0
