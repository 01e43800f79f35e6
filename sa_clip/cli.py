"""The ``sa-clip`` command: run clipped SGD against its ODE and draw what happens.

Subcommands (``sa-clip SUBCOMMAND --help`` for each):

* ``run``        the main job: the paper's network on a bundled data set, classic and adaptive
                 clipping, the ODE against many SGD chains, tracking distances; PNGs and
                 ``summary.json`` into ``--out``.
* ``portrait``   phase portrait of a 2-parameter problem with ODE curves and SGD chains.
* ``tracking``   tracking distance ``D_T(s)`` of many chains.
* ``equilibria`` equilibria of ``H`` with eigenvalues, classification and the clipping bias.
* ``bench``      the benchmark scripts in ``benchmarks/`` (or a small built-in timing).

Common options may also come from ``--config FILE.toml`` (keys are the long option names,
with dashes or underscores); the command line wins over the file. Bad arguments give one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from . import distributed  # noqa: E402
from . import problems as zoo  # noqa: E402
from .clipping import RULES, ClipRule, make_rule  # noqa: E402
from .equilibria import clipping_bias, find_equilibria  # noqa: E402
from .meanfield import CLIP_PER, MeanField  # noqa: E402
from .ode import solve_ode  # noqa: E402
from .plane import Plane, field_on_plane  # noqa: E402
from .problem import Problem  # noqa: E402
from .schedules import make_schedule  # noqa: E402
from .sgd import simulate_sgd  # noqa: E402
from .tracking import tracking_distance  # noqa: E402
from .trajectory import Trajectory  # noqa: E402

PROG = "sa-clip"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
RULE_LABELS = {"none": "no clipping", "norm": "classic (norm)", "adaptive": "adaptive",
               "layerwise": "layer-wise adaptive", "unitwise": "unit-wise (AGC)",
               "value": "value clipping"}
COLORS = ["#2166ac", "#b35806", "#1b7837", "#762a83", "#d6604d"]


class CliError(Exception):
    """A bad argument found after parsing (one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors on ONE line (no usage block) and exits with 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------------------- files
def save_figure(fig, out: str | os.PathLike, name: str, *, dpi: int | None = None) -> Path:
    """Save ``fig`` as ``out/name`` (directories created), close it, return the path.
    ``dpi`` defaults to matplotlib's ``savefig.dpi``."""
    path = Path(out) / name
    if distributed.is_main_process():      # under torchrun only rank 0 writes
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, **({} if dpi is None else {"dpi": dpi}))
    plt.close(fig)
    return path


def save_animation(anim, path: str | os.PathLike, *, fps: int = 12, dpi: int = 80) -> Path:
    """Save a matplotlib animation: ``.gif`` with pillow, ``.mp4`` with ffmpeg (which must be
    installed: otherwise a ``ValueError`` says so)."""
    from matplotlib import animation

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        writer = animation.PillowWriter(fps=fps)
    elif suffix == ".mp4":
        if not animation.FFMpegWriter.isAvailable():
            raise ValueError(f"saving {str(path)!r} needs ffmpeg, which was not found: install "
                             "it or save a .gif instead.")
        writer = animation.FFMpegWriter(fps=fps)
    else:
        raise ValueError(f"animation path must end in .gif or .mp4, got {str(path)!r}.")
    anim.save(path, writer=writer, dpi=dpi)
    plt.close(anim._fig)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    if not distributed.is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _num(x: Any) -> float | None:
    """A finite float for JSON, None for NaN/inf."""
    v = float(x)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------- building blocks
def build_problem(args: argparse.Namespace) -> Problem:
    """The problem named by ``--problem`` (zoo name), in ``--dtype`` on ``--device``."""
    dtype = DTYPES[args.dtype]
    kwargs: dict[str, Any] = {"dtype": dtype}
    name = args.problem
    if name in zoo.DATASETS:
        kwargs["hidden"] = _hidden(getattr(args, "hidden", "16"))
        kwargs["seed"] = args.seed
        if getattr(args, "samples", None):
            kwargs["n"] = args.samples
    problem = zoo.make_problem(name, **kwargs)
    if args.device not in (None, "cpu"):
        problem = Problem(problem.model, problem.X, problem.y, problem._loss, dtype=dtype,
                          device=args.device, name=problem.name)
    return problem


