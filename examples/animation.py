"""A cloud of clipped-SGD chains flowing along the field -H of a 2-parameter toy (a GIF).

    python examples/animation.py   # figures/animation.gif, about 30 s CPU
    python examples/animation.py --out movies --format mp4   # needs ffmpeg
"""

from __future__ import annotations

import argparse
import os

import torch

import sa_clip as sc
from sa_clip.plane import Plane, field_on_plane
from sa_clip.viz import add_figure_options, animate_chains, describe_rule, save_animation, styled


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--schedule", default="harmonic:1.0")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--chains", type=int, default=48)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--grid", type=int, default=25)
    ap.add_argument("--n-starts", type=int, default=8,
                    help="root-finding starts for the equilibria")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", default="gif", choices=["gif", "mp4"])
    ap.add_argument("--out", default="figures")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> str:
    problem = sc.problems.tanh_regression()
    rule = sc.NormClip(args.lam)
    field = sc.MeanField(problem, rule)
    pf = field_on_plane(field, Plane.coordinates(problem), (-3, 3), (-3, 3), n=args.grid)
    eq = sc.find_equilibria(field, n_starts=args.n_starts, scale=1.5, seed=args.seed)
    # chains start in a small disc around theta0 so the cloud visibly spreads and splits
    gen = torch.Generator().manual_seed(args.seed)
    theta0 = problem.theta0 + 0.3 * torch.randn(args.chains, 2, generator=gen,
                                                dtype=problem.dtype)
    run = sc.simulate_sgd(problem, rule, args.schedule, steps=args.steps, chains=args.chains,
                          theta0=theta0, seed=args.seed)
    sol = sc.solve_ode(field, problem.theta0, run.tau)
    anim = animate_chains(pf, run, ode=sol, equilibria=eq, frames=args.frames,
                          title=f"{problem.name}: {args.chains} chains, {describe_rule(rule)}")
    path = save_animation(anim, os.path.join(args.out, f"animation.{args.format}"), dpi=args.dpi)
    print(f"wrote {path}")
    return str(path)


if __name__ == "__main__":
    main()
