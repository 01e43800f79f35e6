"""A 64x64 phase-portrait grid of H in one batched call against a loop over grid points.

Two planes: the 2-parameter ``tanh`` toy of the zoo (its own plane; served by the vmap path,
batched over the 4096 points), and a 2-D plane ``theta = center + a d1 + b d2`` through the
weights of the paper's network on ``wine`` (13-16-3, sigmoid, cross-entropy; the fast path).
The reference is what one would write without batching: a Python loop over the grid points,
each point one ``MeanField(engine="vmap")`` call (vmap over samples). The loop is timed on a
subset of the points and extrapolated to the whole grid (said so in the output). Median of
repeats after warm-up; ratios from the same run; 2 threads.

Run from the repository root::

    python benchmarks/bench_grid.py            # 64 x 64
    python benchmarks/bench_grid.py --quick    # 16 x 16, seconds
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_repo_to_path, fmt_row, median_time  # noqa: E402

add_repo_to_path()
import sa_clip as sc  # noqa: E402
from sa_clip.problems import real_problem, tanh_regression  # noqa: E402


def plane(center: torch.Tensor, n: int, half_width: float, seed: int = 0) -> torch.Tensor:
    """``(n * n, P)`` points ``center + a d1 + b d2``, ``a, b`` in ``[-w, w]``, with ``d1, d2``
    orthonormal random directions (identity axes when ``P = 2``)."""
    p = center.numel()
    if p == 2:
        d = torch.eye(2, dtype=center.dtype, device=center.device)
    else:
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(p, 2, generator=gen, dtype=torch.float64))
        d = q.T.to(center)
    s = torch.linspace(-half_width, half_width, n, dtype=center.dtype, device=center.device)
    a, b = torch.meshgrid(s, s, indexing="ij")
    return center + a.reshape(-1, 1) * d[0] + b.reshape(-1, 1) * d[1]


def compare(label: str, problem: sc.Problem, rule: sc.ClipRule, grid: torch.Tensor,
            repeats: int, loop_points: int, device: str) -> list[str]:
    batched = sc.MeanField(problem, rule)
    single = sc.MeanField(problem, rule, engine="vmap")
    t_batch = median_time(lambda: batched(grid), repeats, device=device)
    sub = grid[:loop_points]

    def loop():
        return torch.stack([single(t) for t in sub])
    t_loop = median_time(loop, max(1, repeats // 2), device=device) * grid.shape[0] / loop_points
    H, ref = batched(sub), loop()
    err = float((H - ref).norm() / ref.norm())
    widths = [44, 11, 11, 8, 9]
    return [fmt_row([f"{label} (P = {problem.P}, N = {problem.N}, {batched.method})",
                     f"{1e3 * t_batch:.1f}", f"{1e3 * t_loop:.0f}*",
                     f"{t_loop / t_batch:.1f}", f"{err:.1e}"], widths)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 x 16 grid, seconds")
    ap.add_argument("--n", type=int, default=None, help="grid side (default 64, quick 16)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (16 if args.quick else 64)
    repeats = 3 if args.quick else 5
    loop_points = min(n * n, 64 if args.quick else 256)
    dtype = getattr(torch, args.dtype)
    rule = sc.NormClip(1.0)
    toy = tanh_regression(dtype=dtype)
    net = real_problem("wine", hidden=(16,), dtype=dtype)
    if args.device != "cpu":
        toy = sc.Problem(toy.model, toy.X, toy.y, toy._loss, device=args.device, name="tanh")
        net = sc.Problem(net.model, net.X, net.y, net._loss, device=args.device, name=net.name)
    widths = [44, 11, 11, 8, 9]
    print(f"{n}x{n} grid of H, {rule}, {dtype}, device {args.device}, "
          f"{torch.get_num_threads()} threads; median of {repeats} after warm-up")
    print(fmt_row(["problem", "batch ms", "loop ms", "x", "rel.diff"], widths))
    rows = compare("tanh toy plane", toy, rule, plane(toy.theta0, n, 2.0), repeats,
                   loop_points, args.device)
    rows += compare("wine 13-16-3 net, random 2-D plane", net, rule,
                    plane(net.theta0, n, 1.0), repeats, loop_points, args.device)
    for r in rows:
        print(r, flush=True)
    print(f"* loop over grid points timed on the first {loop_points} points and extrapolated "
          f"linearly to {n * n}; rel.diff: batched vs loop on those points.")


if __name__ == "__main__":
    main()
