"""Clipped SGD tracks its ODE: the tracking distance D_T(s) shrinks as the steps decrease.

Logistic regression (convex) on a real data set bundled with scikit-learn, norm clipping,
step sizes a(n) = a0 / (n + 1)^alpha, many chains. For start times s spread over the run it
solves the ODE d theta/d tau = -H(theta) from every chain's interpolated position (one batched
solve) and prints the median over chains of D_T(s) = sup_{h <= T} ||theta_bar(s+h) - Phi_h||.

    python examples/tracking.py   # figures/tracking.png, about 12 s CPU
    python examples/tracking.py --chains 64 --steps 2000 --out figures
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import sa_clip as sc
from sa_clip.viz import add_figure_options, describe_rule, plot_tracking, save_figure, styled


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="wine", choices=["wine", "breast_cancer", "iris"])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lam", type=float, default=1.0, help="norm-clipping threshold")
    ap.add_argument("--a0", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--horizon", type=float, default=1.0, help="T, in ODE time")
    ap.add_argument("--starts", type=int, default=6, help="number of start times s")
    ap.add_argument("--record-every", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures", help="folder for tracking.png")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> sc.TrackingResult:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> sc.TrackingResult:
    problem = sc.problems.logistic_regression(args.dataset)
    rule = sc.NormClip(args.lam)
    schedule = sc.PowerLaw(args.a0, args.alpha)
    t0 = time.perf_counter()
    run = sc.simulate_sgd(problem, rule, schedule, steps=args.steps, chains=args.chains,
                          batch_size=args.batch_size, seed=args.seed,
                          record_every=args.record_every)
    t1 = time.perf_counter()
    last = float(run.tau[-1])
    # start times spread evenly on a log scale (the figure's s axis is logarithmic)
    hi = last - args.horizon
    starts = torch.logspace(math.log10(min(0.1, hi / 10)), math.log10(hi), args.starts,
                            dtype=torch.float64)
    res = sc.tracking_distance(run, sc.MeanField(problem, rule), horizon=args.horizon,
                               starts=starts)
    t2 = time.perf_counter()
    print(f"{problem!r}, rule {rule}, schedule {schedule}")
    print(f"{args.chains} chains x {args.steps} steps in {t1 - t0:.1f} s (tau_last = {last:.2f});"
          f" tracking ({args.chains * args.starts} ODE starts, one solve, {res.nfev} "
          f"field evaluations) in {t2 - t1:.1f} s")
    print(f"{'start s':>10} {'median D_T(s)':>14} {'90% quantile':>13}")
    q90 = res.quantile(0.9)
    for s, m, q in zip(res.start.tolist(), res.median.tolist(), q90.tolist()):
        print(f"{s:10.3f} {m:14.5f} {q:13.5f}")
    ratio = float(res.median[0] / res.median[-1])
    print(f"median D_T falls {ratio:.1f}x from the first start to the last")
    ax = plot_tracking(res)
    ax.set_title(f"{problem.name}, {describe_rule(rule)}",
                 fontsize="medium")
    fig = ax.figure
    print(f"wrote {save_figure(fig, args.out, 'tracking.png', dpi=args.dpi)}")
    return res


if __name__ == "__main__":
    main()
