"""The shadowing picture: clipped SGD is an asymptotic pseudotrajectory of d theta/d tau = -H.

One chain's interpolated path with the ODE restarted on it at several times, the gap against
the time since the restart, and D_T(s) against s with the sqrt(a(n(s))) rate theory predicts.
All three panels come from ONE sa_clip.tracking_distance call (keep_paths keeps one chain's
flow segments). Default: the 2-parameter tanh toy (the parameter plane); ``--problem wine``
draws the paper's sigmoid network on its PCA plane.

    python examples/shadowing.py                     # figures/shadowing.png, ~10 s
    python examples/shadowing.py --problem wine      # figures/shadowing_wine.png
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib
import torch

import sa_clip as sc
from sa_clip.viz import add_figure_options, plot_shadowing, styled


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", default="tanh", choices=["tanh", "logistic2d", "wine"])
    ap.add_argument("--lam", type=float, default=1.0, help="norm-clipping threshold")
    ap.add_argument("--schedule", default="power:0.5,0.6")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--chains", type=int, default=32)
    ap.add_argument("--record-every", type=int, default=4)
    ap.add_argument("--horizon", type=float, default=1.0, help="T")
    ap.add_argument("--starts", type=int, default=14)
    ap.add_argument("--chain", type=int, default=0, help="the chain drawn in panel (a)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures")
    add_figure_options(ap)
    return ap.parse_args(argv)


def describe(schedule) -> str:
    """``a(n) = 0.5 / (n + 1)^0.6`` for a power law, the schedule's repr otherwise."""
    if isinstance(schedule, sc.PowerLaw):
        return f"a(n) = {schedule.a0:g} / (n + {schedule.n0:g})^{schedule.alpha:g}"
    return repr(schedule)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> str:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.problem == "wine":
        problem = sc.problems.real_problem("wine", hidden=(16,))
    else:
        problem = sc.problems.make_problem(args.problem)
    rule = sc.NormClip(args.lam)
    t0 = time.perf_counter()
    run = sc.simulate_sgd(problem, rule, args.schedule, steps=args.steps, chains=args.chains,
                          seed=args.seed, record_every=args.record_every)
    last = float(run.tau[-1])
    horizon = min(args.horizon, 0.5 * last)
    # start times evenly spread on a log scale (the rate is a power of s), from tau = 0.1
    starts = torch.logspace(-1, torch.log10(torch.tensor(last - horizon)).item(), args.starts,
                            dtype=torch.float64)
    res = sc.tracking_distance(run, sc.MeanField(problem, rule), horizon=horizon,
                               starts=starts, keep_paths=[args.chain])
    fig = plot_shadowing(run, res, chain=args.chain, problem=problem,
                         context=f"Shadowing on {problem.name}, norm clipping λ = {args.lam:g}, "
                                 f"steps {describe(sc.make_schedule(args.schedule))}")
    os.makedirs(args.out, exist_ok=True)
    name = "shadowing.png" if args.problem == "tanh" else f"shadowing_{args.problem}.png"
    path = os.path.join(args.out, name)
    fig.savefig(path, dpi=args.dpi)
    plt.close(fig)
    med = res.median
    print(f"{problem!r}: D_T median {float(med[0]):.3g} at s = {float(res.start[0]):.3g} -> "
          f"{float(med[-1]):.3g} at s = {float(res.start[-1]):.3g} ({res.nfev} evaluations, "
          f"{time.perf_counter() - t0:.0f} s)")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
