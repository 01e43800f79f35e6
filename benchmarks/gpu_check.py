"""GPU check: the fast path against the general (vmap) path on CUDA, then the ratio tables.

1. For float64 and float32, every rule and loss, batched theta and SGD directions: the
   relative difference ``||fast - vmap|| / ||vmap||`` on the device (limits 1e-10 and 1e-4).
2. ``bench_meanfield.py`` and ``bench_grid.py`` on the device.

Exits 0 with a message when CUDA is not available; exits 1 if a difference is over its limit.
``--device cpu`` runs the same checks on the CPU (to test this script without a GPU).

    python benchmarks/gpu_check.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_repo_to_path  # noqa: E402

add_repo_to_path()
import bench_grid  # noqa: E402
import bench_meanfield  # noqa: E402

import sa_clip as sc  # noqa: E402

LIMITS = {torch.float64: 1e-10, torch.float32: 1e-4}


def _logcosh(o, t):
    return torch.log(torch.cosh(o - t)).sum()


def small_problem(loss: str, dtype: torch.dtype, device: str, n: int = 300) -> sc.Problem:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(),
                          nn.Linear(16, 4))
    X = torch.randn(n, 8, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen) if loss == "cross_entropy" else \
        torch.randn(n, 4, generator=gen)
    return sc.Problem(model, X, y, _logcosh if loss == "callable" else loss, dtype=dtype,
                      device=device)


def correctness(device: str) -> bool:
    rules = dict(bench_meanfield.RULES)
    ok = True
    print(f"fast vs vmap on {device}: max over rules of ||fast - vmap|| / ||vmap||")
    for dtype, limit in LIMITS.items():
        for loss in ("mse", "cross_entropy", "callable"):
            p = small_problem(loss, dtype, device)
            gen = torch.Generator().manual_seed(1)
            th = p.theta0 + 0.3 * torch.randn(4, p.P, generator=gen).to(p.theta0)
            idx = torch.randint(0, p.N, (4, 8), generator=gen).to(device)
            worst = {}
            for name, rule in rules.items():
                fast = sc.MeanField(p, rule, method="fast", chunk_size=128)
                ref = sc.MeanField(p, rule, method="vmap")
                pairs = [(fast(th), ref(th))]
                for per in ("sample", "batch"):
                    pairs.append((fast.directions(th, idx, per), ref.directions(th, idx, per)))
                worst[name] = max(float((a - b).norm() / b.norm()) for a, b in pairs)
            bad = {k: v for k, v in worst.items() if not v < limit}
            ok &= not bad
            print(f"  {str(dtype):14s} {loss:14s} max {max(worst.values()):.1e} "
                  f"(limit {limit:.0e}) {'ok' if not bad else 'FAILED ' + str(bad)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; nothing to check "
              "(the CPU path is covered by the test suite).")
        return 0
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    ok = correctness(args.device)
    quick = ["--quick"] if args.quick else []
    for dtype in ("float32", "float64"):
        print()
        bench_meanfield.main(["--device", args.device, "--dtype", dtype, *quick,
                              *(["--memory-n", "0"] if dtype == "float64" else [])])
    print()
    bench_grid.main(["--device", args.device, *quick])
    print("\ngpu_check:", "all differences within limits" if ok else "DIFFERENCES OVER LIMITS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
