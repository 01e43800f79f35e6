"""Many clipped-SGD chains: ``simulate_sgd`` (all chains stacked, one batched step) against a
hand-written loop over chains with torch.optim-style steps and
``torch.nn.utils.clip_grad_norm_`` (per-batch clipping: the same work).

    python benchmarks/bench_sgd.py            # 256 chains, both problems
    python benchmarks/bench_sgd.py --quick    # seconds-long smoke run

Reports chain-steps per second (median of repeats after a warm-up) and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from _timing import median_time, peak_rss_mib
from torch import nn

import sa_clip as sc


def mlp(sizes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_((torch.rand(b, a, generator=gen, dtype=dtype) * 2 - 1) / a ** .5)
            lin.bias.zero_()
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def problems(quick: bool):
    X, y, _ = sc.problems.load_dataset("wine", dtype=torch.float32)
    wine = sc.Problem(mlp([13, 32, 3], torch.float32), X, y, "cross_entropy",
                      name="wine 13-32-3 tanh")
    n = 2000 if quick else 20000
    gen = torch.Generator().manual_seed(0)
    Xs = torch.randn(n, 64, generator=gen)
    ys = torch.randint(0, 10, (n,), generator=gen)
    big = sc.Problem(mlp([64, 128, 128, 10], torch.float32), Xs, ys, "cross_entropy",
                     name=f"synthetic N={n} 64-128-128-10 tanh")
    return [wine, big]


def hand_loop(problem, lam, lr, chains, steps, batch, seed):
    """The baseline: one model per chain, a Python loop over chains and steps."""
    gen = torch.Generator().manual_seed(seed)
    models = [copy.deepcopy(problem.model).train() for _ in range(chains)]
    loss_fn = nn.CrossEntropyLoss()

    def run():
        for _ in range(steps):
            idx = torch.randint(problem.N, (chains, batch), generator=gen)
            for c, m in enumerate(models):
                m.zero_grad(set_to_none=True)
                loss_fn(m(problem.X[idx[c]]), problem.y[idx[c]]).backward()
                nn.utils.clip_grad_norm_(m.parameters(), lam)
                with torch.no_grad():
                    for p in m.parameters():
                        p.add_(p.grad, alpha=-lr)
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.chains, args.steps, args.repeats = 16, 3, 1
    torch.set_num_threads(args.threads)
    lam, lr = 1.0, 0.05
    print(f"{args.chains} chains x {args.steps} steps, batch {args.batch_size}, per-batch norm "
          f"clipping (lam={lam}), float32, {args.threads} threads, median of {args.repeats} "
          "after 1 warm-up")
    print(f"{'problem':<38} {'simulate_sgd':>14} {'loop+clip_grad_norm_':>21} {'ratio':>7}")
    for p in problems(args.quick):
        rule = sc.NormClip(lam)
        field = sc.MeanField(p, rule)

        def ours(p=p, rule=rule, field=field):
            sc.simulate_sgd(p, rule, sc.Constant(lr), steps=args.steps, chains=args.chains,
                            batch_size=args.batch_size, clip_per="batch", seed=0,
                            record_every=args.steps, field=field)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # constant steps violate (A2): on purpose
            t_ours = median_time(ours, args.repeats)
        t_loop = median_time(hand_loop(p, lam, lr, args.chains, args.steps, args.batch_size, 0),
                             args.repeats)
        cs = args.chains * args.steps
        print(f"{p.name:<38} {cs / t_ours:11.0f} c/s {cs / t_loop:18.0f} c/s "
              f"{t_loop / t_ours:6.2f}x")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
