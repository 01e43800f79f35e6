"""Classic vs adaptive vs layer-wise vs unit-wise clipping on the same problem.

Same network, data, schedule, seed and chains; only the clipping rule changes. Small
multiples, one panel per rule on shared axes: the loss of the ODE solution (dashed, on its own
fine time grid) and of the SGD chains (median, 10-90% band, three chains) against ODE time,
and the fraction of samples clipped at the first and the last step.

    python examples/compare_rules.py   # figures/compare_rules.png, about 60 s CPU
"""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
import torch

import sa_clip as sc
from sa_clip.experiment import batched_loss
from sa_clip.viz import (
    add_figure_options,
    describe_rule,
    figsize_for,
    plot_ensemble,
    save_figure,
    styled,
)

COLORS = ["#2166ac", "#b35806", "#1b7837", "#762a83", "#d6604d"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="wine", choices=sorted(sc.problems.DATASETS))
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--lam", type=float, default=1.0, help="lambda of classic clipping")
    ap.add_argument("--rel-lam", type=float, default=0.3,
                    help="lambda of the relative (adaptive, layer-wise, unit-wise) rules")
    ap.add_argument("--schedule", default="power:1.0,0.6")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=24)
    ap.add_argument("--record-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> str:
    problem = sc.problems.real_problem(args.dataset, hidden=(args.hidden,))
    rules = {"classic": sc.NormClip(args.lam), "adaptive": sc.AdaptiveClip(args.rel_lam),
             "layer-wise": sc.LayerwiseAdaptiveClip(args.rel_lam),
             "unit-wise": sc.UnitwiseAGC(args.rel_lam)}
    # small multiples: one panel per rule on shared axes, so the rules compare panel to panel
    fig, axes = plt.subplots(2, 2, figsize=figsize_for((9.0, 6.4), 2, 2), layout="constrained",
                             sharex=True, sharey=True)
    axes = axes.ravel()
    for k, ((name, rule), ax) in enumerate(zip(rules.items(), axes)):
        run = sc.simulate_sgd(problem, rule, args.schedule, steps=args.steps,
                              chains=args.chains, seed=args.seed,
                              record_every=args.record_every)
        t_ode = torch.linspace(0.0, float(run.tau[-1]), 300, dtype=torch.float64)
        sol = sc.solve_ode(sc.MeanField(problem, rule), problem.theta0, t_ode)
        losses = batched_loss(problem, run.theta)   # (chains, records), bounded memory
        plot_ensemble(run.tau, losses, ax, color=COLORS[k], label="SGD", n_faint=3,
                      logy=True)
        ax.plot(sol.t, problem.loss(sol.theta), "--", color="k", lw=1.4, label="ODE")
        frac = torch.nanmean(run.clip_fraction, dim=0)
        frac = frac[torch.isfinite(frac)]
        ax.text(0.97, 0.95, f"samples clipped: {float(frac[0]):.0%} at the first step,\n"
                f"{float(frac[-1]):.0%} at the last", transform=ax.transAxes, ha="right",
                va="top", fontsize="small", color="0.25")
        ax.set_title(describe_rule(rule), fontsize="medium")
        ax.grid(True, which="major", alpha=0.25)
        print(f"{name:>10} {rule}: final loss ODE {float(problem.loss(sol.theta[-1])):.4f}, "
              f"SGD median {float(losses[:, -1].nanmedian()):.4f}, "
              f"blow-ups {int(run.blown_up.sum())}")
    for ax in axes[2:]:
        ax.set_xlabel("ODE time τ")
    for ax in axes[::2]:
        ax.set_ylabel("full-data loss L(θ)")
    axes[0].legend(fontsize="small", loc="lower left")
    fig.suptitle(f"{problem.name}: the same network, data, schedule and seed;\nonly the "
                 "clipping rule changes", fontsize="medium")
    path = save_figure(fig, args.out, "compare_rules.png", dpi=args.dpi)
    print(f"wrote {path}")
    return str(path)


if __name__ == "__main__":
    main()
