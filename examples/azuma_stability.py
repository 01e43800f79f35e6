"""Stability bounds checked: empirical exceedance vs both Azuma bounds, blow-up vs lam.

Left: two data points {-3, 3}, classic clipping lam = 1. On [-2, 2] the mean field is zero and
every clipped update is +-1, so theta is a Rademacher walk with increments exactly +-a(t) lam:
the extreme case for Hoeffding-Azuma. The standard bound 2 exp(-m^2 / (2 gamma lam^2)) holds;
the paper's (15), 2 exp(-2 m^2 / (gamma lam^2)), is below the observed frequency.
Right: adaptive clipping (Claim 2 only bounds ||u|| by lam ||theta||) on a 1-D linear
regression with log-normal inputs blows up more often as lam grows; classic clipping never.

    python examples/azuma_stability.py   # figures/azuma_stability.png, about 10 s CPU
    python examples/azuma_stability.py --chains 8000 --out figures
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

import sa_clip as sc
from sa_clip.viz import add_figure_options, save_figure, styled, subplots


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--a0", type=float, default=0.5, help="a(n) = a0/(n+1) for the walk")
    ap.add_argument("--blowup-chains", type=int, default=200)
    ap.add_argument("--blowup-steps", type=int, default=100)
    ap.add_argument("--lams", type=float, nargs="+", default=[1, 4, 8, 16, 64])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures", help="folder for azuma_stability.png")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace):
    p = sc.problems.location_problem([-3.0, 3.0])
    sched = sc.Harmonic(args.a0)
    run = sc.simulate_sgd(p, sc.NormClip(1.0), sched, steps=args.steps, chains=args.chains,
                          seed=args.seed, record_every=args.steps)
    gamma = float((sched.rates(args.steps) ** 2).sum())
    radii = np.linspace(0.1, 1.9, 19)
    freq = np.array([float(sc.exceedance_frequency(run.theta, m)[-1]) for m in radii])
    bounds = {form: np.array([sc.azuma_log_bound(m, 1.0, gamma, form) for m in radii])
              for form in ("paper", "standard")}
    print(f"Rademacher walk: {args.chains} chains, {args.steps} steps, a(n) = {args.a0}/(n+1), "
          f"gamma = sum a^2 = {gamma:.4f}, lam = 1")
    print(f"{'m':>5} {'empirical':>10} {'paper (15)':>11} {'standard':>9}  paper valid?")
    for m, f, lp, ls in zip(radii, freq, bounds["paper"], bounds["standard"]):
        print(f"{m:5.2f} {f:10.4f} {min(math.exp(lp), 1):11.3g} {min(math.exp(ls), 1):9.3g}  "
              f"{'yes' if f <= math.exp(lp) else 'NO'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # a constant step violates (A2)
        prob = sc.problems.linear1d()
        kw = dict(steps=args.blowup_steps, chains=args.blowup_chains, seed=args.seed)
        ada = sc.blowup_frequency(prob, sc.AdaptiveClip, args.lams, sc.Constant(0.5), **kw)
        nrm = sc.blowup_frequency(prob, sc.NormClip, args.lams, sc.Constant(0.5), **kw)
    print(f"\nblow-up frequency, linear1d, a = 0.5, {args.blowup_chains} chains x "
          f"{args.blowup_steps} steps")
    print(f"{'lam':>6} {'adaptive':>9} {'classic':>8} {'median step':>12}")
    for lam, fa, fn, ms in zip(args.lams, ada.frequency.tolist(), nrm.frequency.tolist(),
                               ada.median_step.tolist()):
        print(f"{lam:6g} {fa:9.3f} {fn:8.3f} {ms:12.0f}" if not math.isnan(ms) else
              f"{lam:6g} {fa:9.3f} {fn:8.3f} {'-':>12}")

    import matplotlib
    matplotlib.use("Agg")

    from sa_clip.viz.theory import plot_azuma, plot_blowup

    fig, (a1, a2) = subplots(2, (11, 4.3))
    plot_azuma(radii, freq, {"paper (15): 2exp(-2m²/γλ²)": bounds["paper"],
                             "standard: 2exp(-m²/2γλ²)": bounds["standard"]}, ax=a1,
               chains=args.chains, title="Rademacher walk (λ = 1): exceedance at the last step")
    plot_blowup(args.lams, {"adaptive clipping (17)": ada.frequency,
                            "classic clipping (11)": nrm.frequency}, ax=a2,
                chains=args.blowup_chains, title="blow-up frequency, linear1d, a = 0.5")
    path = save_figure(fig, args.out, "azuma_stability.png", dpi=args.dpi)
    print(f"wrote {path}")
    return {"radii": radii, "frequency": freq, "bounds": bounds, "adaptive": ada,
            "classic": nrm, "figure": path}


if __name__ == "__main__":
    main()