def _hidden(spec: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in str(spec).split(",") if s.strip())
    except ValueError:
        raise CliError(f"`--hidden` must be comma-separated layer widths such as 16 or 32,16, "
                       f"got {spec!r}.") from None
    if not sizes or min(sizes) < 1:
        raise CliError(f"`--hidden` must hold widths >= 1, got {spec!r}.")
    return sizes


def build_rule(name: str, args: argparse.Namespace) -> ClipRule:
    """A clipping rule from its registry name and ``--lam``/``--eps``."""
    lam = args.lam
    if name == "adaptive" and getattr(args, "adaptive_lam", None) is not None:
        lam = args.adaptive_lam
    return make_rule(name, lam=lam, eps=args.eps)


def rule_names(spec: str) -> list[str]:
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    bad = [n for n in names if n not in RULES]
    if not names or bad:
        raise CliError(f"`--rule` must be one or more of {sorted(RULES)} separated by commas, "
                       f"got {spec!r}.")
    return names


def simulate(problem: Problem, rule: ClipRule, args: argparse.Namespace, *,
             chains: int | None = None, record_noise: bool = False, theta0: Any = None,
             steps: int | None = None) -> Trajectory:
    """The one place the CLI runs clipped SGD. With ``--checkpoint DIR`` (or ``--resume``, whose
    default folder is ``OUT/checkpoints``) each run writes ``DIR/<rule>[-noise].ckpt.npz`` every
    ``--checkpoint-every`` steps, and ``--resume`` continues from those files bit for bit."""
    ckpt = getattr(args, "checkpoint", None)
    if ckpt is None and getattr(args, "resume", False):
        ckpt = Path(args.out) / "checkpoints"
    path = None
    if ckpt is not None:
        path = Path(ckpt) / f"{rule.name}{'-noise' if record_noise else ''}.ckpt.npz"
        if distributed.is_main_process():
            path.parent.mkdir(parents=True, exist_ok=True)
        else:                        # every rank runs the same chains; one writes checkpoints
            path = None
    return simulate_sgd(problem, rule, args.schedule, steps=steps or args.steps,
                        chains=chains or args.chains, batch_size=args.batch_size,
                        clip_per=args.clip_per, seed=args.seed, theta0=theta0,
                        record_every=args.record_every, record_noise=record_noise,
                        field=make_field(problem, rule), progress=args.progress,
                        checkpoint=path, checkpoint_every=getattr(args, "checkpoint_every", 500),
                        resume=bool(getattr(args, "resume", False)) and path is not None)


def make_field(problem: Problem, rule: ClipRule) -> MeanField:
    """The mean field, sharded over the process group when launched by ``torchrun``."""
    return MeanField(problem, rule, distributed=distributed.is_active())


def _log(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, flush=True)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


