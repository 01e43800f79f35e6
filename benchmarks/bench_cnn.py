"""H(theta) on CNNs against the plain gradient over the same chunks, with peers.

Models (``--model``): ``cnn`` (Conv2d 1->16 (kernel 3, padding 1), GroupNorm(4, 16), Tanh,
Conv2d 16->32 (kernel 3, stride 2, padding 1), Tanh, Flatten, Linear 2048->10, P = 25,322;
synthetic 1x16x16 images, N = 4,096); ``lenet`` (LeNet-5 on synthetic 1x28x28 images: conv
1->6 (5, padding 2), tanh, avg-pool, conv 6->16 (5), tanh, avg-pool, linear 400-120-84-10,
P = 61,706, N = 4,096); ``digits`` (scikit-learn's 8x8 digits, N = 1,797: conv 1->16 (3,
padding 1), tanh, conv 16->32 (3, stride 2, padding 1), tanh, linear 512->10, P = 9,930).
Cross-entropy, float32, classic clipping ``NormClip(lam)`` with ``lam`` the median per-sample
gradient norm at theta0 (about half the samples clipped).

Rows, timed round-robin in the same rounds (median of repeats after a warm-up); ratios divide
by the plain gradient summed over H's chunks (``x chunked``, the honest floor: the same
chunks, ordinary autograd) and by the plain full-batch gradient (``x full``):

* the plain full-batch gradient and the plain gradient over H's chunks;
* sa_clip's H with the engine ``MeanField`` picks (``"layers"`` for these models:
  sa_clip.layers) and with the ``"vmap"`` engine;
* a bare chunked ``vmap(grad)`` plus clipping, written by hand, on the same chunks;
* the two-pass ("ghost") order of work: per-sample norms by chunked ``vmap(grad)``, then one
  backward of ``(1/N) sum_i c_i l_i`` with ``c_i`` fixed;
* peers, on the same chunks, when installed (skipped with a line saying so otherwise):
  Opacus ghost clipping (``GradSampleModuleFastGradientClipping``, two backward passes per
  chunk) and BackPACK (``BatchL2Grad`` for the norms, then a weighted backward);
* with ``--rules all``: sa_clip's H for the adaptive, layer-wise and unit-wise rules too.

``peak MiB`` is the peak of the tensor memory one call allocates (torch.profiler's record of
allocations and frees on a CPU, ``max_memory_allocated`` on CUDA); ``faults`` the minor page
faults of one call (``getrusage``). The last lines check exactness: H against the bare
loop (float32, all N) and against a float64 per-sample loop with ``torch.autograd.grad``
(first samples). ``--profile`` prints the torch.profiler table of the floor and of H.

Run from the repository root::

    python benchmarks/bench_cnn.py                        # the CNN (under a minute, 2 cores)
    python benchmarks/bench_cnn.py --model lenet --threads 1
    python benchmarks/bench_cnn.py --model digits --threads 1
    python benchmarks/bench_cnn.py --quick                # N = 512, seconds
    python benchmarks/bench_cnn.py --profile              # and where the time goes
    python benchmarks/bench_cnn.py --keep-freed-memory    # without page-fault costs (glibc)
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
warnings.filterwarnings("ignore", message="Full backward hook is firing")   # the peers' hooks


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Tanh(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2048, 10))


def lenet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
                         nn.Linear(84, 10))


def digits_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(512, 10))


MODELS = {"cnn": "conv 1->16, GroupNorm, tanh, conv 16->32 stride 2, tanh, linear 2048->10",
          "lenet": "LeNet-5 on 28x28: conv 1->6, pool, conv 6->16, pool, linear 400-120-84-10",
          "digits": "digits CNN: conv 1->16, tanh, conv 16->32 stride 2, tanh, linear 512->10"}


def cnn_problem(n: int, dtype=torch.float32, device="cpu", seed: int = 0,
                model: str = "cnn") -> sc.Problem:
    """The model ``model`` on ``n`` samples (synthetic images with random labels; for
    ``digits`` the first ``n`` of scikit-learn's digits, pixels / 16)."""
    gen = torch.Generator().manual_seed(seed)
    if model == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        X = torch.tensor(d.images[:n, None] / 16.0, dtype=torch.float32)
        y = torch.tensor(d.target[:n])
        net = digits_cnn(seed)
    else:
        side = 28 if model == "lenet" else 16
        X = torch.randn(n, 1, side, side, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        net = lenet(seed) if model == "lenet" else cnn(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # the float32 note
        return sc.Problem(net, X, y, "cross_entropy", dtype=dtype, device=device,
                          name=model)


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


def opacus_ghost(p: sc.Problem, lam: float, chunk: int):
    """Opacus ghost clipping on the same chunks (None when Opacus is not installed): per chunk
    a backward with its hooks (per-sample norms), then a backward of ``sum_i c_i l_i``."""
    try:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
    except ImportError:
        return None
    model = copy.deepcopy(p.model).train()    # Opacus records activations in train mode
    gsm = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="sum",
                                               max_grad_norm=lam, use_ghost_clipping=True)
    params = [q for q in model.parameters() if q.requires_grad]

    def run():
        total = [torch.zeros_like(q) for q in params]
        for s in range(0, p.N, chunk):
            lps = F.cross_entropy(gsm(p.X[s:s + chunk]), p.y[s:s + chunk], reduction="none")
            lps.sum().backward(retain_graph=True)
            coef = gsm.get_clipping_coef()
            for q in params:
                q.grad = None
            gsm.disable_hooks()
            (coef * lps).sum().backward()
            gsm.enable_hooks()
            for t, q in zip(total, params):
                t += q.grad
                q.grad = None
        return torch.cat([t.reshape(-1) / p.N for t in total])
    return run


def backpack_l2(p: sc.Problem, lam: float, chunk: int):
    """BackPACK on the same chunks (None when not installed or the model has a layer it does
    not extend): ``BatchL2Grad`` for the per-sample norms, then a weighted backward."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad
    except ImportError:
        return None
    if any(isinstance(m, nn.GroupNorm) for m in p.model.modules()):
        return None
    model = extend(copy.deepcopy(p.model))
    crit = extend(nn.CrossEntropyLoss(reduction="sum"))
    params = [q for q in model.parameters() if q.requires_grad]

    def run():
        total = [torch.zeros_like(q) for q in params]
        for s in range(0, p.N, chunk):
            out = model(p.X[s:s + chunk])
            y = p.y[s:s + chunk]
            with backpack(BatchL2Grad()):
                crit(out, y).backward(retain_graph=True)
            norm = sum(q.batch_l2 for q in params).sqrt()
            w = torch.clamp(lam / norm, max=1.0)
            g = torch.autograd.grad((w * F.cross_entropy(out, y, reduction="none")).sum(),
                                    params)
            for t, q, gq in zip(total, params, g):
                t += gq
                q.grad = None
        return torch.cat([t.reshape(-1) / p.N for t in total])
    return run


def peak_mib(fn, device: str = "cpu") -> float:
    """Peak of the tensor memory allocated during one call of ``fn`` and still live, in MiB:
    on CUDA ``max_memory_allocated``; on a CPU the allocations and frees torch.profiler records
    (``profile_memory=True``), summed in time order (the C allocator's caching, which makes
    the resident size of a process a poor measure of one call, plays no part)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    steps = []
    for e in prof.events():
        v = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if v:
            steps.append((e.time_range.start, v))
    live = peak = 0
    for _, v in sorted(steps):
        live += v
        peak = max(peak, live)
    return peak / 2 ** 20


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
        chunk: int | None, model: str = "cnn") -> list[str]:
    p = cnn_problem(n, device=device, model=model)
    n = p.N
    th = p.theta0
    probe = sc.MeanField(p, sc.NormClip(1.0), engine="vmap")
    lam = float(probe.clip_stats(th).ratios[:, 0].median())      # ratios = norms / 1.0
    rule = sc.NormClip(lam)
    field = sc.MeanField(p, rule, chunk_size=chunk)
    ch = field._chunk(1)
    vfield = sc.MeanField(p, rule, engine="vmap", chunk_size=ch)
    fns = {"floor": plain_gradient(p), "chunked": chunked_gradient(p, ch),
           "H": lambda: field(th), "Hvmap": lambda: vfield(th), "bare": bare_vmap(p, lam, ch),
           "two-pass": two_pass(p, lam, ch)}
    skipped = []
    for key, make, what in (("opacus", opacus_ghost, "Opacus"),
                            ("backpack", backpack_l2, "BackPACK")):
        fn = make(p, lam, ch)
        if fn is None:
            skipped.append(what)
        else:
            fns[key] = fn
    extra = {"adaptive": sc.AdaptiveClip(0.05), "layerwise": sc.LayerwiseAdaptiveClip(0.05),
             "unitwise": sc.UnitwiseAGC(0.05)} if rules == "all" else {}
    for name, r in extra.items():
        fns[name] = _call(sc.MeanField(p, r, chunk_size=ch), th)
    med = interleaved_medians(fns, repeats, device=device)
    flt = {k: faults(fn, device) for k, fn in fns.items()}
    peak = {k: peak_mib(fn, device) for k, fn in fns.items()}
    floor, chunked = med["floor"], med["chunked"]
    kept = "MALLOC_TRIM_THRESHOLD_" in os.environ
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"H(theta) on {MODELS[model]}, N = {n:,}, P = {p.P:,}, {p.dtype}, device "
             f"{device}, {torch.get_num_threads()} threads, NormClip(lam = {lam:.3g}, the "
             f"median per-sample norm), chunks of {ch:,} samples; medians of {repeats} rounds "
             f"after warm-up, all rows timed round-robin in the same rounds; load average "
             f"{load:.1f}" + ("; glibc told to keep freed memory (MALLOC_*_THRESHOLD_)"
                              if kept else "")]
    widths = [50, 9, 10, 7, 9, 9]
    lines.append(fmt_row(["method", "ms", "x chunked", "x full", "peak MiB", "faults"],
                         widths))
    labels = {"floor": "plain full-batch gradient",
              "chunked": "plain gradient over H's chunks (the floor)",
              "H": f"sa_clip H, {field.method} engine, norm",
              "Hvmap": "sa_clip H, vmap engine, norm",
              "bare": "bare chunked vmap(grad) + clipping, norm",
              "two-pass": "two-pass: vmap norms, then backward of sum c_i l_i",
              "opacus": "Opacus ghost clipping (same chunks)",
              "backpack": "BackPACK BatchL2Grad + weighted backward"}
    labels.update({k: f"sa_clip H, {field.method} engine, {k}" for k in extra})
    for k, t in med.items():
        lines.append(fmt_row([labels[k], f"{1e3 * t:.1f}", f"{t / chunked:.2f}",
                              f"{t / floor:.2f}", f"{peak[k]:.1f}", flt[k]], widths))
    if skipped:
        lines.append(f"peers not installed (rows skipped): {', '.join(skipped)}")
    h = field(th)
    diffs = [f"{k} {float((fns[k]() - h).norm() / h.norm()):.1e}"
             for k in ("bare", "opacus", "backpack") if k in fns]
    h2 = torch.cat([t.reshape(-1) for t in fns["two-pass"]()])
    lines.append(f"rel.diff against H ({p.dtype}, all N): {', '.join(diffs)}, two-pass "
                 f"{float((h2 - h).norm() / h.norm()):.1e}, vmap engine "
                 f"{float((vfield(th) - h).norm() / h.norm()):.1e}")
    if check_n:
        sub = cnn_problem(check_n, device=device, model=model)
        hs = sc.MeanField(sub, rule)(sub.theta0).double().cpu()
        ref = loop_reference(sub, lam, check_n)
        lines.append(f"rel.diff against a float64 per-sample loop on {check_n} samples: "
                     f"{float((hs - ref).norm() / ref.norm()):.1e}")
    if profile:
        lines += ["", "profile of the floor (self CPU per op; one call):",
                  profile_table(fns["chunked"]), "profile of H (one call):",
                  profile_table(fns["H"])]
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
    ap.add_argument("--model", choices=sorted(MODELS), default="cnn",
                    help="the CNN (default), LeNet-5 on 28x28, or the digits CNN")
    add_keep_freed_memory_option(ap)
    args = ap.parse_args(argv)
    rerun_keeping_freed_memory(args, __file__, argv)
    torch.set_num_threads(args.threads)
    n = args.n or (512 if args.quick else 4096)
    repeats = args.repeats or (3 if args.quick else 15)
    for line in run(n, repeats, args.device, args.rules, 16 if args.quick else 64,
                    args.profile, args.chunk, args.model):
        print(line, flush=True)


if __name__ == "__main__":
    main()
