"""Classic vs adaptive vs layer-wise vs unit-wise clipping on the same problem.

Same network, data, schedule, seed and chains; only the clipping rule changes. Left: the loss
of the ODE solution (dashed) and the median loss of the SGD chains against ODE time. Right:
the fraction of samples clipped.

    python examples/compare_rules.py   # figures/compare_rules.png, about 60 s CPU
"""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt

import sa_clip as sc
from sa_clip.experiment import batched_loss
from sa_clip.viz import plot_clip_fraction, plot_ensemble, save_figure

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
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    problem = sc.problems.real_problem(args.dataset, hidden=(args.hidden,))
    rules = {"classic": sc.NormClip(args.lam), "adaptive": sc.AdaptiveClip(args.rel_lam),
             "layer-wise": sc.LayerwiseAdaptiveClip(args.rel_lam),
             "unit-wise": sc.UnitwiseAGC(args.rel_lam)}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for k, (name, rule) in enumerate(rules.items()):
        run = sc.simulate_sgd(problem, rule, args.schedule, steps=args.steps,
                              chains=args.chains, seed=args.seed,
                              record_every=args.record_every)
        sol = sc.solve_ode(sc.MeanField(problem, rule), problem.theta0, run.tau)
        losses = batched_loss(problem, run.theta)   # (chains, records), bounded memory
        plot_ensemble(run.tau, losses, a1, color=COLORS[k], label=f"SGD, {name}", n_faint=0,
                      logy=True, show_band=False)
        a1.plot(sol.t, problem.loss(sol.theta), "--", color=COLORS[k], lw=1.5,
                label=f"ODE, {name}")
        plot_clip_fraction(run, a2, label=name, color=COLORS[k])
        print(f"{name:>10} {rule}: final loss ODE {float(problem.loss(sol.theta[-1])):.4f}, "
              f"SGD median {float(losses[:, -1].nanmedian()):.4f}, "
              f"blow-ups {int(run.blown_up.sum())}")
    a1.set_xlabel("ODE time τ")
    a1.set_ylabel("full-data loss L(θ)")
    a1.set_title(f"{problem.name}: loss along ODE and SGD", fontsize=10)
    a1.legend(fontsize=7, ncol=2, loc="upper right")
    a2.set_title("fraction of samples clipped", fontsize=10)
    path = save_figure(fig, args.out, "compare_rules.png")
    print(f"wrote {path}")
    return str(path)


if __name__ == "__main__":
    main()