# ---------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    """ODE vs SGD chains for each rule, tracking distances, figures and summary.json."""
    from .viz import (
        noise_figure,
        ode_vs_sgd_figure,
        plot_clip_fraction,
        plot_ensemble,
        plot_phase_portrait,
        plot_tracking,
    )

    t_start = time.perf_counter()
    out = Path(args.out)
    problem = build_problem(args)
    rules = [build_rule(n, args) for n in rule_names(args.rule)]
    names = rule_names(args.rule)
    _log(args, f"{problem!r}\nschedule {make_schedule(args.schedule)}, {args.steps} steps, "
               f"{args.chains} chains, batch size {args.batch_size}, clip per {args.clip_per}")
    results, runs, sols, tracks = [], {}, {}, {}
    figs: list[str] = []
    fig_track, ax_track = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    fig_clip, ax_clip = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    fig_loss, ax_loss = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for k, (name, rule) in enumerate(zip(names, rules)):
        color = COLORS[k % len(COLORS)]
        label = RULE_LABELS.get(name, name)
        t0 = time.perf_counter()
        run = simulate(problem, rule, args)
        t1 = time.perf_counter()
        field = make_field(problem, rule)
        sol = solve_ode(field, problem.theta0, run.tau, progress=args.progress)
        t2 = time.perf_counter()
        last = float(run.tau[-1])
        horizon = min(args.horizon, 0.5 * last)
        starts = torch.linspace(0.0, last - horizon, args.starts, dtype=torch.float64)
        sub = Trajectory(run.theta[:args.tracking_chains], run.tau, run.steps,
                         run.blowup_step[:args.tracking_chains],
                         run.clip_fraction[:args.tracking_chains], meta=run.meta)
        tr = tracking_distance(sub, field, horizon=horizon, starts=starts)
        t3 = time.perf_counter()
        runs[name], sols[name], tracks[name] = run, sol, tr
        # pictures: coordinates on the PCA plane of the chains and the ODE
        plane = Plane.pca(torch.cat([run.theta.reshape(-1, problem.P), sol.theta]))
        fig = ode_vs_sgd_figure(run, sol, coords=(0, 1), plane=plane,
                                title=f"{problem.name}, {label} clipping ({rule}): "
                                      "SGD chains vs ODE on the PCA plane")
        figs.append(str(save_figure(fig, out, f"ode_vs_sgd_{name}.png")))
        plot_tracking(tr, ax_track, label=label, color=color)
        plot_clip_fraction(run, ax_clip, label=label, color=color)
        losses = problem.loss(run.theta.reshape(-1, problem.P)).reshape(run.chains, -1)
        ode_loss = problem.loss(sol.theta)
        plot_ensemble(run.tau, losses, ax_loss, color=color, label=f"SGD, {label}",
                      n_faint=3, logy=True)
        ax_loss.plot(run.tau, ode_loss, "--", color=color, lw=1.6, label=f"ODE, {label}")
        if k == 0 and args.portrait_grid > 1:
            pf = field_on_plane(field, plane, *_ranges(plane, run.theta, sol.theta),
                                n=args.portrait_grid)
            ax = plot_phase_portrait(pf, ode_paths=sol.theta, chains=run.theta, max_chains=16,
                                     title=f"−H projected on the PCA plane ({label})")
            figs.append(str(save_figure(ax.figure, out, f"portrait_{name}.png")))
        noise_s = None
        if k == 0 and args.noise_chains > 0:
            tn = time.perf_counter()
            nrun = simulate(problem, rule, args, chains=args.noise_chains, record_noise=True,
                            steps=min(args.noise_steps, args.steps))
            fig = noise_figure(nrun)
            fig.suptitle(f"martingale noise, {label} clipping, {args.noise_chains} chains, "
                         f"first {nrun.steps[-1]} steps")
            figs.append(str(save_figure(fig, out, f"noise_{name}.png")))
            noise_s = time.perf_counter() - tn
        tail = max(1, run.records // 10)
        final_sgd = torch.nanmedian(losses[:, -1]).item()
        res = {
            "rule": rule.to_dict(), "label": label,
            "final_loss_ode": _num(ode_loss[-1]), "final_loss_sgd_median": _num(final_sgd),
            "clip_fraction_late": _num(torch.nanmean(run.clip_fraction[:, -tail - 1:-1])),
            "tracking_early": _num(tr.median[0]), "tracking_late": _num(tr.median[-1]),
            "tracking_starts": tr.start.tolist(),
            "tracking_median": [_num(v) for v in tr.median],
            "tracking_horizon": horizon, "blowups": int(run.blown_up.sum()),
            "tau_last": last, "ode_status": sol.message, "ode_nfev": sol.nfev,
            "seconds": {"sgd": t1 - t0, "ode": t2 - t1, "tracking": t3 - t2,
                        "noise": noise_s},
        }
        results.append(res)
        _log(args, f"  {label}: SGD {t1 - t0:.1f} s, ODE {t2 - t1:.1f} s ({sol.nfev} evals), "
                   f"tracking {t3 - t2:.1f} s ({tr.nfev} evals)")
    ax_loss.set_xlabel("ODE time τ")
    ax_loss.set_ylabel("full-data loss L(θ)")
    ax_loss.set_title(f"loss along the ODE and the SGD chains ({problem.name})", fontsize=10)
    ax_loss.legend(fontsize=7, framealpha=0.85)
    ax_clip.set_title("fraction of samples clipped per step", fontsize=10)
    figs += [str(save_figure(f, out, n)) for f, n in
             ((fig_track, "tracking.png"), (fig_clip, "clip_fraction.png"),
              (fig_loss, "loss.png"))]
    total = time.perf_counter() - t_start
    summary = {"command": "run", "problem": repr(problem), "config": _config_dict(args),
               "results": results, "figures": figs, "seconds": total}
    _write_json(out / "summary.json", summary)
    print(_table([[r["label"], r["final_loss_ode"], r["final_loss_sgd_median"],
                   r["clip_fraction_late"], r["tracking_early"], r["tracking_late"],
                   r["blowups"]] for r in results],
                 ["rule", "loss ODE", "loss SGD", "clipped", "D_T early", "D_T late",
                  "blow-ups"]))
    print(f"wrote {len(figs)} figures and summary.json to {out}/ in {total:.0f} s")
    return 0


def _ranges(plane: Plane, *paths: torch.Tensor) -> tuple[tuple[float, float], ...]:
    """Plane coordinate ranges covering ``paths`` with a 15% margin."""
    pts = torch.cat([plane.project(p.reshape(-1, p.shape[-1])) for p in paths])
    pts = pts[torch.isfinite(pts).all(1)]
    lo, hi = pts.min(0).values, pts.max(0).values
    pad = 0.15 * (hi - lo).clamp(min=1e-3)
    return tuple((float(lo[i] - pad[i]), float(hi[i] + pad[i])) for i in range(2))


def _config_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("func", "progress")}


