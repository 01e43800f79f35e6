"""Predicted vs empirical fluctuation ellipses of clipped SGD around a stable equilibrium.

The tanh regression toy (zoo "tanh", two weights), per-sample norm clipping. The stable zero
theta* of H is found by root finding; B = DH(theta*) and the exact noise covariance S give the
CLT covariance Sigma of (theta(n) - theta*)/sqrt(a(n)) (Lyapunov equation, a(n) = a0/(n+n0)),
drawn over the cloud of many chains with the empirical covariance ellipse.

    python examples/fluctuations.py   # figures/fluctuations.png, about 12 s CPU
    python examples/fluctuations.py --chains 4000 --steps 3000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import sa_clip as sc
from sa_clip.viz import add_figure_options, save_figure, styled, subplots


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--a0", type=float, default=30.0)
    ap.add_argument("--n0", type=float, default=30.0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures", help="folder for fluctuations.png")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace):
    p = sc.problems.tanh_regression()
    rule = sc.NormClip(args.lam)
    field = sc.MeanField(p, rule)
    start = torch.tensor([[1.0, 1.0]], dtype=p.dtype)
    eq = [e for e in sc.find_equilibria(field, starts=start) if e.stable][0]
    B = field.jacobian(eq.theta)
    S = sc.noise_covariance(field, eq.theta, args.batch_size)
    sigma = sc.clt_covariance(B, S, a0=args.a0).numpy()
    sched = sc.Harmonic(args.a0, args.n0)
    run = sc.simulate_sgd(p, rule, sched, steps=args.steps, chains=args.chains,
                          batch_size=args.batch_size, seed=args.seed, theta0=eq.theta,
                          record_every=args.steps)
    z = sc.trajectory_scaled_errors(run, eq.theta)
    emp = sc.empirical_covariance(z).numpy()
    stats = field.clip_stats(eq.theta)
    print(f"{p!r}, {rule}, a(n) = {args.a0}/(n+{args.n0:g}), {args.chains} chains x "
          f"{args.steps} steps")
    print(f"theta* = {eq.theta.tolist()}, eig DH = {np.round(eq.eigenvalues.real, 4).tolist()}"
          f" (need > 1/(2 a0) = {1 / (2 * args.a0):.4f}), clipped samples at theta*: "
          f"{float(stats.fraction):.0%}, switch margin {eq.switch_margin:.3f}")
    sd = np.sqrt((sigma ** 2 + np.outer(np.diag(sigma), np.diag(sigma))) / (len(z) - 1))
    print(f"{'entry':>8} {'predicted':>10} {'empirical':>10} {'sampling sd':>12}")
    for (i, j), name in zip([(0, 0), (0, 1), (1, 1)], ["S11", "S12", "S22"]):
        print(f"{name:>8} {sigma[i, j]:10.4f} {emp[i, j]:10.4f} {sd[i, j]:12.4f}")
    for k, (vp, ve) in enumerate(zip(np.linalg.eigvalsh(sigma), np.linalg.eigvalsh(emp))):
        print(f"{f'eig {k + 1}':>8} {vp:10.4f} {ve:10.4f} {'-':>12}")

    import matplotlib
    matplotlib.use("Agg")

    from sa_clip.viz.theory import plot_fluctuation_ellipses

    fig, (ax,) = subplots(1, (5.6, 5.2))
    plot_fluctuation_ellipses(z, sigma, emp, ax=ax, names=("w1", "w2"),
                              title=f"CLT fluctuations, tanh toy, λ = {args.lam:g}, "
                                    f"n = {args.steps}")
    path = save_figure(fig, args.out, "fluctuations.png", dpi=args.dpi)
    print(f"wrote {path}")
    return {"predicted": sigma, "empirical": emp, "errors": z, "figure": path}


if __name__ == "__main__":
    main()
