"""sa-clip run: the main job. The paper's network, classic and adaptive clipping, the ODE
against many SGD chains, tracking distances; figures, summary.json and a table."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .options import PROG, add_common_options, add_model_options, config_dict
from .output import MANIFEST, OutputFolder, check_folder
from .report import StageClock, color, label, log, problem_fields, table

if TYPE_CHECKING:        # torch loads in main(), not when the parser is built (--help)
    from ..experiment import Experiment, RuleReport

HELP = "ODE vs many SGD chains on the paper's network (main job)"
DESCRIPTION = ("The paper's sigmoid network on a data set bundled with scikit-learn, classic "
               "and adaptive clipping: the ODE against many SGD chains, tracking distances "
               "D_T(s), clipping fractions, martingale noise. Writes PNGs, summary.json and "
               "manifest.json to --out and prints a table. About 12 s on a 2-core CPU; --quick "
               "for seconds.")
DEFAULTS: dict[str, Any] = dict(
    problem="wine", hidden=None, rule="norm,adaptive", lam=1.0, adaptive_lam=0.3, eps=1e-3,
    schedule="power:1.0,0.6", steps=3000, chains=64, batch_size=1, clip_per="sample", seed=0,
    record_every=10, out="figures/run", horizon=1.0, starts=12, tracking_chains=None,
    noise_chains=8, noise_steps=1000, portrait_grid=21, checkpoint=None, checkpoint_every=500,
    resume=False, force_resume=False, predict_spread=False, workers=None, dpi=150, style=None)
QUICK: dict[str, Any] = dict(steps=300, chains=16, record_every=5, starts=4, tracking_chains=6,
                             noise_chains=3, noise_steps=100, portrait_grid=11, samples=60)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p, DEFAULTS, QUICK)
    add_model_options(p)
    p.add_argument("--dpi", type=int, help="resolution of the PNGs (default 150)")
    p.add_argument("--style", choices=("paper", "talk"),
                   help="figures for a paper (column width, small text) or a talk (large "
                        "text, at most 2 panels across); default: the screen look")
    p.add_argument("--horizon", type=float, help="T of D_T(s), ODE time (default 1)")
    p.add_argument("--starts", type=int, help="number of start times s (default 12)")
    p.add_argument("--tracking-chains", type=int,
                   help="chains used for D_T(s), at most --chains (default: all; each costs an "
                        "ODE solve per start)")
    p.add_argument("--noise-chains", type=int,
                   help="chains of the extra run recording the martingale noise, which costs "
                        "a full-data H per step (default 8; 0 skips it)")
    p.add_argument("--noise-steps", type=int, help="steps of that run (default 1000)")
    p.add_argument("--max-nfev", type=int,
                   help="budget of H evaluations of each ODE solve (default: solve_ode's)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="write simulate_sgd checkpoints into DIR (one file per rule)")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints (default 500)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the runs from their checkpoints (default folder "
                        "OUT/checkpoints); the result equals an uninterrupted run")
    p.add_argument("--force-resume", action="store_true", default=None,
                   help="with --resume: continue even from a checkpoint of another sa_clip "
                        "version or whose loss/model fingerprint differs (a warning says so)")
    p.add_argument("--predict-spread", action="store_true", default=None,
                   help="draw the linear-noise prediction of the chains' 10-90%% band in "
                        "ode_vs_sgd_<rule>.png (sa_clip.linear_noise: one DH and one noise "
                        "covariance per point of its grid; minutes for the default network, "
                        "seconds for 2-parameter problems)")
    p.add_argument("--portrait-grid", type=int,
                   help="grid points per side of the PCA-plane portrait (default 21; 0 skips)")
    p.add_argument("--workers", type=int,
                   help="rules run at once, each in its own process (default: one per rule, "
                        "at most one per CPU core; 1 with --device cuda)")


def main(args: argparse.Namespace) -> int:
    """ODE vs SGD chains for each rule, tracking distances, figures and summary.json."""
    from ..experiment import RulesFailed, run_experiment
    from ..schedules import make_schedule
    from ..viz._style import check_dpi, styled
    from .builders import build_problem, build_rules, checkpoint_dir

    clock = StageClock()
    check_dpi(args.dpi)                                     # before any compute
    problem = build_problem(args, min_params=2)
    rules = build_rules(args)
    args.workers = workers(args, problem, len(rules))      # the number used, in summary.json
    _check_memory(args, problem, len(rules))                # before any compute
    ckpt = checkpoint_dir(args)
    if ckpt is not None:                                    # checked before any compute
        check_folder(ckpt, "--checkpoint")
    folder = OutputFolder(args.out, "run").open()
    folder.expect(*planned_files(rules, args))
    log(args, f"{problem!r}\nschedule {args.schedule}, {args.steps} steps, {args.chains} "
              f"chains, batch size {args.batch_size}, clip per {args.clip_per}")
    clock.stage("setup")
    with folder:
        schedule = make_schedule(args.schedule)

        first_rule = next(iter(rules))

        def draw(report: RuleReport) -> None:
            """A rule's figures, drawn as soon as the rule is done (in its worker process
            when rules run in parallel: the figure names and times travel with the report);
            after the first rule's, the short extra run recording the martingale noise (in
            that worker: the rules take about as long, so it would otherwise wait for both)."""
            log(args, f"  {label(report.name)}: " + ", ".join(
                f"{st} {s:.1f} s" for st, s in report.seconds.items())
                + f" (ODE {report.ode.nfev} evals, tracking {report.tracking.nfev})")
            first = report.name == first_rule
            t = time.perf_counter()
            with styled(args.style):
                for name, fig in rule_figures(problem, schedule, report, args, first=first):
                    save_or_note(folder, fig, name, args)
                    report.outputs.append(name)
            report.seconds["figures"] = time.perf_counter() - t
            if first and args.noise_chains > 0:
                t = time.perf_counter()
                name = f"noise_{report.name}.png"
                with styled(args.style):
                    fig = noise_figure(report, noise_chains(report, args), args)
                folder.save_figure(fig, name, dpi=args.dpi)
                report.outputs.append(name)
                report.seconds["noise"] = time.perf_counter() - t

        _preload_figures()
        try:
            exp = run_experiment(
                problem, rules, schedule, steps=args.steps, chains=args.chains,
                batch_size=args.batch_size, clip_per=args.clip_per, seed=args.seed,
                record_every=args.record_every, horizon=args.horizon, starts=args.starts,
                tracking_chains=args.tracking_chains, max_nfev=args.max_nfev,
                checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every,
                resume=args.resume, force_resume=bool(args.force_resume),
                progress=args.progress, shard=_sharded(),
                start_spacing="log", tracking_options={"keep_paths": [0]},
                on_stage=lambda rule, stage, s: clock.record(f"{rule}.{stage}", s),
                on_report=draw, workers=args.workers)
        except RulesFailed as err:             # a worker died: the other rules are kept
            exp = err.experiment
            folder.failed.update({name: str(e) for name, e in err.failed.items()})
        args.workers = exp.config.get("workers", args.workers)   # what ran (fork may be off)
        for report in exp:
            for name in report.outputs:            # written by a worker process
                folder.add(name)
        clock.stage("rules")
        if len(exp):
            with styled(args.style):
                for name, fig in comparison_figures(exp):
                    save_or_note(folder, fig, name, args)
        clock.stage("figures")
        folder.write_json("summary.json", summary(exp, args, folder, clock))
    print(table([[label(r["name"]), r["final_loss_ode"], r["final_loss_sgd_median"],
                  r["clip_fraction_late"], r["tracking_early"], r["tracking_late"],
                  r["blowups"]] for r in _results(exp)],
                ["rule", "loss ODE", "loss SGD", "clipped", "D_T early", "D_T late",
                 "blow-ups"]))
    n_figs = sum(f.endswith(".png") for f in folder.files)
    print(f"wrote {n_figs} figures, summary.json and manifest.json to {folder.out}/ in "
          f"{clock.total:.0f} s")
    if folder.failed:
        lost = "; ".join(f"{label(n)}: {m}" for n, m in folder.failed.items())
        print(f"{PROG}: error: {lost} The other rules' outputs are kept ({MANIFEST} says "
              "'incomplete' and lists what is missing).", file=sys.stderr)
        return 1
    return 0


def planned_files(rules: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The files a complete run writes (what :func:`main` and :func:`rule_figures` save), in
    that order; a manifest that is not complete lists those missing."""
    names = []
    for k, name in enumerate(rules):
        names += [f"shadowing_{name}.png", f"ode_vs_sgd_{name}.png"]
        if k == 0 and args.portrait_grid > 1:
            names.append(f"portrait_{name}.png")
        if k == 0 and args.noise_chains > 0:
            names.append(f"noise_{name}.png")
    return names + ["tracking.png", "clip_fraction.png", "loss.png", "summary.json"]