# ---------------------------------------------------------------------------- portrait
def cmd_portrait(args: argparse.Namespace) -> int:
    """Phase portrait of a 2-parameter problem with equilibria, ODE curves and SGD chains."""
    from .viz import animate_chains, plot_phase_portrait

    problem = build_problem(args)
    if problem.P != 2:
        raise CliError(f"`--problem` {args.problem!r} has P = {problem.P} parameters; the "
                       "portrait needs a 2-parameter problem (tanh, logistic2d).")
    rule = build_rule(rule_names(args.rule)[0], args)
    field = make_field(problem, rule)
    r = args.extent
    plane = Plane.coordinates(problem)
    pf = field_on_plane(field, plane, (-r, r), (-r, r), n=args.grid)
    eq = find_equilibria(field, n_starts=args.n_starts, scale=r / 2, seed=args.seed)
    run = simulate(problem, rule, args)
    angles = torch.linspace(0, 2 * math.pi, args.ode_starts + 1, dtype=torch.float64)[:-1]
    starts = 0.9 * r * torch.stack([angles.cos(), angles.sin()], 1).to(problem.dtype)
    sol = solve_ode(field, starts, torch.linspace(0, args.ode_time, 200, dtype=torch.float64))
    ax = plot_phase_portrait(pf, equilibria=eq, ode_paths=sol.theta, chains=run.theta,
                             title=f"{problem.name}: −H for {rule}")
    out = Path(args.out)
    path = save_figure(ax.figure, out, "portrait.png")
    print(f"wrote {path}")
    if args.gif:
        ode_run = solve_ode(field, problem.theta0, run.tau)
        anim = animate_chains(pf, run, ode=ode_run, equilibria=eq, frames=args.frames)
        print(f"wrote {save_animation(anim, out / 'portrait.gif')}")
    return 0


