"""Cost of the clipped mean field H(theta) against one plain full-batch gradient.

MLP 64-128-128-10 (tanh), cross-entropy, N = 20,000 random samples, float32, 2 threads.
Rows: one plain gradient of the mean loss (the floor), the same gradient summed over the fast
path's chunks (informational), a plain Python loop over samples
(timed on a subset and extrapolated to N, said so in the output), vmap per-sample gradients
(``MeanField(engine="vmap")``), the fast path (``MeanField(engine="fast")``), and Opacus
per-sample clipping when it is importable. Times are medians of repeats after a warm-up; the
ratios divide by the floor measured in the same run. A last line reports the peak memory of H
on N = 10^6 samples of a small network (measured in a fresh child process).

Run from the repository root::

    python benchmarks/bench_meanfield.py            # full table (a minute or two)
    python benchmarks/bench_meanfield.py --quick    # seconds-long smoke run
    python benchmarks/bench_meanfield.py --keep-freed-memory   # without page-fault costs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (
    ROOT,
    add_keep_freed_memory_option,
    add_repo_to_path,
    current_rss_mib,
    fmt_row,
    interleaved_medians,
    peak_rss_mib,
    rerun_keeping_freed_memory,
    sync,
)

add_repo_to_path()
import sa_clip as sc  # noqa: E402

RULES = {
    "none": sc.NoClip(),
    "norm": sc.NormClip(1.0),
    "adaptive": sc.AdaptiveClip(0.1),
    "layerwise": sc.LayerwiseAdaptiveClip(0.1),
    "unitwise": sc.UnitwiseAGC(0.1),
}


def mlp_problem(n: int, sizes=(64, 128, 128, 10), dtype=torch.float32, device="cpu",
                loss="cross_entropy", seed: int = 0) -> sc.Problem:
    """A tanh MLP with the given layer sizes on random data (classes or real targets)."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) / a ** 0.5)
            lin.bias.copy_(0.1 * torch.randn(b, generator=gen))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    X = torch.randn(n, sizes[0], generator=gen)
    if loss == "cross_entropy":
        y = torch.randint(0, sizes[-1], (n,), generator=gen)
    else:
        y = torch.randn(n, sizes[-1], generator=gen)
    return sc.Problem(nn.Sequential(*layers), X, y, loss, dtype=dtype, device=device,
                      name=f"mlp{'-'.join(map(str, sizes))}")


def plain_gradient(p: sc.Problem):
    """One full-batch gradient of the mean loss with ordinary autograd (the floor)."""
    model = copy.deepcopy(p.model)
    params = list(model.parameters())

    def run():
        out = model(p.X)
        loss = F.cross_entropy(out, p.y) if p.loss_name == "cross_entropy" else \
            ((out - p.y.reshape(out.shape)) ** 2).sum(1).mean()
        return torch.autograd.grad(loss, params)
    return run


def chunked_gradient(p: sc.Problem, chunk: int):
    """The plain gradient summed over chunks of ``chunk`` samples (H's chunks): what the floor
    costs when its intermediates are as small as H's."""
    model = copy.deepcopy(p.model)
    params = list(model.parameters())

    def run():
        total = [torch.zeros_like(q) for q in params]
        for s in range(0, p.N, chunk):
            out, y = model(p.X[s:s + chunk]), p.y[s:s + chunk]
            loss = (F.cross_entropy(out, y, reduction="sum") if p.loss_name == "cross_entropy"
                    else ((out - y.reshape(out.shape)) ** 2).sum()) / p.N
            for t, g in zip(total, torch.autograd.grad(loss, params)):
                t += g
        return total
    return run


def sample_loop(p: sc.Problem, rule: sc.ClipRule, n_sub: int):
    """Clipped sum over the first ``n_sub`` samples by a Python loop (one backward each)."""
    model = copy.deepcopy(p.model)
    params = list(model.parameters())
    theta = p.theta0

    def run():
        total = torch.zeros_like(theta)
        for i in range(n_sub):
            out = model(p.X[i:i + 1])
            loss = p.batch_losses(out, p.y[i:i + 1])[0]
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
            total += rule.clip(g, theta, p.layout)
        return total
    return run


