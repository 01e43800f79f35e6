"""The attack of issue 24 (the cases the "attack" work covers), each run in its own process
with a deadline, and classified: ``ok`` (a correct result), ``clear`` (an error or warning
naming the argument or the cause), ``vague`` (an error that does not), ``silent`` (a wrong
result without a word), ``lost`` (output thrown away), ``traceback`` (a raw exception of
another kind), ``hang`` (past the deadline).

Run: ``python benchmarks/attack_issue24.py [--repo PATH] [--timeout 120]`` (``--repo`` is the
checkout whose ``sa_clip`` is attacked, default this one). Prints one line per case and the
counts by class. The regression tests are in ``tests/test_attack.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

PRELUDE = """
import functools, os, re, sys, tempfile, warnings, json
import numpy as np, torch
import sa_clip as sc
warnings.simplefilter("error", UserWarning)
warnings.filterwarnings("ignore", message=".*float32.*")
warnings.filterwarnings("ignore", message=".*does not satisfy .A2.*")
D = tempfile.mkdtemp()
def reg(loss, model=None):
    torch.manual_seed(0)
    X = torch.randn(12, 2, dtype=torch.float64); y = torch.randn(12, 1, dtype=torch.float64)
    return sc.Problem(model if model is not None else torch.nn.Linear(2, 1), X, y,
                      loss=loss, dtype=torch.float64)
def resume_pair(la, lb, ma=None, mb=None):
    kw = dict(steps=6, chains=2, seed=0, checkpoint=os.path.join(D, "c.npz"),
              checkpoint_every=2)
    sc.simulate_sgd(reg(la, ma), sc.NormClip(1.0), "harmonic:0.1", **kw)
    sc.simulate_sgd(reg(lb, mb), sc.NormClip(1.0), "harmonic:0.1", resume=True, **kw)
    print("SILENT: resumed a changed problem")
def cli(*args):
    from sa_clip.cli import main
    return main(["run", "--quick", "--samples", "40", "--steps", "40", "--record-every", "4",
                 "--noise-chains", "0", "--portrait-grid", "0", *args])
"""

#: name -> (code, regex a clear message must match)
CASES: dict[str, tuple[str, str]] = {
    "resume closure scale 1 -> 3": ("""
def mk(s): return lambda o, t: s * ((o - t) ** 2).sum()
resume_pair(mk(1.0), mk(3.0))""", r"loss|model"),
    "resume partial w=1 -> 3": ("""
def w(o, t, w): return w * ((o - t) ** 2).sum()
resume_pair(functools.partial(w, w=1.0), functools.partial(w, w=3.0))""", r"loss"),
    "resume HuberLoss delta 0.1 -> 10": ("""
resume_pair(torch.nn.HuberLoss(delta=0.1, reduction="sum"),
            torch.nn.HuberLoss(delta=10.0, reduction="sum"))""", r"loss"),
    "resume module same repr other forward": ("""
def twins():
    class Net(torch.nn.Module):
        def __init__(self): super().__init__(); self.lin = torch.nn.Linear(2, 1)
        def forward(self, x): return self.lin(x)
    A = Net
    class Net(torch.nn.Module):
        def __init__(self): super().__init__(); self.lin = torch.nn.Linear(2, 1)
        def forward(self, x): return 2 * self.lin(x)
    return A, Net
A, B = twins(); torch.manual_seed(1); a = A(); b = B(); b.load_state_dict(a.state_dict())
resume_pair("mse", "mse", a, b)""", r"model"),
    "resume checkpoint of sa_clip 0.0.1": ("""
from sa_clip.sgd import checkpoint as ck
p = reg("mse"); path = os.path.join(D, "v.npz")
kw = dict(steps=6, chains=2, seed=0, checkpoint=path, checkpoint_every=2)
sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", **kw)
arrays, meta = sc.io.load_npz(path, kind=ck.KIND)
parts = {k: meta.get(k) for k in ("config", "fingerprint", "step", "sampler", "seed")}
parts["fingerprint"] = {**parts["fingerprint"], "sa_clip": "0.0.1"}
if hasattr(ck, "_content_digest"):
    sc.io.save_npz(path, arrays, {"kind": ck.KIND, **parts,
                                  "checkpoint_digest": ck._content_digest(arrays, parts)})
sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", resume=True, **kw)
print("SILENT: resumed another version's checkpoint")""", r"sa_clip 0\.0\.1"),
    "resume from a FIFO": ("""
f = os.path.join(D, "fifo.npz"); os.mkfifo(f)
sc.simulate_sgd(reg("mse"), sc.NoClip(), "harmonic:0.1", steps=3, checkpoint=f, resume=True)
print("OK")""", r"FIFO|regular file"),
    "rules={'../escape'} + checkpoint_dir": ("""