# ---------------------------------------------------------------------------- tracking
def cmd_tracking(args: argparse.Namespace) -> int:
    """D_T(s) of many chains for each rule: a table and tracking.png."""
    from .viz import plot_tracking

    problem = build_problem(args)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    rows = []
    for k, name in enumerate(rule_names(args.rule)):
        rule = build_rule(name, args)
        run = simulate(problem, rule, args)
        last = float(run.tau[-1])
        horizon = min(args.horizon, 0.5 * last)
        starts = torch.linspace(0.0, last - horizon, args.starts, dtype=torch.float64)
        res = tracking_distance(run, make_field(problem, rule), horizon=horizon, starts=starts)
        plot_tracking(res, ax, label=RULE_LABELS.get(name, name), color=COLORS[k % 5])
        for s, m, q in zip(res.start.tolist(), res.median.tolist(),
                           res.quantile(0.9).tolist()):
            rows.append([name, s, m, q])
    print(_table(rows, ["rule", "start s", "median D_T", "90% quantile"]))
    print(f"wrote {save_figure(fig, args.out, 'tracking.png')}")
    return 0


# ---------------------------------------------------------------------------- equilibria
def cmd_equilibria(args: argparse.Namespace) -> int:
    """Table of the zeros of H: position, eigenvalues of DH, kind, and the clipping bias."""
    problem = build_problem(args)
    rule = build_rule(rule_names(args.rule)[0], args)
    field = make_field(problem, rule)
    found = find_equilibria(field, n_starts=args.n_starts, scale=args.extent, seed=args.seed)
    eq = [e for e in found if float(e.theta.norm()) <= args.max_norm]
    print(f"{problem!r}, {rule}: {len(eq)} equilibria from {args.n_starts} starts")
    if len(eq) < len(found):
        print(f"({len(found) - len(eq)} more with ||theta|| > {args.max_norm:g} not shown: far "
              "out, saturated activations make H vanish numerically; --max-norm shows them)")
    rows = []
    for e in eq:
        theta = ", ".join(f"{v:.4g}" for v in e.theta.tolist()[:4])
        theta += ", ..." if problem.P > 4 else ""
        ev = ", ".join(_fmt_complex(v) for v in sorted(e.eigenvalues, key=lambda z: z.real)[:4])
        bias = clipping_bias(field, e.theta) if e.kind == "stable" else None
        rows.append([f"[{theta}]", f"{e.kind} {e.shape}", ev, e.residual, e.switch_margin,
                     e.count, bias.grad_norm if bias else "-", bias.distance if bias else "-"])
    print(_table(rows, ["theta*", "kind", "eigenvalues of DH", "||H||", "switch margin",
                        "starts", "||grad L(θ*)||", "dist to unclipped min"]))
    return 0


def _fmt_complex(z: complex) -> str:
    return f"{z.real:.3g}" if abs(z.imag) < 1e-12 else f"{z.real:.3g}{z.imag:+.3g}j"


# ---------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """Run benchmarks/bench_*.py (with --quick) when they are present, else a built-in timing."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    scripts = sorted(root.glob("bench_*.py")) if root.is_dir() else []
    if scripts and not args.builtin:
        for s in scripts:
            _log(args, f"== {s.name} --quick")
            cmd = [sys.executable, str(s), "--quick"] if "--quick" in s.read_text() else [
                sys.executable, str(s)]
            proc = subprocess.run(cmd, cwd=root.parent)
            if proc.returncode:
                raise CliError(f"{s.name} failed with exit code {proc.returncode}.")
        return 0
    problem = build_problem(args)
    rule = build_rule(rule_names(args.rule)[0], args)
    field = make_field(problem, rule)
    plain = MeanField(problem, make_rule("none"))
    thetas = problem.theta0 + 0.01 * torch.randn(
        args.chains, problem.P, generator=torch.Generator().manual_seed(args.seed),
        dtype=torch.float64).to(problem.theta0)
    rows = []
    for label, fn in ((f"H, clipped ({rule})", lambda: field(thetas)),
                      ("H, unclipped (NoClip)", lambda: plain(thetas)),
                      ("gradient, unclipped (Problem.gradient)",
                       lambda: problem.gradient(thetas))):
        rows.append([label, _median_time(fn, args.repeats) * 1e3])
    print(f"{problem!r}, K = {args.chains} parameter vectors, median of {args.repeats}")
    print(_table(rows, ["computation", "ms"]))
    return 0


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


