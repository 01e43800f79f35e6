"""H on N samples streamed from memory-mapped .npy files: time and peak memory.

The parent process writes ``X`` (N, dim) and ``y`` (N, 1), float32, into a temporary folder in
blocks (never holding them whole), then starts a fresh Python process that builds
``Problem.from_npy`` (one scan for NaN/inf) and evaluates ``H`` with a small tanh network.
Peak memory is that fresh process's ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak
resident set, KiB on Linux), reported next to its value just before the data are touched.

    PYTHONPATH=. python benchmarks/bench_memmap.py            # N = 10^6
    PYTHONPATH=. python benchmarks/bench_memmap.py --quick    # N = 2 * 10^4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def write_data(folder: str, n: int, dim: int, seed: int = 0) -> tuple[str, str]:
    import numpy as np

    xp, yp = os.path.join(folder, "x.npy"), os.path.join(folder, "y.npy")
    X = np.lib.format.open_memmap(xp, mode="w+", dtype=np.float32, shape=(n, dim))
    Y = np.lib.format.open_memmap(yp, mode="w+", dtype=np.float32, shape=(n, 1))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim).astype(np.float32)
    for a in range(0, n, 1 << 16):
        b = min(n, a + (1 << 16))
        x = rng.standard_normal((b - a, dim), dtype=np.float32)
        X[a:b] = x
        Y[a:b, 0] = np.tanh(x @ w) + 0.1 * rng.standard_normal(b - a, dtype=np.float32)
    X.flush()
    Y.flush()
    del X, Y
    return xp, yp


def worker(xp: str, yp: str, dim: int, hidden: int, lam: float, repeat: int,
           chunk: int | None) -> dict:
    import resource

    import torch

    import sa_clip as sc

    def maxrss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(),
                                torch.nn.Linear(hidden, 1))
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(0.5 * torch.randn(prm.shape, generator=gen))
    before = maxrss_mib()
    t0 = time.perf_counter()
    p = sc.Problem.from_npy(model, xp, yp, "mse")
    t_build = time.perf_counter() - t0
    field = sc.MeanField(p, sc.NormClip(lam), chunk_size=chunk)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        h = field(p.theta0)
        times.append(time.perf_counter() - t0)
    return {"N": p.N, "P": p.P, "dtype": str(p.dtype), "chunk": field._chunk(1),
            "threads": torch.get_num_threads(), "build_s": t_build, "H_s": times,
            "H_norm": float(h.norm()), "maxrss_before_MiB": before, "maxrss_MiB": maxrss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10 ** 6, help="number of samples")
    ap.add_argument("--quick", action="store_true", help="N = 2 * 10^4 (smoke test)")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lam", type=float, default=0.5, help="NormClip threshold")
    ap.add_argument("--repeat", type=int, default=2, help="H evaluations timed")
    ap.add_argument("--chunk", type=int, default=None,
                    help="samples per chunk (default: MeanField's memory budget)")
    ap.add_argument("--worker", nargs=2, metavar=("X_NPY", "Y_NPY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.dim, args.hidden, args.lam, args.repeat,
                                args.chunk)))
        return
    n = 2 * 10 ** 4 if args.quick else args.n
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        xp, yp = write_data(folder, n, args.dim)
        t_write = time.perf_counter() - t0
        size_mib = (os.path.getsize(xp) + os.path.getsize(yp)) / 2 ** 20
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", xp, yp, "--dim",
               str(args.dim), "--hidden", str(args.hidden), "--lam", str(args.lam),
               "--repeat", str(args.repeat)] + (["--chunk", str(args.chunk)] if args.chunk else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"bench_memmap: N={r['N']:,} samples, dim={args.dim}, P={r['P']}, {r['dtype']}, "
          f"NormClip({args.lam}), chunk={r['chunk']:,} samples, {r['threads']} threads")
    print(f"  files x.npy+y.npy: {size_mib:.1f} MiB (written in {t_write:.1f} s)")
    print(f"  Problem.from_npy (one NaN/inf scan): {r['build_s']:.2f} s")
    print("  H(theta): " + ", ".join(f"{t:.2f} s" for t in r["H_s"])
          + f"  (|H| = {r['H_norm']:.6g})")
    print(f"  peak RSS of the fresh worker process (getrusage ru_maxrss): {r['maxrss_MiB']:.0f} MiB"
          f" ({r['maxrss_before_MiB']:.0f} MiB after imports, before any data was read)")


if __name__ == "__main__":
    main()
