"""The general (vmap) engine on a small CNN: H(theta) against one plain full-batch gradient.

Model: Conv2d 1->16 (kernel 3, padding 1), GroupNorm(4, 16), Tanh, Conv2d 16->32 (kernel 3,
stride 2, padding 1), Tanh, Flatten, Linear 2048->10 (P = 25,322); synthetic 1x16x16 images,
10 classes, cross-entropy, N = 4,096, float32, 2 threads. Classic clipping ``NormClip(lam)``
with ``lam`` the median per-sample gradient norm at theta0 (about half the samples clipped).
The fast engine does not serve convolutions, so ``MeanField`` uses the vmap engine here.

Rows, timed round-robin in the same rounds (median of repeats after a warm-up; ratios divide
by the floor of the same run):

* one plain full-batch gradient of the mean loss with ordinary autograd (the floor);
* sa_clip's H: ``MeanField(problem, NormClip(lam), engine="vmap")``;
* a bare chunked ``vmap(grad)`` plus clipping, written by hand (per-sample gradients of
  ``functional_call``, their norms, ``sum_i min(1, lam / ||g_i||) g_i``), on the same chunks;
* for information: the plain gradient summed over H's chunks (what chunking alone does to the
  floor), and the two-pass ("ghost") order of work, per-sample norms by chunked ``vmap(grad)``
  and then one backward of ``(1/N) sum_i c_i l_i`` with ``c_i`` fixed (exact, but the second
  pass costs a whole forward and backward, where the one-pass engine reads the per-sample
  gradients it already has once more);
* with ``--rules all``: sa_clip's H for the adaptive, layer-wise and unit-wise rules too.

``faults`` is the number of minor page faults of one call after the timing (``getrusage``):
every fresh page the allocator takes from the kernel is one, and on small VMs they cost
microseconds each, so a call that allocates big new tensors (the full-batch floor's
activations are 4,096 x 16 x 16 x 16 floats, 64 MiB each) pays for them in kernel time.
The last lines check exactness: H against the bare loop (float32, all N) and against a
float64 per-sample loop with ``torch.autograd.grad`` (first samples). ``--profile`` prints
the torch.profiler table (self CPU time per op) of the floor and of H.

Run from the repository root::

    python benchmarks/bench_cnn.py              # the table (under a minute on 2 cores)
    python benchmarks/bench_cnn.py --quick      # N = 512, seconds
    python benchmarks/bench_cnn.py --profile    # and where the time goes
    python benchmarks/bench_cnn.py --keep-freed-memory   # without page-fault costs (glibc)
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (  # noqa: E402
    add_keep_freed_memory_option,
    add_repo_to_path,
    fmt_row,
    interleaved_medians,
    rerun_keeping_freed_memory,
    sync,
)

add_repo_to_path()
import sa_clip as sc  # noqa: E402

warnings.filterwarnings("ignore", message="this problem is float32")


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Tanh(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2048, 10))


def cnn_problem(n: int, dtype=torch.float32, device="cpu", seed: int = 0) -> sc.Problem:
    """The CNN on ``n`` synthetic 1x16x16 images with random labels."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 16, 16, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # the float32 note
        return sc.Problem(cnn(seed), X, y, "cross_entropy", dtype=dtype, device=device,
                          name="cnn")


def plain_gradient(p: sc.Problem):
    """One full-batch gradient of the mean loss with ordinary autograd (the floor)."""
    model = copy.deepcopy(p.model)
    params = list(model.parameters())
    return lambda: torch.autograd.grad(F.cross_entropy(model(p.X), p.y), params)


def bare_vmap(p: sc.Problem, lam: float, chunk: int):
    """Chunked ``vmap(grad)`` of ``functional_call`` plus classic clipping, by hand."""
    model = copy.deepcopy(p.model)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(prm, x, y):
        return F.cross_entropy(functional_call(model, prm, (x[None],)), y[None])

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def run():
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for s in range(0, p.N, chunk):
            g = per_sample(params, p.X[s:s + chunk], p.y[s:s + chunk])
            sq = sum(torch.linalg.vector_norm(v.flatten(1), dim=1).square() for v in g.values())
            w = torch.clamp(lam / sq.sqrt(), max=1.0)
            for k, v in g.items():
                total[k] += torch.tensordot(w, v, 1)
        return torch.cat([total[k].reshape(-1) / p.N for k in params])
    return run


def chunked_gradient(p: sc.Problem, chunk: int):
    """The plain gradient of the mean loss summed over chunks of ``chunk`` samples."""
    model = copy.deepcopy(p.model)
    params = list(model.parameters())

    def run():
        total = [torch.zeros_like(q) for q in params]
        for s in range(0, p.N, chunk):
            loss = F.cross_entropy(model(p.X[s:s + chunk]), p.y[s:s + chunk],
                                   reduction="sum") / p.N
            for t, g in zip(total, torch.autograd.grad(loss, params)):
                t += g
        return total
    return run