# ---------------------------------------------------------------------------- parser
#: per-command defaults of the common options (None: the option is not used by the command)
DEFAULTS: dict[str, dict[str, Any]] = {
    "run": dict(problem="wine", hidden="16", rule="norm,adaptive", lam=1.0, adaptive_lam=0.3,
                eps=1e-3, schedule="power:1.0,0.6", steps=3000, chains=64, batch_size=1,
                clip_per="sample", seed=0, record_every=10, out="figures/run", horizon=1.0,
                starts=12, tracking_chains=64, noise_chains=8, noise_steps=1000, portrait_grid=21,
                checkpoint=None, checkpoint_every=500, resume=False),
    "portrait": dict(problem="tanh", rule="norm", lam=1.0, eps=1e-3, schedule="harmonic:1.0",
                     steps=400, chains=32, batch_size=1, clip_per="sample", seed=0,
                     record_every=2, out="figures/portrait", extent=3.0, grid=41, ode_starts=8,
                     ode_time=8.0, n_starts=12, frames=60),
    "tracking": dict(problem="logreg", rule="norm", lam=1.0, eps=1e-3,
                     schedule="power:2.0,0.7", steps=400, chains=16, batch_size=1,
                     clip_per="sample", seed=0, record_every=2, out="figures/tracking",
                     horizon=1.0, starts=6),
    "equilibria": dict(problem="tanh", rule="norm", lam=1.0, eps=1e-3, seed=0, n_starts=24,
                       extent=1.5, max_norm=100.0),
    "bench": dict(problem="wine", rule="norm", lam=1.0, eps=1e-3, chains=64, seed=0,
                  repeats=5),
}
#: what ``--quick`` changes in ``run``
QUICK = dict(steps=300, chains=16, record_every=5, starts=4, tracking_chains=6, noise_chains=3,
             noise_steps=100, portrait_grid=11, samples=60)


def _common(p: argparse.ArgumentParser, cmd: str) -> None:
    d = DEFAULTS[cmd]
    g = p.add_argument_group("common options")
    g.add_argument("--problem", choices=sorted(zoo.PROBLEMS),
                   help=f"ready-made problem (default {d['problem']}); data-set names use the "
                        "paper's sigmoid network")
    g.add_argument("--rule", help=f"clipping rule(s), comma-separated, from {sorted(RULES)} "
                                  f"(default {d['rule']})")
    g.add_argument("--lam", type=float, help=f"clipping threshold lambda (default {d['lam']})")
    g.add_argument("--eps", type=float, help=f"epsilon of the adaptive rules (default "
                                             f"{d['eps']})")
    g.add_argument("--seed", type=int, help=f"random seed (default {d['seed']})")
    g.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="float64 (default) or float32")
    g.add_argument("--out", help="output folder (default figures/<command>)")
    g.add_argument("--config", metavar="FILE.toml",
                   help="read options from a TOML file (keys: long option names); the command "
                        "line wins")
    g.add_argument("--quiet", action="store_true", default=None,
                   help="no progress bars or chatter")
    if "steps" in d:
        g.add_argument("--schedule", help=f"step sizes: constant:A0 | harmonic:A0[,N0] | "
                                          f"power:A0,ALPHA[,N0] (default {d['schedule']})")
        g.add_argument("--steps", type=int, help=f"SGD steps (default {d['steps']})")
        g.add_argument("--batch-size", type=int, help="samples per SGD step (default 1)")
        g.add_argument("--clip-per", choices=list(CLIP_PER),
                       help="clip each sample's gradient (default) or the batch mean")
        g.add_argument("--record-every", type=int,
                       help=f"record every k-th step (default {d['record_every']})")
    if "chains" in d:
        g.add_argument("--chains", type=int, help=f"number of SGD chains (default "
                                                  f"{d['chains']})")