d = os.path.join(D, "ck"); os.mkdir(d)
sc.run_experiment(reg("mse"), {"../escape": sc.NormClip(1.0), os.path.join(D, "abs"):
                  sc.NoClip()}, "harmonic:0.1", steps=6, chains=2, record_every=2, starts=2,
                  checkpoint_dir=d)
print("SILENT: wrote outside" if sorted(os.listdir(D)) != ["ck"] else "OK")""", r"^$"),
    "MSE targets 1e200 (H = 0)": ("""
torch.manual_seed(0)
X = torch.randn(20, 3, dtype=torch.float64); y = 1e200 * torch.randn(20, 1, dtype=torch.float64)
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
p = sc.Problem(net, X, y, loss="mse", dtype=torch.float64)
H = sc.MeanField(p, sc.NormClip(1.0))(p.theta0[None])[0]
run = sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", steps=10, chains=2, seed=0)
moved = float((run.theta[:, -1] - run.theta[:, 0]).norm())
print("OK" if float(H.norm()) > 0.1 and moved > 1e-3 else "SILENT: H = 0")""", r"^$"),
    "np.int64 chain index": ("""
p = sc.problems.logistic2d(); r = sc.NormClip(1.0)
run = sc.simulate_sgd(p, r, "power:1.0,0.6", steps=100, chains=2, seed=0)
res = sc.tracking_distance(run, sc.MeanField(p, r), horizon=1.0, keep_paths=[0],
                           starts=[0.5, 2.0], keep_gap=True)
import matplotlib; matplotlib.use("Agg")
from sa_clip.viz import plot_shadowing
plot_shadowing(run, res, chain=np.int64(0), problem=p); print("OK")""", r"^$"),
    "string chain index": ("""
p = sc.problems.logistic2d(); r = sc.NormClip(1.0)
run = sc.simulate_sgd(p, r, "power:1.0,0.6", steps=100, chains=2, seed=0)
res = sc.tracking_distance(run, sc.MeanField(p, r), horizon=1.0, keep_paths=[0],
                           starts=[0.5, 2.0], keep_gap=True)
res.path("0"); print("SILENT: accepted '0'")""", r"`chain`"),
    "plot_shadowing(run_B, result_of_A)": ("""
p = sc.problems.logistic2d(); r = sc.NormClip(1.0)
a = sc.simulate_sgd(p, r, "power:1.0,0.6", steps=200, chains=3, seed=0)
b = sc.simulate_sgd(p, r, "power:1.0,0.6", steps=5, chains=3, seed=1)
res = sc.tracking_distance(a, sc.MeanField(p, r), horizon=1.0, keep_paths=[0],
                           starts=[0.5, 4.0], keep_gap=True)
import matplotlib; matplotlib.use("Agg")
from sa_clip.viz import plot_shadowing
plot_shadowing(b, res, problem=p); print("SILENT: drew run A's result on run B")""",
                                            r"another run|past the end"),
    "plot_shadowing all chains blown up": ("""
p = sc.problems.logistic2d()
run = sc.simulate_sgd(p, sc.NoClip(), "constant:50", steps=60, chains=2, seed=0,
                      blowup_radius=1.0)
res = sc.tracking_distance(run, sc.MeanField(p, sc.NoClip()), horizon=1.0, starts=[0.5],
                           keep_paths=[0], keep_gap=True)
import matplotlib; matplotlib.use("Agg")
from sa_clip.viz import plot_shadowing
fig = plot_shadowing(run, res, problem=p); fig.savefig(os.path.join(D, "s.png")); print("OK")""",
                                           r"blew up"),
    "band=(0.9, 0.1)": ("""
import matplotlib; matplotlib.use("Agg")
from sa_clip.viz import plot_ensemble
plot_ensemble(torch.arange(3.0), torch.ones(2, 3), band=(0.9, 0.1))
print("SILENT: reversed band accepted")""", r"`band`"),
    "--config batch-size and batch_size": ("""
c = os.path.join(D, "c.toml"); open(c, "w").write("batch-size = 2\\nbatch_size = 3\\n")
rc = cli("--config", c, "--out", os.path.join(D, "o"))
print("SILENT: took one of two keys" if rc == 0 else "")""", r"both set"),
    "--workers 999 in summary.json": ("""
rc = cli("--workers", "999", "--out", os.path.join(D, "o"))
w = json.load(open(os.path.join(D, "o", "summary.json")))["config"]["workers"]
print("OK" if w <= 2 else f"SILENT: recorded workers = {w}")""", r"^$"),
    "--quick --chains 2": ("""
rc = cli("--chains", "2", "--workers", "1", "--out", os.path.join(D, "o"))
print("OK" if rc == 0 else "")""", r"^(?!.*tracking-chains)"),
    "--starts 1": ("""