def opacus_runner(p: sc.Problem, lam: float):
    """Per-sample norm clipping with Opacus' GradSampleModule hooks, or None if unavailable."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    gsm = GradSampleModule(copy.deepcopy(p.model).train())   # hooks only record in train mode
    params = [q for q in gsm.parameters() if q.requires_grad]

    def run():
        for q in params:
            q.grad = None
            q.grad_sample = None
        out = gsm(p.X)
        F.cross_entropy(out, p.y, reduction="sum").backward()
        gs = [q.grad_sample.reshape(p.N, -1) for q in params]
        norms = torch.sqrt(sum((g * g).sum(1) for g in gs))
        w = 1 / torch.clamp(norms / lam, min=1.0)
        return [(w[:, None] * g).sum(0) / p.N for g in gs]
    return run


# ---------------------------------------------------------------------- memory (child process)
def memory_child(n: int, device: str, dtype: str) -> dict:
    """H on ``n`` samples of a 10-32-32-1 tanh network (mse); peak memory in this process."""
    dt = getattr(torch, dtype)
    p = mlp_problem(n, sizes=(10, 32, 32, 1), dtype=dt, device=device, loss="mse")
    field = sc.MeanField(p, sc.NormClip(1.0))
    base = current_rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2 ** 20
    t0 = time.perf_counter()
    h = field(p.theta0)
    sync(device)
    out = {"n": n, "P": p.P, "method": field.method, "chunk": field._chunk(1),
           "seconds": time.perf_counter() - t0, "rss_before_mib": base,
           "peak_rss_mib": peak_rss_mib(), "data_mib": p.X.numel() * p.X.element_size() / 2**20,
           "finite": bool(torch.isfinite(h).all())}
    if device.startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        out["cuda_base_mib"] = base_cuda
    return out


def memory_line(n: int, device: str, dtype: str, threads: int) -> str:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(n), "--device",
           device, "--dtype", dtype, "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        return f"memory: child process failed:\n{res.stderr[-2000:]}"
    m = json.loads(res.stdout.strip().splitlines()[-1])
    line = (f"memory: H on N = {m['n']:,} samples of a 10-32-32-1 tanh net (P = {m['P']}, "
            f"{dtype}, engine={m['method']}, chunk = {m['chunk']:,} samples) took "
            f"{m['seconds']:.2f} s; peak RSS of the process {m['peak_rss_mib']:.0f} MiB "
            f"(getrusage ru_maxrss, includes the torch runtime; RSS before H "
            f"{m['rss_before_mib']:.0f} MiB, of which data {m['data_mib']:.0f} MiB)")
    if "cuda_peak_mib" in m:
        line += (f"; CUDA peak allocated {m['cuda_peak_mib']:.0f} MiB "
                 f"(torch.cuda.max_memory_allocated, {m['cuda_base_mib']:.0f} MiB before H)")
    return line + "."


# ---------------------------------------------------------------------- the table
def _call(field: sc.MeanField, theta: torch.Tensor):
    return lambda: field(theta)


def run_table(n: int, repeats: int, loop_samples: int, device: str, dtype: torch.dtype,
              vmap_rules: list[str], check_n: int) -> list[str]:
    p = mlp_problem(n, dtype=dtype, device=device)
    lines = [f"H(theta) for {p.name} (tanh), cross-entropy, N = {n:,}, P = {p.P:,}, {dtype}, "
             f"device {device}, {torch.get_num_threads()} threads; medians of {repeats} "
             f"rounds after warm-up, all rows timed round-robin in the same rounds"
             + ("; glibc told to keep freed memory (MALLOC_*_THRESHOLD_)"
                if "MALLOC_TRIM_THRESHOLD_" in os.environ else "")]
    th = p.theta0
    fns = {"floor": plain_gradient(p)}
    for name, rule in RULES.items():
        fns[f"fast {name}"] = _call(sc.MeanField(p, rule, engine="fast"), th)
    chunk = sc.MeanField(p, RULES["norm"], engine="fast")._chunk(1)
    fns["chunked"] = chunked_gradient(p, chunk)
    med = interleaved_medians(fns, repeats, device=device)
    floor = med["floor"]
    vmap_ratio = {}
    for name in vmap_rules:   # slow: 3 rounds, each against its own floor call
        m = interleaved_medians({"floor": fns["floor"], "vmap": _call(
            sc.MeanField(p, RULES[name], engine="vmap"), th)}, 3, device=device)
        med[f"vmap {name}"], vmap_ratio[name] = m["vmap"], m["vmap"] / m["floor"]
    m = interleaved_medians({"floor": fns["floor"],
                             "loop": sample_loop(p, RULES["norm"], loop_samples)}, 3,
                            device=device)
    t_loop, loop_ratio = m["loop"] * n / loop_samples, m["loop"] * n / loop_samples / m["floor"]
    # correctness beside speed: fast vs vmap on the first check_n samples, this dtype
    small = mlp_problem(check_n, dtype=dtype, device=device)
    diff = {}
    for name, rule in RULES.items():
        a = sc.MeanField(small, rule, engine="fast")(small.theta0)
        b = sc.MeanField(small, rule, engine="vmap")(small.theta0)
        diff[name] = float((a - b).norm() / b.norm())
    widths = [36, 10, 9, 10]
    lines.append(fmt_row(["method", "ms", "x floor", "rel.diff"], widths))
    lines.append(fmt_row(["plain full-batch gradient (floor)", f"{1e3 * floor:.1f}", "1.00",
                          "-"], widths))
    lines.append(fmt_row(["plain gradient in H's chunks ***", f"{1e3 * med['chunked']:.1f}",
                          f"{med['chunked'] / floor:.2f}", "-"], widths))
    lines.append(fmt_row(["loop over samples, norm *", f"{1e3 * t_loop:.0f}",
                          f"{loop_ratio:.1f}", "-"], widths))
    for name in vmap_rules:
        t = med[f"vmap {name}"]
        lines.append(fmt_row([f"vmap per-sample grads, {name} **", f"{1e3 * t:.1f}",
                              f"{vmap_ratio[name]:.2f}", "-"], widths))
    for name in RULES:
        t = med[f"fast {name}"]
        lines.append(fmt_row([f"fast path, {name}", f"{1e3 * t:.1f}", f"{t / floor:.2f}",
                              f"{diff[name]:.1e}"], widths))
    op = opacus_runner(p, 1.0) if device == "cpu" else None
    if op is None:
        lines.append("opacus: not importable here (or not on CPU), row skipped "
                     "(pip install opacus to add it)")
    else:
        t = interleaved_medians({"floor": fns["floor"], "opacus": op}, repeats, device=device)
        h_op = torch.cat([g.reshape(-1) for g in op()])
        h_ref = sc.MeanField(p, sc.NormClip(1.0))(p.theta0)
        d_op = float((h_op - h_ref).norm() / h_ref.norm())
        lines.append(fmt_row(["opacus GradSampleModule hooks, norm", f"{1e3 * t['opacus']:.1f}",
                              f"{t['opacus'] / t['floor']:.2f}", f"{d_op:.1e}"], widths))
        lines.append("  (opacus rel.diff: against sa_clip's H on all N samples)")
    lines.append(f"* loop timed on the first {loop_samples} samples (median of 3 rounds with "
                 f"the floor) and extrapolated linearly to N = {n:,}.")
    lines.append("** vmap rows: median of 3 rounds, ratio to the floor timed in the same rounds.")
    lines.append(f"*** informational: the same plain gradient summed over chunks of {chunk:,} "
                 f"samples, the fast path's chunks (MeanField keeps a chunk's working set near "
                 f"the CPU cache); the floor allocates full-batch intermediates.")
    lines.append(f"rel.diff: ||H_fast - H_vmap|| / ||H_vmap|| on the first {check_n:,} "
                 f"samples, {dtype}.")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    ap.add_argument("--n", type=int, default=None, help="samples (default 20000, quick 2000)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-n", type=int, default=None,
                    help="samples for the memory line (default 10^6, quick 10^5; 0 skips)")
    ap.add_argument("--vmap-all", action="store_true",
                    help="time the vmap path for every rule (default: norm only; it is slow)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    add_keep_freed_memory_option(ap)
    args = ap.parse_args(argv)
    rerun_keeping_freed_memory(args, __file__, argv)
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.device, args.dtype)))
        return
    n = args.n or (2000 if args.quick else 20_000)
    repeats = 3 if args.quick else 15
    loop_samples = 20 if args.quick else 200
    vmap_rules = list(RULES) if args.vmap_all else ["norm"]
    check_n = 200 if args.quick else 1000
    for line in run_table(n, repeats, loop_samples, args.device, getattr(torch, args.dtype),
                          vmap_rules, check_n):
        print(line, flush=True)
    mem_n = args.memory_n if args.memory_n is not None else (10 ** 5 if args.quick else 10 ** 6)
    if mem_n:
        print(memory_line(mem_n, args.device, args.dtype, args.threads), flush=True)


if __name__ == "__main__":
    main()