def workers(args: argparse.Namespace, problem: Any, n_rules: int) -> int:
    """``--workers``, or by default one process per rule up to the CPU cores this process may
    use (1 on CUDA, where a forked process cannot use the parent's GPU context, under
    ``torchrun``, and where fork is unsafe, as on macOS)."""
    from .._workers import fork_available

    if args.workers is not None:
        return args.workers
    if problem.device.type != "cpu" or _sharded() or not fork_available()[0]:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n_rules, cores or 1))


def _preload_figures() -> None:
    """Import matplotlib and the figure modules (and build matplotlib's font list) before
    the rules fork: the workers then share those pages instead of each loading its own."""
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    from .. import viz  # noqa: F401
    from ..linear_noise import linear_noise  # noqa: F401

    font_manager.findfont(font_manager.FontProperties(family=plt.rcParams["font.family"]))


def _sharded() -> bool:
    from .. import distributed
    return distributed.is_active()


def _results(exp: Experiment) -> list[dict[str, Any]]:
    return [{"name": r.name, "label": label(r.name), **r.summary()} for r in exp]


def rule_figures(problem: Any, schedule: Any, report: RuleReport, args: argparse.Namespace,
                 *, first: bool) -> Iterator[tuple[str, Any]]:
    """The figures of one rule as ``(file name, figure)`` pairs, drawn one at a time (each is
    saved and closed before the next is drawn). Adding a figure is one ``yield`` here."""

    from ..linear_noise import linear_noise
    from ..viz import ode_vs_sgd_figure, plot_shadowing

    run, sol, name = report.trajectory, report.ode, report.name
    plane = pca_plane(run.theta, sol.theta)
    context = f"{problem.name}, {label(name)} clipping, {_threshold(report.rule)}"
    try:
        shadow = plot_shadowing(report.trajectory, report.tracking, chain=0,
                                plane=plane if problem.P > 2 else None, problem=problem,
                                context=context)
    except ValueError as exc:        # e.g. every chain blew up: the other figures still come
        print(f"sa-clip: note: shadowing_{name}.png not drawn: {exc}", file=sys.stderr)
        shadow = None
    if shadow is not None:
        yield f"shadowing_{name}.png", shadow
    predicted = None
    if args.predict_spread:
        try:
            predicted = linear_noise(report.field, schedule, problem.theta0, run.tau,
                                     batch_size=args.batch_size, clip_per=args.clip_per)
        except ValueError as exc:    # e.g. more steps than linear_noise's max_points
            import warnings
            warnings.warn(f"--predict-spread skipped for rule {name}: {exc}", stacklevel=2)
    yield f"ode_vs_sgd_{name}.png", ode_vs_sgd_figure(
        run, sol, coords=(0, 1), plane=plane, predicted=predicted, title=context)
    if first and args.portrait_grid > 1:
        yield f"portrait_{name}.png", portrait_figure(report, plane, args.portrait_grid)


