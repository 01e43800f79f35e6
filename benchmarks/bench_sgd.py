"""Many clipped-SGD chains: ``simulate_sgd`` (all chains stacked, one batched step) against a
hand-written loop over chains with torch.optim-style steps and
``torch.nn.utils.clip_grad_norm_`` (per-batch clipping: the same work).

    python benchmarks/bench_sgd.py            # MLP 64-128-128-10, N=2000, 256 chains, batch 1
                                              # and 32; then the wine network
    python benchmarks/bench_sgd.py --quick    # seconds-long smoke run
    python benchmarks/bench_sgd.py --noise    # also: the cost of record_noise=True
    python benchmarks/bench_sgd.py --conv-only  # only the digits CNN row (32 chains, batch 1)

Each row times both sides in the same process, interleaved (median of repeats after a warm-up),
and prints chain-steps per second and the ratio (hand loop time / simulate_sgd time). Targets:
>= 15x at batch 1 (the paper's per-sample setting); batch 32 is the second row. The last
row is a conv model: the zoo's digits CNN (``sa_clip.problems.digits_cnn``, float32, P = 1210),
32 chains at batch 1, where ``simulate_sgd`` batches the chains' weights (``vmap`` over chains
turns each convolution into one grouped convolution) against the same hand loop; target >= 5x.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from _timing import peak_rss_mib
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
    n = 500 if quick else 2000
    gen = torch.Generator().manual_seed(0)
    Xs = torch.randn(n, 64, generator=gen)
    ys = torch.randint(0, 10, (n,), generator=gen)
    big = sc.Problem(mlp([64, 128, 128, 10], torch.float32), Xs, ys, "cross_entropy",
                     name=f"MLP 64-128-128-10 N={n}")
    X, y, _ = sc.problems.load_dataset("wine", dtype=torch.float32)
    wine = sc.Problem(mlp([13, 32, 3], torch.float32), X, y, "cross_entropy",
                      name="wine 13-32-3 tanh")
    return [big, wine]


def hand_loop(problem, lam, lr, chains, steps, batch, seed):
    """The baseline: one model per chain (deep copies, made before timing), a Python loop over
    chains and steps, ``clip_grad_norm_`` and an SGD update per chain and step."""
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


def interleaved(fns, repeats):
    """Median seconds of each function, timed in turns (one warm-up each first)."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, f in zip(times, fns):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [sorted(t)[len(t) // 2] for t in times]


def row(p, batch, args, lam=1.0, lr=0.05, chains=None):
    chains = chains or args.chains
    rule = sc.NormClip(lam)
    field = sc.MeanField(p, rule)

    def ours():
        sc.simulate_sgd(p, rule, sc.Constant(lr), steps=args.steps, chains=chains,
                        batch_size=batch, clip_per="batch", seed=0, record_every=args.steps,
                        field=field, progress=False)
    t_ours, t_loop = interleaved([ours, hand_loop(p, lam, lr, chains, args.steps, batch,
                                                  0)], args.repeats)
    cs = chains * args.steps
    name = f"{p.name} ({chains} ch.)"
    print(f"{name:<28} {batch:>5} {cs / t_ours:11.0f} c/s {cs / t_loop:18.0f} c/s "
          f"{t_loop / t_ours:6.2f}x", flush=True)


def noise_row(p, args, lam=1.0, lr=0.05):
    """record_noise=True against the same run without it (batch 1)."""
    rule = sc.NormClip(lam)
    field = sc.MeanField(p, rule)

    def run(noise):
        return lambda: sc.simulate_sgd(p, rule, sc.Constant(lr), steps=args.steps,
                                       chains=args.chains, clip_per="batch", seed=0,
                                       record_every=args.steps, field=field,
                                       record_noise=noise)
    t_plain, t_noise = interleaved([run(False), run(True)], args.repeats)
    print(f"record_noise on {p.name}: {t_noise / t_plain:.1f}x the time of the same run "
          f"without it (N = {p.N}, batch 1: an exact full-data H per chain and step)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--noise", action="store_true", help="also time record_noise=True")
    ap.add_argument("--conv-only", action="store_true",
                    help="only the digits CNN row (32 chains, batch 1)")
    args = ap.parse_args(argv)
    if args.quick:
        args.chains, args.steps, args.repeats = 16, 3, 1
    torch.set_num_threads(args.threads)
    print(f"{args.chains} chains (CNN: 32) x {args.steps} steps, per-batch norm clipping (lam=1), "
          f"float32, {args.threads} threads, median of {args.repeats} interleaved rounds "
          "after 1 warm-up")
    print(f"{'problem':<28} {'batch':>5} {'simulate_sgd':>14} {'loop+clip_grad_norm_':>21} "
          f"{'ratio':>7}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # constant steps violate (A2): on purpose
        if not args.conv_only:
            big, wine = problems(args.quick)
            for b in args.batch_sizes:
                row(big, b, args)
            row(wine, args.batch_sizes[-1], args)
            if args.noise:
                noise_row(big, args)
        row(sc.problems.digits_cnn(), 1, args, chains=32)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
