"""Exploding gradients: unclipped SGD blows up, clipped SGD stays stable.

The zoo's quartic double well (loss (theta^2 - x_i)^2 / 4, gradient growing like theta^3):
with a constant step a, plain SGD started at |theta| > sqrt(2/a + 1) explodes in a few steps;
norm clipping bounds every step by a * lam and the chains settle in a well. Chains start spread
over [-R, R]. Blow-ups are recorded by simulate_sgd (not raised) and marked with crosses.

    python examples/exploding.py   # figures/exploding.png, about 8 s CPU
"""

from __future__ import annotations

import argparse
import warnings

import torch

import sa_clip as sc
from sa_clip.viz import add_figure_options, describe_rule, plot_norms, save_figure, styled, subplots


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a0", type=float, default=0.2, help="constant step size")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--radius", type=float, default=4.0, help="starts spread over [-R, R]")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> dict[str, int]:
    problem = sc.problems.quartic()
    starts = torch.linspace(-args.radius, args.radius, args.chains, dtype=problem.dtype)
    fig, axes = subplots(2, (10, 3.8), sharey=True)
    blowups = {}
    for ax, rule, color in zip(axes, (sc.NoClip(), sc.NormClip(args.lam)),
                               ("#d6604d", "#2166ac")):
        with warnings.catch_warnings():     # a constant step violates (A2): on purpose
            warnings.simplefilter("ignore", UserWarning)
            run = sc.simulate_sgd(problem, rule, sc.Constant(args.a0), steps=args.steps,
                                  chains=args.chains, theta0=starts[:, None], seed=args.seed,
                                  blowup_radius=1e6)
        plot_norms(run, ax, label="SGD chains", color=color)
        ax.set_title(f"{describe_rule(rule)}:\n{int(run.blown_up.sum())} of {run.chains} chains "
                     "blew up", fontsize="medium")
        blowups[rule.name] = int(run.blown_up.sum())
        print(f"{rule}: {blowups[rule.name]} of {run.chains} chains blew up")
    fig.suptitle(f"quartic double well, constant step a = {args.a0:g}, starts in "
                 f"[-{args.radius:g}, {args.radius:g}]")
    path = save_figure(fig, args.out, "exploding.png", dpi=args.dpi)
    print(f"wrote {path}")
    return blowups


if __name__ == "__main__":
    main()