def save_or_note(folder: OutputFolder, fig: Any, name: str, args: argparse.Namespace) -> None:
    """Save ``fig``; a log axis with no positive value to show (``--starts 1`` puts the only
    start at ``s = 0``; every chain blew up) is drawn linear with a note on the figure and on
    stderr, instead of matplotlib's "Data cannot be log-scaled" after all the compute."""
    notes = []
    for ax in fig.axes:
        if getattr(ax, "_colorbar", None) is not None:     # a colorbar scales itself
            continue
        lim, fixed = ax.dataLim, []
        for axis, hi in (("x", lim.x1), ("y", lim.y1)):
            if getattr(ax, f"get_{axis}scale")() == "log" and not (
                    math.isfinite(hi) and hi > 0):
                getattr(ax, f"set_{axis}scale")("linear")
                fixed.append(axis)
        if fixed:
            notes.append(f"{'/'.join(fixed)} of '{ax.get_title() or ax.get_xlabel()}'")
            ax.text(0.5, 0.5, "nothing positive to show on a log axis\n(one start time "
                    "s = 0, or every chain blew up)", transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, color="0.35")
    if notes:
        print(f"sa-clip: note: {name}: log axes with nothing positive to show drawn linear "
              "(one start time s = 0, or every chain blew up): " + ", ".join(notes),
              file=sys.stderr)
    folder.save_figure(fig, name, dpi=args.dpi)


def _threshold(rule: Any) -> str:
    """``λ = 1`` (and ``ε`` for the relative rules) for a figure title."""
    lam = getattr(rule, "lam", None)
    if lam is None:
        return "no threshold"
    eps = getattr(rule, "eps", None)
    return f"λ = {lam:g}" + (f", ε = {eps:g}" if eps is not None and rule.relative else "")


def _check_memory(args: argparse.Namespace, problem: Any, n_rules: int) -> None:
    """Records, ODE paths, PCA plane and figures against the memory this process may use."""
    import torch

    from .._memory import check_run_memory, run_memory

    parts = run_memory(P=problem.P, chains=args.chains, steps=args.steps,
                       record_every=args.record_every, rules=n_rules, workers=args.workers,
                       itemsize=torch.empty((), dtype=problem.dtype).element_size(),
                       plane=True)
    check_run_memory(parts, f"`sa-clip run` with P = {problem.P} parameters, --chains "
                            f"{args.chains}, --steps {args.steps}, --record-every "
                            f"{args.record_every}")