def two_pass(p: sc.Problem, lam: float, chunk: int):
    """The "ghost" order of work: per-sample norms first (chunked ``vmap(grad)``, gradients
    dropped after their norms), then one backward of ``(1/N) sum_i c_i l_i`` with the weights
    ``c_i = min(1, lam / ||g_i||)`` held fixed, which is H exactly."""
    model = copy.deepcopy(p.model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    plist = list(model.parameters())

    def loss_one(prm, x, y):
        return F.cross_entropy(functional_call(model, prm, (x[None],)), y[None])

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def run():
        norms = []
        for s in range(0, p.N, chunk):
            g = per_sample(params, p.X[s:s + chunk], p.y[s:s + chunk])
            norms.append(sum(torch.linalg.vector_norm(v.flatten(1), dim=1).square()
                             for v in g.values()).sqrt())
        w = torch.clamp(lam / torch.cat(norms), max=1.0)
        loss = (w * F.cross_entropy(model(p.X), p.y, reduction="none")).sum() / p.N
        return torch.autograd.grad(loss, plist)
    return run


def loop_reference(p: sc.Problem, lam: float, n: int) -> torch.Tensor:
    """float64 mean of the clipped per-sample gradients of the first ``n`` samples, one
    ``torch.autograd.grad`` per sample."""
    model = copy.deepcopy(p.model).double()
    params = list(model.parameters())
    total = torch.zeros(p.P, dtype=torch.float64)
    for i in range(n):
        out = model(p.X[i:i + 1].double().cpu())
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(
            F.cross_entropy(out, p.y[i:i + 1].cpu()), params)])
        total += g * min(1.0, lam / float(g.norm()))
    return total / n


def faults(fn, device) -> int:
    """Minor page faults of one call of ``fn``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    sync(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def profile_table(fn, rows: int = 14) -> str:
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=32,
        max_shapes_column_width=70)


def _call(field: sc.MeanField, theta: torch.Tensor):
    return lambda: field(theta)


def run(n: int, repeats: int, device: str, rules: str, check_n: int, profile: bool,
        chunk: int | None) -> list[str]:
    p = cnn_problem(n, device=device)
    th = p.theta0
    probe = sc.MeanField(p, sc.NormClip(1.0), engine="vmap")
    lam = float(probe.clip_stats(th).ratios[:, 0].median())      # ratios = norms / 1.0
    rule = sc.NormClip(lam)
    field = sc.MeanField(p, rule, engine="vmap", chunk_size=chunk)
    ch = field._chunk(1)
    fns = {"floor": plain_gradient(p), "H": lambda: field(th), "bare": bare_vmap(p, lam, ch),
           "chunked": chunked_gradient(p, ch), "two-pass": two_pass(p, lam, ch)}
    extra = {"adaptive": sc.AdaptiveClip(0.05), "layerwise": sc.LayerwiseAdaptiveClip(0.05),
             "unitwise": sc.UnitwiseAGC(0.05)} if rules == "all" else {}
    for name, r in extra.items():
        fns[name] = _call(sc.MeanField(p, r, engine="vmap", chunk_size=chunk), th)
    med = interleaved_medians(fns, repeats, device=device)
    flt = {k: faults(fn, device) for k, fn in fns.items()}
    floor = med["floor"]
    kept = "MALLOC_TRIM_THRESHOLD_" in os.environ
    lines = [f"H(theta) on a CNN (conv 1->16, GroupNorm, tanh, conv 16->32 stride 2, tanh, "
             f"linear 2048->10), N = {n:,}, P = {p.P:,}, {p.dtype}, device {device}, "
             f"{torch.get_num_threads()} threads, NormClip(lam = {lam:.3g}, the median "
             f"per-sample norm), chunks of {ch:,} samples; medians of {repeats} rounds after "
             f"warm-up, all rows timed round-robin in the same rounds"
             + ("; glibc told to keep freed memory (MALLOC_*_THRESHOLD_)" if kept else "")]
    widths = [44, 9, 8, 9]
    lines.append(fmt_row(["method", "ms", "x floor", "faults"], widths))
    labels = {"floor": "plain full-batch gradient (floor)",
              "H": "sa_clip H, vmap engine, norm",
              "bare": "bare chunked vmap(grad) + clipping, norm",
              "chunked": "plain gradient in H's chunks (info)",
              "two-pass": "two-pass: norms, then backward of sum c_i l_i"}
    labels.update({k: f"sa_clip H, vmap engine, {k}" for k in extra})
    for k, t in med.items():
        lines.append(fmt_row([labels[k], f"{1e3 * t:.1f}", f"{t / floor:.2f}", flt[k]],
                             widths))
    h = field(th)
    hb = fns["bare"]()
    h2 = torch.cat([t.reshape(-1) for t in fns["two-pass"]()])
    lines.append(f"rel.diff against H ({p.dtype}, all N): bare "
                 f"{float((hb - h).norm() / h.norm()):.1e}, two-pass "
                 f"{float((h2 - h).norm() / h.norm()):.1e}")
    if check_n:
        sub = cnn_problem(check_n, device=device)
        hs = sc.MeanField(sub, rule, engine="vmap")(sub.theta0).double().cpu()
        ref = loop_reference(sub, lam, check_n)
        lines.append(f"rel.diff against a float64 per-sample loop on {check_n} samples: "
                     f"{float((hs - ref).norm() / ref.norm()):.1e}")
    if profile:
        lines += ["", "profile of the floor (self CPU per op; one call):",
                  profile_table(fns["floor"]), "profile of H (one call):", profile_table(fns["H"])]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    ap.add_argument("--n", type=int, default=None, help="samples (default 4096, quick 512)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 15, quick 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=None,
                    help="samples per chunk (default: MeanField's choice)")
    ap.add_argument("--rules", choices=["norm", "all"], default="norm",
                    help="'all' adds the adaptive, layer-wise and unit-wise rules")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    add_keep_freed_memory_option(ap)
    args = ap.parse_args(argv)
    rerun_keeping_freed_memory(args, __file__, argv)
    torch.set_num_threads(args.threads)
    n = args.n or (512 if args.quick else 4096)
    repeats = args.repeats or (3 if args.quick else 15)
    for line in run(n, repeats, args.device, args.rules, 16 if args.quick else 64,
                    args.profile, args.chunk):
        print(line, flush=True)


if __name__ == "__main__":
    main()
