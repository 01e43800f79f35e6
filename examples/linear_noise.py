"""Predicted spread of clipped-SGD chains around the ODE (linear-noise approximation) against
the chains' own spread: a case where the prediction holds and one where it fails.

* Holds: the tanh toy (two weights), classic per-sample clipping (lam = 1), power-law steps
  a(n) = 0.1 / (n + 1)^0.7. ``sa_clip.linear_noise`` gives the ODE path theta(tau) and the
  covariance V(tau); the band is theta_i(tau) +- 1.2816 sqrt(V_ii) (10-90% of a Gaussian),
  drawn over the chains' 10-90% quantile band.
* Fails: a location problem on {-1, +1} with lam = 0.5. Every theta in [-0.5, 0.5] is a zero
  of H (both samples clipped: the two pulls of 0.5 cancel), so the ODE from theta = 1.4 stops
  at the edge theta* = 0.5, on a clipping switch. There DH jumps from 1/2 (outside) to 0
  (inside): the linearisation sees only the outside slope and predicts a steady band, while
  the chains diffuse freely into the flat interval, an unbounded one-sided random walk.

    python examples/linear_noise.py                       # about a minute on 2 cores
    python examples/linear_noise.py --chains 4000 --out figures
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import torch

import sa_clip as sc
from sa_clip.viz import add_figure_options, styled, subplots

Z90 = 1.2815515655446004          # the 90% quantile of N(0, 1)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=600, help="steps of the tanh run")
    ap.add_argument("--switch-steps", type=int, default=800,
                    help="steps of the run near the clipping switch (a = 0.05)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures", help="folder for linear_noise.png")
    add_figure_options(ap)
    return ap.parse_args(argv)


def band_panel(ax, tau, chains, mean, var, title, ylabel):
    """Chains' median and 10-90% band against the predicted ODE +- 1.2816 sd band."""
    q10, q50, q90 = np.nanquantile(chains, [0.1, 0.5, 0.9], axis=0)
    sd = np.sqrt(np.clip(var, 0, None))
    ax.fill_between(tau, q10, q90, color="#2166ac", alpha=0.25, lw=0,
                    label="chains, 10-90% band")
    ax.plot(tau, q50, color="#2166ac", lw=1.2, label="chains, median")
    ax.plot(tau, mean, color="#b2182b", lw=1.6, label="ODE")
    ax.plot(tau, mean + Z90 * sd, color="#b2182b", lw=1.1, ls="--",
            label="predicted 10-90% band")
    ax.plot(tau, mean - Z90 * sd, color="#b2182b", lw=1.1, ls="--")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(r"ODE time $\tau$")
    ax.set_ylabel(ylabel)


def main(argv=None):
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # -- where it holds: the tanh toy
    p = sc.problems.tanh_regression()
    rule, sched = sc.NormClip(1.0), sc.PowerLaw(0.1, 0.7)
    run = sc.simulate_sgd(p, rule, sched, steps=args.steps, chains=args.chains,
                          seed=args.seed, record_every=max(1, args.steps // 60))
    pred = sc.linear_noise(sc.MeanField(p, rule), sched, p.theta0, run.tau)
    th = run.theta.numpy()
    rel = [np.linalg.norm(np.cov(th[:, i], rowvar=False) - pred.cov[i].numpy())
           / np.linalg.norm(np.cov(th[:, i], rowvar=False)) for i in range(1, len(run.tau))]
    worst = int(np.argmax(rel)) + 1
    print(f"tanh toy, {rule}, a(n) = 0.1/(n+1)^0.7, {args.chains} chains x {args.steps} steps:"
          f" predicted vs chains' covariance: relative Frobenius {np.median(rel):.1%} (median "
          f"over {len(rel)} times), {max(rel):.1%} (worst, at tau = "
          f"{float(run.tau[worst]):.2f}, step {int(run.steps[worst])}); linear_noise took "
          f"{pred.seconds:.1f} s")

    # -- where it fails: next to a clipping switch
    q = sc.problems.location_problem([-1.0, 1.0], theta0=1.4)
    rule2, sched2 = sc.NormClip(0.5), sc.Constant(0.05)
    with warnings.catch_warnings():      # constant steps on purpose: no (A2) warning
        warnings.simplefilter("ignore", UserWarning)
        run2 = sc.simulate_sgd(q, rule2, sched2, steps=args.switch_steps, chains=args.chains,
                               seed=args.seed, record_every=max(1, args.switch_steps // 80))
    pred2 = sc.linear_noise(sc.MeanField(q, rule2), sched2, q.theta0, run2.tau)
    x2 = run2.theta[:, :, 0].numpy()
    sd_chain = float(np.std(x2[:, -1]))
    sd_pred = float(pred2.cov[-1, 0, 0]) ** 0.5
    print(f"location {{-1, 1}}, {rule2}, a = 0.05: at tau = {float(run2.tau[-1]):.0f} the chains"
          f" spread {sd_chain:.3f} (sd) against {sd_pred:.3f} predicted: the linearisation "
          "fails at the clipping switch")

    fig, axes = subplots(3, (13.5, 4.1))
    tau = run.tau.numpy()
    for i, name in enumerate(("w1", "w2")):
        band_panel(axes[i], tau, th[:, :, i], pred.mean[:, i].numpy(),
                   pred.cov[:, i, i].numpy(),
                   f"({'ab'[i]}) holds: tanh toy, weight {name}", name)
    band_panel(axes[2], run2.tau.numpy(), x2, pred2.mean[:, 0].numpy(),
               pred2.cov[:, 0, 0].numpy(), "(c) fails: next to a clipping switch",
               r"$\theta$")
    axes[2].axhspan(-0.5, 0.5, color="0.85", zorder=0, label="zeros of H (flat)")
    axes[2].set_ylim(-0.6, 1.5)
    axes[0].legend(fontsize=8, loc="best")
    axes[2].legend(fontsize=8, loc="upper right")
    axes[1].text(0.03, 0.97, f"NormClip(1), a(n) = 0.1/(n+1)^0.7, {args.chains} chains\n"
                 f"covariance off by {np.median(rel):.0%} (median over time),\n"
                 f"{max(rel):.0%} at worst (tau = {float(run.tau[worst]):.2f})",
                 transform=axes[1].transAxes, fontsize=8, va="top")
    axes[2].text(0.03, 0.03, f"data {{-1, +1}}, NormClip(0.5), a = 0.05\n"
                 f"at tau = {float(run2.tau[-1]):.0f}: chains sd {sd_chain:.2f}, "
                 f"predicted {sd_pred:.2f}", transform=axes[2].transAxes, fontsize=8)
    fig.suptitle("Predicted spread (linear-noise approximation) vs clipped-SGD chains",
                 fontsize=11)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "linear_noise.png")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=args.dpi)
    os.replace(tmp, path)
    plt.close(fig)
    print(f"wrote {path}")
    return {"holds": max(rel), "fails": (sd_chain, sd_pred), "figure": path}


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    main()
