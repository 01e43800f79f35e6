"""Phase portrait of a 2-parameter toy: the field -H, its equilibria, ODE curves, SGD chains.

The toy fits y = w2 tanh(w1 x) (two minima, a saddle at the origin). The portrait draws the
streamlines of d theta/d tau = -H(theta) coloured by speed, loss contours, nullclines, the
equilibria found by root finding (marked by stability), ODE solutions from a ring of starts, and
clipped-SGD chains started at theta0.

    python examples/phase_portrait.py   # figures/phase_portrait.png, about 14 s CPU
    python examples/phase_portrait.py --rule adaptive --lam 0.5 --chains 64
"""

from __future__ import annotations

import argparse
import math

import torch

import sa_clip as sc
from sa_clip.plane import Plane, field_on_plane
from sa_clip.viz import add_figure_options, describe_rule, plot_phase_portrait, save_figure, styled


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", default="tanh", choices=["tanh", "logistic2d"])
    ap.add_argument("--rule", default="norm", choices=["none", "norm", "adaptive"])
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--schedule", default="harmonic:1.0")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--chains", type=int, default=24)
    ap.add_argument("--grid", type=int, default=41, help="grid points per side")
    ap.add_argument("--extent", type=float, default=3.0)
    ap.add_argument("--n-starts", type=int, default=12,
                    help="root-finding starts for the equilibria")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> str:
    problem = sc.problems.make_problem(args.problem)
    rule = sc.make_rule(args.rule, lam=None if args.rule == "none" else args.lam)
    field = sc.MeanField(problem, rule)
    r = args.extent
    pf = field_on_plane(field, Plane.coordinates(problem), (-r, r), (-r, r), n=args.grid)
    eq = sc.find_equilibria(field, n_starts=args.n_starts, scale=r / 2, seed=args.seed)
    run = sc.simulate_sgd(problem, rule, args.schedule, steps=args.steps, chains=args.chains,
                          seed=args.seed, record_every=2)
    ang = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)[:-1]
    starts = 0.9 * r * torch.stack([ang.cos(), ang.sin()], 1)
    sol = sc.solve_ode(field, starts, torch.linspace(0, 8.0, 200, dtype=torch.float64))
    ax = plot_phase_portrait(pf, equilibria=eq, ode_paths=sol.theta, chains=run.theta,
                             title=f"{problem.name}: −H for {describe_rule(rule)}")
    path = save_figure(ax.figure, args.out, "phase_portrait.png", dpi=args.dpi)
    for e in eq:
        print(f"equilibrium {[round(v, 4) for v in e.theta.tolist()]}: {e.kind} {e.shape}")
    print(f"wrote {path}")
    return str(path)


if __name__ == "__main__":
    main()