rc = cli("--starts", "1", "--workers", "1", "--out", os.path.join(D, "o"))
n = len([f for f in os.listdir(os.path.join(D, "o")) if f.endswith(".png")]) \\
    if os.path.isdir(os.path.join(D, "o")) else 0
print("OK" if rc == 0 and n >= 5 else f"LOST: {n} figures")""", r"^$"),
    "all chains of a rule blown up (sa-clip run)": ("""
rc = cli("--rule", "none", "--schedule", "constant:1e8", "--workers", "1", "--out",
         os.path.join(D, "o"))
n = len([f for f in os.listdir(os.path.join(D, "o")) if f.endswith(".png")]) \\
    if os.path.isdir(os.path.join(D, "o")) else 0
print("OK" if rc == 0 and n >= 3 else f"LOST: {n} figures")""", r"^$"),
    "--dtype float32 same network": ("""
a = sc.problems.real_problem("wine", dtype=torch.float64)
b = sc.problems.real_problem("wine", dtype=torch.float32)
d = float((b.theta0.double() - a.theta0).abs().max())
print("OK" if d < 1e-6 else f"SILENT: weights differ by {d:.2g}")""", r"^$"),
    "unpicklable worker exception": ("""
from sa_clip._workers import run_jobs
def job():
    class Local(Exception): pass
    raise Local("the secret message")
try:
    list(run_jobs([("a", job), ("b", lambda: 1)], workers=2))
except Exception as e:
    text = str(e) + " ".join(getattr(e, "__notes__", []))
    print("CLEAR" if "the secret message" in str(e) else "VAGUE: " + str(e)[:100])""", r"^$"),
    "simulate_sgd(steps=2**64)": ("""
sc.simulate_sgd(sc.problems.logistic2d(), sc.NoClip(), "harmonic:1", steps=2 ** 64)""",
                                  r"`steps`"),
    "TOML steps = 1e29 (integer)": ("""
c = os.path.join(D, "c.toml"); open(c, "w").write("steps = " + "1" + "0" * 29 + "\\n")
from sa_clip.cli import main
rc = main(["run", "--quick", "--config", c, "--out", os.path.join(D, "o")])""", r"--steps"),
    "sa-clip run --hidden 1000,1000 (up front)": ("""
from sa_clip.cli import main
rc = main(["run", "--hidden", "1000,1000", "--out", os.path.join(D, "o")])
print("" if rc else "LOST: ran")""", r"GiB"),
    "--hidden 1000,1000 --quick under ulimit -v (up front)": ("""
import resource
used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (used + 2 ** 31, resource.RLIM_INFINITY))
rc = cli("--hidden", "1000,1000", "--out", os.path.join(D, "o"))
print("" if rc else "LOST: ran")""", r"RLIMIT_AS"),
}


def classify(rc: int | None, out: str, err: str, clear: str) -> tuple[str, str]:
    text = (out + "\n" + err).strip()
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if rc is None:
        return "hang", "past the deadline"
    for tag, cls in (("SILENT", "silent"), ("LOST", "lost"), ("VAGUE", "vague")):
        if tag in out:
            return cls, out[out.index(tag):].splitlines()[0]
    if "CLEAR" in out:
        return "clear", ""
    if rc == 0 and "OK" in out.split():
        return "ok", ""
    import re
    msg = next((ln for ln in reversed(err.splitlines())
                if "error" in ln.lower() or "Error" in ln), last)
    if "Traceback" in err and not any(k in msg for k in ("ValueError", "TypeError")):
        return "traceback", msg[:160]
    if "sa-clip: error:" in err or "ValueError" in msg or "TypeError" in msg \
            or "UserWarning" in msg:
        ok = re.search(clear, msg) is not None and clear != r"^$"
        return ("clear" if ok else "vague"), msg[:160]
    if rc == 0:
        return "ok", text[-80:]
    return "traceback", msg[:160]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--only", default=None, help="substring of the case names to run")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": args.repo, "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    counts: Counter[str] = Counter()
    for name, (code, clear) in CASES.items():
        if args.only and args.only not in name:
            continue
        src = PRELUDE + textwrap.dedent(code)
        with tempfile.TemporaryDirectory() as cwd:
            try:
                proc = subprocess.run([sys.executable, "-c", src], capture_output=True,
                                      text=True, timeout=args.timeout, env=env, cwd=cwd)
                rc, out, err = proc.returncode, proc.stdout, proc.stderr
            except subprocess.TimeoutExpired:
                rc, out, err = None, "", ""
        cls, why = classify(rc, out, err, clear)
        counts[cls] += 1
        print(f"{cls:9s} {name}" + (f"  -- {why}" if why else ""), flush=True)
    print("counts: " + ", ".join(f"{k} {counts[k]}" for k in
                                 ("silent", "traceback", "lost", "hang", "vague", "clear",
                                  "ok")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