def _model_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that build a data-set network and may use the adaptive rule."""
    p.add_argument("--hidden", help="hidden layer widths of data-set problems, comma-separated "
                                    "(default 16)")
    p.add_argument("--adaptive-lam", type=float,
                   help="lambda for the adaptive rule (run: default 0.3; else --lam)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                 epilog="Run `sa-clip SUBCOMMAND --help` for the options of each command.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="ODE vs many SGD chains on the paper's network (main job)",
                       description="The paper's sigmoid network on a data set bundled with "
                       "scikit-learn, classic and adaptive clipping: the ODE against many SGD "
                       "chains, tracking distances D_T(s), clipping fractions, martingale noise; "
                       "writes PNGs and summary.json to --out and prints a table. About two "
                       "minutes on a 2-core CPU; --quick for seconds.")
    _common(p, "run")
    p.add_argument("--quick", action="store_true", default=None,
                   help="tiny sizes (seconds): " + ", ".join(f"{k}={v}" for k, v in
                                                             QUICK.items()))
    _model_options(p)
    p.add_argument("--samples", type=int, help="use only the first N samples of the data set")
    p.add_argument("--horizon", type=float, help="T of D_T(s), ODE time (default 1)")
    p.add_argument("--starts", type=int, help="number of start times s (default 12)")
    p.add_argument("--tracking-chains", type=int,
                   help="chains used for D_T(s) (default 64, all; each costs an ODE solve per "
                        "start)")
    p.add_argument("--noise-chains", type=int,
                   help="chains of the extra run recording the martingale noise, which costs "
                        "a full-data H per step (default 8; 0 skips it)")
    p.add_argument("--noise-steps", type=int, help="steps of that run (default 1000)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="write simulate_sgd checkpoints into DIR (one file per rule)")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints (default 500)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the runs from their checkpoints (default folder "
                        "OUT/checkpoints); the result equals an uninterrupted run")
    p.add_argument("--portrait-grid", type=int,
                   help="grid points per side of the PCA-plane portrait (default 21; 0 skips)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("portrait", help="phase portrait of a 2-parameter problem",
                       description="Streamlines of -H on the parameter plane of a 2-parameter "
                       "problem, equilibria by stability, ODE curves and SGD chains; writes "
                       "portrait.png (and portrait.gif with --gif).")
    _common(p, "portrait")
    p.add_argument("--extent", type=float, help="half-width of the square drawn (default 3)")
    p.add_argument("--grid", type=int, help="grid points per side (default 41)")
    p.add_argument("--ode-starts", type=int, help="ODE curves from a circle (default 8)")
    p.add_argument("--ode-time", type=float, help="ODE time of those curves (default 8)")
    p.add_argument("--n-starts", type=int, help="root-finding starts for equilibria (12)")
    p.add_argument("--gif", action="store_true", default=None,
                   help="also write an animation of the chains, portrait.gif")
    p.add_argument("--frames", type=int, help="frames of the animation (default 60)")
    p.set_defaults(func=cmd_portrait)

    p = sub.add_parser("tracking", help="tracking distance D_T(s) of many chains",
                       description="Runs the chains, solves the ODE from every chain's position "
                       "at each start s (one batched solve) and prints D_T(s); writes "
                       "tracking.png.")
    _common(p, "tracking")
    _model_options(p)
    p.add_argument("--horizon", type=float, help="T, ODE time (default 1)")
    p.add_argument("--starts", type=int, help="number of start times s (default 6)")
    p.set_defaults(func=cmd_tracking)

    p = sub.add_parser("equilibria", help="equilibria of H, their stability and clipping bias",
                       description="Finds zeros of H by root finding from random starts, "
                       "classifies them by the eigenvalues of DH (flow -H) and, at stable ones, "
                       "measures the clipping bias (the unclipped gradient there and the "
                       "distance to the unclipped minimiser).")
    _common(p, "equilibria")
    _model_options(p)
    p.add_argument("--n-starts", type=int, help="root-finding starts (default 24)")
    p.add_argument("--extent", type=float, help="spread of the random starts (default 1.5)")
    p.add_argument("--max-norm", type=float,
                   help="hide equilibria with ||theta|| above this (default 100)")
    p.set_defaults(func=cmd_equilibria)

    p = sub.add_parser("bench", help="run the benchmarks (or a built-in timing)",
                       description="Runs benchmarks/bench_*.py --quick from a source checkout; "
                       "with --builtin (or when they are absent) times the clipped H against "
                       "the unclipped one and a plain full-data gradient.")
    _common(p, "bench")
    _model_options(p)
    p.add_argument("--builtin", action="store_true", default=None,
                   help="the built-in timing even when benchmarks/ exists")
    p.add_argument("--repeats", type=int, help="timing repeats (default 5)")
    p.set_defaults(func=cmd_bench)
    return ap


def _version() -> str:
    from . import __version__
    return __version__


def _read_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Options from a TOML file, keyed by ``dest``; unknown keys are an error."""
    try:
        import tomllib
    except ModuleNotFoundError:     # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise CliError(f"`--config` {path!r}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"`--config` {path!r} is not valid TOML: {exc}.") from None
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    out = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in actions or dest == "config":
            raise CliError(f"`--config` {path!r}: unknown key {key!r}; accepted keys are "
                           f"{sorted(k.replace('_', '-') for k in actions if k != 'config')}.")
        act = actions[dest]
        if act.type is not None and not isinstance(value, bool):
            try:
                value = act.type(value)
            except (TypeError, ValueError):
                raise CliError(f"`--config` {path!r}: key {key!r} must be a "
                               f"{act.type.__name__}, got {value!r}.") from None
        if act.choices is not None and value not in act.choices:
            raise CliError(f"`--config` {path!r}: key {key!r} must be one of "
                           f"{list(act.choices)}, got {value!r}.")
        out[dest] = value
    return out


