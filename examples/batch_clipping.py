"""Per-sample vs per-batch clipping: how the mean field H_M moves with the batch size M.

Per-sample clipping (the paper, DP-SGD) averages clipped per-sample gradients: its mean field is
H = H_1. Per-batch clipping (torch.nn.utils.clip_grad_norm_) clips the batch mean, and its mean
field H_M = E_B[clip(g_B)] depends on M: it moves from H_1 at M = 1 to the full-batch clipped
gradient at M = N. Each H_M is a Monte-Carlo estimate (sa_clip.batch_mean_field) drawn with
error bars of two standard errors.

    python examples/batch_clipping.py   # figures/batch_clipping.png, about 9 s CPU
"""

from __future__ import annotations

import argparse

import torch

import sa_clip as sc
from sa_clip.viz import (
    add_figure_options,
    describe_rule,
    plot_batch_mean_field,
    save_figure,
    styled,
)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="samples of the logistic2d toy")
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--theta", default="1.5,-1.0", help="the point theta (two numbers)")
    ap.add_argument("--samples", type=int, default=2000, help="Monte-Carlo batches per M")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace) -> str:
    problem = sc.problems.logistic2d(n=args.n)
    rule = sc.NormClip(args.lam)
    theta = torch.tensor([float(v) for v in args.theta.split(",")], dtype=problem.dtype)
    ms = [m for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if m <= problem.N]
    means, ses = [], []
    for m in ms:
        mu, se = sc.batch_mean_field(problem, rule, theta, m, samples=args.samples,
                                     seed=args.seed)
        means.append(mu)
        ses.append(se)
        print(f"M = {m:4d}: H_M = {[round(v, 4) for v in mu.tolist()]} "
              f"(s.e. {[round(v, 4) for v in se.tolist()]})")
    full, _ = sc.batch_mean_field(problem, rule, theta, problem.N, replace=False)
    ax = plot_batch_mean_field(ms, torch.stack(means), torch.stack(ses), coords=(0, 1),
                               problem=problem, reference=full)
    h1 = sc.MeanField(problem, rule)(theta)
    ax.plot(1, float(h1[0]), "k*", ms=10, label="per-sample H (exact)")
    ax.plot(1, float(h1[1]), "k*", ms=10)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title(f"{problem.name}, {describe_rule(rule)}, θ = ({args.theta})",
                 fontsize="medium")
    path = save_figure(ax.figure, args.out, "batch_clipping.png", dpi=args.dpi)
    print(f"wrote {path}")
    return str(path)


if __name__ == "__main__":
    main()
