"""ODE vs SGD on the paper's network: many clipped-SGD chains against the solution of
d theta/d tau = -H(theta), on the ODE time axis.

The paper's sigmoid network on the wine data set (bundled with scikit-learn), classic norm
clipping, step sizes a(n) = a0 / (n + 1)^alpha. Draws two weights of the first layer, the PCA
coordinates of the run, the loss, and the clipping fraction, each against ODE time.

    python examples/ode_vs_sgd.py   # figures/ode_vs_sgd*.png, about 29 s CPU
    python examples/ode_vs_sgd.py --chains 128 --steps 4000
"""

from __future__ import annotations

import argparse

import torch

import sa_clip as sc
from sa_clip.experiment import batched_loss
from sa_clip.plane import Plane
from sa_clip.viz import (
    add_figure_options,
    describe_rule,
    ode_vs_sgd_figure,
    plot_clip_fraction,
    plot_ensemble,
    save_figure,
    styled,
    subplots,
)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="wine", choices=sorted(sc.problems.DATASETS))
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--schedule", default="power:1.0,0.6")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--chains", type=int, default=48)
    ap.add_argument("--record-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> list[str]:
    problem = sc.problems.real_problem(args.dataset, hidden=(args.hidden,))
    rule = sc.NormClip(args.lam)
    run = sc.simulate_sgd(problem, rule, args.schedule, steps=args.steps, chains=args.chains,
                          seed=args.seed, record_every=args.record_every)
    # the ODE on its own fine time grid (not only at the records: no corners)
    t_ode = torch.linspace(0.0, float(run.tau[-1]), 400, dtype=torch.float64)
    sol = sc.solve_ode(sc.MeanField(problem, rule), problem.theta0, t_ode)
    paths = []
    # two coordinates (the weights that move most along the ODE), named from problem.blocks
    move = (sol.theta[-1] - sol.theta[0]).abs()
    coords = torch.topk(move, 2).indices.tolist()
    fig = ode_vs_sgd_figure(run, sol, coords=coords, problem=problem,
                            title=f"{problem.name}, {describe_rule(rule)}: two weights against "
                                  "ODE time")
    paths.append(save_figure(fig, args.out, "ode_vs_sgd.png", dpi=args.dpi))
    plane = Plane.pca(torch.cat([run.theta.reshape(-1, problem.P), sol.theta]))
    fig = ode_vs_sgd_figure(run, sol, coords=(0, 1), plane=plane,
                            title="the same run projected on its PCA plane")
    paths.append(save_figure(fig, args.out, "ode_vs_sgd_pca.png", dpi=args.dpi))
    fig, (a1, a2) = subplots(2, (10, 3.8))
    losses = batched_loss(problem, run.theta)   # (chains, records), bounded memory
    plot_ensemble(run.tau, losses, a1, logy=True)
    a1.plot(sol.t, problem.loss(sol.theta), "--", color="#b2182b", lw=2, label="ODE solution")
    a1.set_xlabel("ODE time τ")
    a1.set_ylabel("full-data loss L(θ)")
    a1.legend(fontsize=8)
    plot_clip_fraction(run, a2)
    paths.append(save_figure(fig, args.out, "ode_vs_sgd_loss.png", dpi=args.dpi))
    print(f"{problem!r}: final loss ODE {float(problem.loss(sol.theta[-1])):.4f}, SGD median "
          f"{float(losses[:, -1].nanmedian()):.4f}")
    print("wrote " + ", ".join(map(str, paths)))
    return [str(p) for p in paths]


if __name__ == "__main__":
    main()