def pca_plane(*paths: Any, chunk: int = 1024) -> Any:
    """The plane of the two principal directions of all finite points of ``paths`` (each
    ``(..., P)``) through their mean: :func:`sa_clip.plane.pca_plane` (a thin SVD of the
    centred points through the smaller Gram matrix, never ``P x P`` when ``P`` exceeds the
    number of points)."""
    from ..plane import pca_plane as _pca_plane

    return _pca_plane(*paths, chunk=chunk)


def portrait_figure(report: RuleReport, plane: Any, grid: int) -> Any:
    """``-H`` projected on the PCA plane with the ODE and 16 chains."""
    from ..plane import field_on_plane
    from ..viz import plot_phase_portrait

    run, sol = report.trajectory, report.ode
    pf = field_on_plane(report.field, plane, *plane_ranges(plane, run.theta, sol.theta), n=grid)
    ax = plot_phase_portrait(pf, ode_paths=sol.theta, chains=run.theta, max_chains=16,
                             title=f"−H projected on the PCA plane ({label(report.name)})")
    return ax.figure


def plane_ranges(plane: Any, *paths: Any) -> tuple[tuple[float, float], ...]:
    """Plane coordinate ranges covering ``paths`` with a 15% margin."""
    import torch

    pts = torch.cat([plane.project(p.reshape(-1, p.shape[-1])) for p in paths])
    pts = pts[torch.isfinite(pts).all(1)]
    lo, hi = pts.min(0).values, pts.max(0).values
    pad = 0.15 * (hi - lo).clamp(min=1e-3)
    return tuple((float(lo[i] - pad[i]), float(hi[i] + pad[i])) for i in range(2))


def noise_chains(report: RuleReport, args: argparse.Namespace) -> Any:
    """An extra short run of ``--noise-chains`` chains recording the martingale noise."""
    from .builders import run_chains

    return run_chains(report.field.problem, report.rule, args, chains=args.noise_chains,
                      steps=min(args.noise_steps, args.steps), record_noise=True,
                      field=report.field)


def noise_figure(report: RuleReport, nrun: Any, args: argparse.Namespace) -> Any:
    """The martingale noise of :func:`noise_chains`' run."""
    from ..viz import noise_figure as draw

    fig = draw(nrun)
    fig.suptitle(f"martingale noise, {label(report.name)} clipping, {args.noise_chains} "
                 f"chains, first {int(nrun.steps[-1])} steps")
    return fig


def comparison_figures(exp: Experiment) -> Iterator[tuple[str, Any]]:
    """Figures with one curve per rule: tracking, clipped fraction, loss."""
    import matplotlib.pyplot as plt

    from ..viz import plot_clip_fraction, plot_ensemble, plot_tracking
    from ..viz._style import figsize_for

    def axes():
        return plt.subplots(figsize=figsize_for((6.4, 4.2)), layout="constrained")

    fig, ax = axes()
    for k, r in enumerate(exp):
        plot_tracking(r.tracking, ax, label=label(r.name), color=color(k))
    yield "tracking.png", fig
    fig, ax = axes()
    for k, r in enumerate(exp):
        plot_clip_fraction(r.trajectory, ax, label=label(r.name), color=color(k))
    ax.set_title("fraction of samples clipped per step", fontsize=10)
    yield "clip_fraction.png", fig
    fig, ax = axes()
    for k, r in enumerate(exp):
        plot_ensemble(r.trajectory.tau, r.loss_sgd, ax, color=color(k),
                      label=f"SGD, {label(r.name)}", n_faint=3, logy=True)
        ax.plot(r.trajectory.tau, r.loss_ode, "--", color=color(k), lw=1.6,
                label=f"ODE, {label(r.name)}")
    ax.set_xlabel("ODE time τ")
    ax.set_ylabel("full-data loss L(θ)")
    ax.set_title(f"loss along the ODE and the SGD chains ({exp.problem.name})", fontsize=10)
    ax.legend(fontsize=7, framealpha=0.85, loc="upper right")   # "best" costs seconds here
    yield "loss.png", fig


def summary(exp: Experiment, args: argparse.Namespace, folder: OutputFolder,
            clock: StageClock) -> dict[str, Any]:
    """summary.json: the problem as fields, the options, per-rule numbers, the figures, and
    stage timings with peak RSS."""
    clock.stage("summary")
    return {"command": "run", "problem": problem_fields(exp.problem),
            "config": config_dict(args), "results": _results(exp),
            **({"failed": dict(folder.failed)} if folder.failed else {}),
            "figures": [str(folder.out / f) for f in folder.files if f.endswith(".png")],
            "stages": clock.to_dict(), "seconds": round(clock.total, 3)}
