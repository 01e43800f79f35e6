"""The whole story for a CNN a user brings, public API only, each stage timed: a small CNN on
scikit-learn's digits (float32, two conv layers), its mean field H against the plain
gradient, 32 SGD chains x 600 steps at batch 1, the ODE on the chains' times at default
tolerances, tracking of 4 chains x 6 starts, and the shadowing figure.

    python benchmarks/bench_cnn_story.py                 # prints each stage's time
    python benchmarks/bench_cnn_story.py --out story.png # where the figure goes
    python benchmarks/bench_cnn_story.py --quick         # 300 samples, 8 chains x 100 steps,
                                                         # tracking 2 chains x 3 starts

Target (issue 21, on a quiet 2-core machine): the whole story within 120 s. Each long stage
also prints its own cost estimate before it starts (progress=True), so the estimates can be
read against the measured times. Threads: torch's default unless --threads.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _timing import peak_rss_mib
from sklearn.datasets import load_digits
from torch import nn

import sa_clip as sc
from sa_clip.tracking import select_chains


def digits_problem(n: int | None) -> sc.Problem:
    """A CNN a user might write: conv 1->6, tanh, pool, conv 6->12, tanh, pool, linear."""
    X, y = load_digits(return_X_y=True)                  # float64 (1797, 64), labels 0..9
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Conv2d(6, 12, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(48, 10))
    X = torch.as_tensor(X[:n], dtype=torch.float32).reshape(-1, 1, 8, 8)
    return sc.Problem(model, X, torch.as_tensor(y[:n]), "cross_entropy",
                      dtype=torch.float32, name="digits CNN")


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=32)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--track", type=int, default=4, help="chains tracked")
    ap.add_argument("--starts", type=int, default=6)
    ap.add_argument("--samples", type=int, default=None, help="first N digits (default all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="PNG of the shadowing figure (default: a "
                    "temporary file)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.chains, args.steps, args.track, args.starts, args.samples = 8, 100, 2, 3, 300
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}",
          flush=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    problem = digits_problem(args.samples)
    rule = sc.NormClip(1.0)
    field = sc.MeanField(problem, rule)
    times["build"] = time.perf_counter() - t
    print(f"{problem!r}\nengine: {field.reason}", flush=True)

    t = time.perf_counter()
    t_h = best_of(lambda: field(problem.theta0))
    t_g = best_of(lambda: problem.gradient(problem.theta0))
    times["H vs gradient"] = time.perf_counter() - t
    print(f"H {t_h * 1e3:.0f} ms, plain full-batch gradient {t_g * 1e3:.0f} ms: "
          f"{t_h / t_g:.2f}x", flush=True)

    t = time.perf_counter()
    run = sc.simulate_sgd(problem, rule, "power:1.0,0.6", steps=args.steps,
                          chains=args.chains, seed=0, field=field, progress=True)
    times["sgd"] = time.perf_counter() - t

    t = time.perf_counter()
    ode = sc.solve_ode(field, problem.theta0, run.tau, progress=True)
    times["ode"] = time.perf_counter() - t
    print(f"ode: {ode.nfev} evaluations, {ode.message}", flush=True)

    t = time.perf_counter()
    last = float(run.tau[-1])
    horizon = min(1.0, 0.5 * last)
    starts = torch.linspace(0.0, last - horizon, args.starts, dtype=torch.float64)
    track = list(range(min(args.track, args.chains)))
    res = sc.tracking_distance(run, field, horizon=horizon, starts=starts, chains=track,
                               keep_paths=1, progress=True)
    times["tracking"] = time.perf_counter() - t
    print(f"tracking: {len(track)} chains x {args.starts} starts, {res.nfev} evaluations, "
          f"median D_T(s) {[round(float(v), 3) for v in res.median]}", flush=True)

    t = time.perf_counter()
    import matplotlib
    matplotlib.use("Agg")
    from sa_clip.viz import plot_shadowing
    fig = plot_shadowing(select_chains(run, track), res, chain=0, problem=problem)
    out = args.out or os.path.join(os.environ.get("TMPDIR", "/tmp"), "cnn_story.png")
    fig.savefig(out, dpi=100)
    times["figure"] = time.perf_counter() - t
    total = time.perf_counter() - t_all
    print("\nstage            seconds")
    for k, v in times.items():
        print(f"{k:<16} {v:7.1f}")
    print(f"{'total':<16} {total:7.1f}   (target 120 s on a quiet 2-core machine)")
    print(f"figure {out}; peak RSS {peak_rss_mib():.0f} MiB; load average "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