def _finish(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill options: command line > --config file > --quick > the command's defaults."""
    cfg = _read_config(args.config, parser) if args.config else {}
    defaults = dict(dict(device="cpu", dtype="float64", quiet=False, hidden="16",
                         adaptive_lam=None, samples=None, quick=False, gif=False,
                         builtin=False), **DEFAULTS[args.command])
    quick = args.quick if getattr(args, "quick", None) is not None else cfg.get("quick", False)
    for key, value in vars(args).items():
        if value is None:
            if key in cfg:
                value = cfg[key]
            elif quick and key in QUICK:
                value = QUICK[key]
            else:
                value = defaults.get(key)
            setattr(args, key, value)
    for name in ("steps", "chains", "batch_size", "record_every", "starts", "tracking_chains",
                 "grid", "ode_starts", "n_starts", "frames", "repeats", "noise_steps",
                 "checkpoint_every"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise CliError(f"`--{name.replace('_', '-')}` must be an integer >= 1, got {v}.")
    for name in ("noise_chains", "portrait_grid", "samples"):
        v = getattr(args, name, None)
        if v is not None and v < 0:
            raise CliError(f"`--{name.replace('_', '-')}` must be an integer >= 0, got {v}.")
    for name in ("horizon", "extent", "ode_time", "max_norm"):
        v = getattr(args, name, None)
        if v is not None and not v > 0:
            raise CliError(f"`--{name.replace('_', '-')}` must be a number > 0, got {v}.")
    args.progress = not args.quiet and sys.stderr.isatty()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sa-clip`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    started = distributed.init_from_env()          # under torchrun: shard H over the ranks
    try:
        args = _finish(args, sub)
        if not distributed.is_main_process():      # one rank prints and writes files
            args.quiet, args.progress = True, False
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                return args.func(args)
        return args.func(args)
    except (CliError, ValueError, TypeError) as exc:
        msg = " ".join(str(exc).split())
        print(f"{PROG}: error: {msg} (see `{PROG} {args.command} --help`)", file=sys.stderr)
        return 2
    finally:
        if started:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
