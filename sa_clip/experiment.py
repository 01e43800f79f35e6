r"""The main experiment in one call: SGD chains against the ODE for several clipping rules.

For each rule ``r`` on one problem, :func:`run_experiment` computes

* ``chains`` clipped-SGD chains ``theta_{n+1} = theta_n - a(n) u_r(theta_n, batch_n)``,
  recorded on the ODE time axis ``tau_n = sum_{k<n} a(k)`` (:func:`~sa_clip.simulate_sgd`);
* the ODE ``d theta / d tau = -H_r(theta)`` from the same start, at the record times
  (:func:`~sa_clip.solve_ode`);
* the tracking distance ``D_T(s) = sup_{h in [0, T]} ||theta_bar(s + h) - Phi_h(theta_bar(s))||``
  of every chain at ``starts`` evenly spaced start times (:func:`~sa_clip.tracking_distance`);
* the full-data loss ``L`` along the chains and the ODE, the fraction of clipped samples, and
  how long each stage took.

It is what ``sa-clip run`` computes before it draws; a notebook gets the same numbers with::

    import sa_clip as sc
    exp = sc.run_experiment(sc.problems.make_problem("wine"),
                            [sc.NormClip(1.0), sc.AdaptiveClip(0.3)], "power:1.0,0.6",
                            steps=3000, chains=64)
    exp["norm"].tracking.median, exp["adaptive"].loss_ode[-1]

The mathematics of the tracking distance is in ``docs/theory.md``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed as _dist
from ._cost import Meter, duration
from ._memory import check_run_memory, finite_rows, peak_rss_mb, release_memory, run_memory
from ._validate import check_nonneg_int, file_stem
from ._workers import WorkerDied, check_workers, fork_available, run_jobs
from .clipping import ClipRule, make_rule
from .meanfield import MeanField
from .ode import OdeSolution, solve_ode
from .problem import Problem
from .schedules import Schedule, make_schedule
from .sgd import simulate_sgd
from .tracking import TrackingResult, select_chains, tracking_distance
from .trajectory import Trajectory

#: numbers in one group's ``(offsets, chains * starts, P)`` array of the tracking solve. The
#: chains are tracked in groups small enough for this (``tracking_distance`` holds several
#: such arrays at once); all 64 chains of ``sa-clip run`` at once cost ~0.7 GB, groups of
#: 2**20 numbers (3 chains there) ~50 MB. Smaller groups are also faster, down to about this
#: size: their arrays stay in cache, and the step-size control of a smaller group rejects
#: fewer steps (one process, 1 thread: 3.7-3.8 s at 2**20, 4.3 s at 2**21, 4.9 s at 2**22;
#: 4.4 s with one chain per group).
TRACKING_GROUP_ELEMENTS = 2 ** 20
#: TrackingResult fields that hold one row per chain (concatenated over the groups)
PER_CHAIN_FIELDS = ("distance", "gap", "chains")
#: parameter vectors per batched loss evaluation (``Problem.loss`` vmaps over all of them;
#: 64 x 178 samples x 16 hidden units is ~1.5 MB per activation, and was faster than 512).
#: Models with convolutions take one vector at a time: a vmap over K weight vectors turns each
#: convolution into a grouped one over K x N images (digits CNN, N = 1797, one thread: 110 ms
#: per vector at K = 64, 31 ms at 4, 16 ms at 1).
LOSS_CHUNK = 64


@dataclass
class RuleReport:
    """Everything :func:`run_experiment` computed for one rule.

    Attributes
    ----------
    name : str
        The key of this report (the rule's registry name unless given otherwise).
    rule : ClipRule
    field : MeanField
        ``H`` of this rule (reusable, e.g. for a phase portrait).
    trajectory : Trajectory
        The SGD chains (``chains x records x P``).
    ode : OdeSolution
        The ODE from the chains' start at ``trajectory.tau``; ``ode.theta`` is ``(records, P)``.
    tracking : TrackingResult
        ``D_T(s)`` for the first ``tracking_chains`` chains.
    loss_sgd : float64 tensor ``(chains, records)``
        Full-data loss along every chain (NaN after a blow-up).
    loss_ode : float64 tensor ``(records,)``
        Full-data loss along the ODE.
    seconds : dict
        Wall time of each stage: ``sgd``, ``ode``, ``tracking``, ``loss`` (and whatever
        ``on_report`` of :func:`run_experiment` adds, e.g. ``figures``).
    outputs : list of str
        Files that ``on_report`` wrote for this rule (it appends them; empty otherwise).
    worker : dict or None
        ``{"pid", "peak_rss_mb", "threads"}`` of the worker process the rule ran in
        (``run_experiment(workers > 1)``); None when it ran in the calling process.
    """

    name: str
    rule: ClipRule
    field: MeanField
    trajectory: Trajectory
    ode: OdeSolution
    tracking: TrackingResult
    loss_sgd: torch.Tensor
    loss_ode: torch.Tensor
    seconds: dict[str, float]
    outputs: list[str] = field(default_factory=list)
    worker: dict[str, Any] | None = None

    @property
    def clip_fraction(self) -> torch.Tensor:
        """Fraction of samples clipped per chain and record, ``(chains, records)``."""
        return self.trajectory.clip_fraction

    @property
    def clip_fraction_late(self) -> float:
        """Mean clipped fraction over the last tenth of the records (NaN-aware)."""
        cf = self.trajectory.clip_fraction
        tail = max(1, cf.shape[1] // 10)
        return float(torch.nanmean(cf[:, -tail - 1:-1].to(torch.float64)))

    def tracked_trajectory(self) -> Trajectory:
        """The chains :attr:`tracking` was computed for (the first ``tracking_chains``).
        :func:`sa_clip.viz.plot_shadowing` takes the whole :attr:`trajectory` with
        :attr:`tracking` (it picks the tracked chains itself)."""
        return select_chains(self.trajectory, range(int(self.tracking.distance.shape[0])))

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (NaN and inf become ``None``)."""
        tr = self.tracking
        return {
            "rule": self.rule.to_dict(),
            "final_loss_ode": _num(self.loss_ode[-1]),
            "final_loss_sgd_median": _num(torch.nanmedian(self.loss_sgd[:, -1])),
            "clip_fraction_late": _num(self.clip_fraction_late),
            "tracking_early": _num(tr.median[0]), "tracking_late": _num(tr.median[-1]),
            "tracking_starts": tr.start.tolist(),
            "tracking_median": [_num(v) for v in tr.median],
            "tracking_horizon": tr.horizon, "tracking_nfev": tr.nfev,
            "tracking_status": tr.message,
            "blowups": int(self.trajectory.blown_up.sum()),
            "tau_last": float(self.trajectory.tau[-1]),
            "ode_status": self.ode.message, "ode_nfev": self.ode.nfev,
            "seconds": dict(self.seconds),
            "worker": self.worker,
        }


@dataclass
class Experiment:
    """The result of :func:`run_experiment`: one :class:`RuleReport` per rule, in order.

    ``exp["norm"]`` is a report; iterating yields the reports.
    """

    problem: Problem
    schedule: Schedule
    reports: dict[str, RuleReport]
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> RuleReport:
        return self.reports[name]

    def __iter__(self):
        return iter(self.reports.values())

    def __len__(self) -> int:
        return len(self.reports)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the configuration and each rule's :meth:`RuleReport.summary`."""
        return {"config": dict(self.config),
                "results": [r.summary() for r in self.reports.values()]}


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _rules(rules: Any) -> dict[str, ClipRule]:
    if isinstance(rules, (str, ClipRule)):
        rules = [rules]
    if isinstance(rules, Mapping):
        items = list(rules.items())
    else:
        items = [(getattr(r, "name", r), r) for r in rules]
    out: dict[str, ClipRule] = {}
    stems: dict[str, str] = {}
    for name, r in items:
        if not isinstance(r, (str, ClipRule)):
            raise TypeError(f"`rules` must hold ClipRule objects or rule names, got "
                            f"{type(r).__name__}.")
        stem = file_stem(name)                 # names are file names: refuse non-strings
        if stem in stems and stems[stem] != name:
            raise ValueError(f"`rules` names {stems[stem]!r} and {name!r} map to the same "
                             f"file name {stem!r}; rename one.")
        stems[stem] = name
        rule = make_rule(r) if isinstance(r, str) else r
        if name in out:
            raise ValueError(f"`rules` names {name!r} twice; pass a dict to name them apart.")
        out[name] = rule
    if not out:
        raise ValueError("`rules` is empty: give at least one rule.")
    return out


def batched_loss(problem: Problem, theta: torch.Tensor, chunk: int | None = None,
                 progress: bool | None = False) -> torch.Tensor:
    """``L(theta)`` for ``theta (..., P)`` in chunks of ``chunk`` vectors (bounded memory;
    default :data:`LOSS_CHUNK`, 1 for a model with convolutions); non-finite vectors give
    NaN. Returns float64 of shape ``theta.shape[:-1]``. Each vector costs a forward pass over
    all ``N`` samples: a long loss stage (every record of every chain of a conv model) says
    so (``progress`` as in :func:`~sa_clip.solve_ode`)."""
    if chunk is None:
        conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in problem.model.modules())
        chunk = 1 if conv else LOSS_CHUNK
    flat = theta.reshape(-1, theta.shape[-1])
    out = torch.full((flat.shape[0],), float("nan"), dtype=torch.float64)
    ok = finite_rows(flat)
    idx = ok.nonzero().squeeze(1)
    n = idx.numel()
    meter = Meter("loss", progress, units=-(-n // chunk), total=n, unit="vector",
                  describe=lambda sec: (f"{n} parameter vectors x {problem.N} samples x "
                                        f"{duration(sec / min(chunk, max(n, 1)))}"))
    with closing(meter):
        for i in range(0, n, chunk):
            sel = idx[i:i + chunk]
            out[sel] = problem.loss(flat[sel]).to(device="cpu", dtype=torch.float64)
            meter.tick(i + len(sel))
    return out.reshape(theta.shape[:-1])


#: tracking_distance keywords that concern the first chains only (sent to the first group)
FIRST_GROUP_ONLY = ("keep_paths",)


def tracking_in_groups(run: Trajectory, fld: Any, *, horizon: float, starts: torch.Tensor,
                       chains: int | None = None,
                       group_elements: int = TRACKING_GROUP_ELEMENTS,
                       options: dict[str, Any] | None = None,
                       progress: bool | None = None) -> TrackingResult:
    """:func:`~sa_clip.tracking_distance` of the first ``chains`` chains, solved in groups of
    chains so that one group's ``(offsets, group * starts, P)`` array stays near
    ``group_elements`` numbers (bounded memory). Each chain's ``D_T(s)`` meets the solver
    tolerances on its own (max-norm step control), so grouping changes the numbers only
    within those tolerances. Per-chain fields are concatenated; ``nfev`` is the sum; the
    other fields come from the first group; a failed group's status and message win.
    ``options`` are further keywords of ``tracking_distance`` (those in
    :data:`FIRST_GROUP_ONLY`, such as ``keep_paths``, go to the first group only).
    ``progress``: one group alone reports its cost as ``tracking_distance`` does; several
    groups report after the first ("tracking: 22 groups of 3 chains x 12 starts x 1.9 s:
    about 42 s") and show a bar over the groups."""
    total = min(chains or run.chains, run.chains)
    # the offset grid tracking_distance builds: n_grid = 50 points plus the record times
    # inside the windows (an upper bound is enough here)
    tau = run.tau.to(torch.float64)
    inside = ((tau[None, :] > starts[:, None]) & (tau[None, :] < starts[:, None] + horizon))
    n_offsets = 50 + int(inside.sum())
    per_chain = max(1, starts.numel() * run.theta.shape[-1] * n_offsets)
    group = max(1, min(total, group_elements // per_chain))
    n_groups = -(-total // group)
    meter = Meter("tracking", progress, units=n_groups, total=n_groups, unit="group", after=1,
                  describe=lambda sec: (f"{n_groups} groups of {group} chains x "
                                        f"{starts.numel()} starts x {duration(sec)}"))
    parts = []
    try:
        for lo in range(0, total, group):
            hi = min(total, lo + group)
            extra = {k: v for k, v in (options or {}).items()
                     if lo == 0 or k not in FIRST_GROUP_ONLY}
            parts.append(tracking_distance(
                run, fld, horizon=horizon, starts=starts,
                chains=None if (lo, hi) == (0, run.chains) else range(lo, hi),
                max_elements=per_chain * (hi - lo),
                progress=progress if n_groups == 1 else False, **extra))
            release_memory()                 # the next group reuses these pages, not new ones
            meter.tick(len(parts))
    finally:
        meter.close()
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {"nfev": sum(p.nfev for p in parts)}
    for name in PER_CHAIN_FIELDS:
        if getattr(parts[0], name, None) is not None:
            merged[name] = torch.cat([getattr(p, name) for p in parts])
    if merged.get("chains") is not None:        # the key of the tracked chains together
        merged["tracked_id"] = select_chains(run, merged["chains"]).run_key()
    failed = [p for p in parts if p.status != 0]
    if failed:
        merged.update(status=failed[0].status, message=failed[0].message)
    return dataclasses.replace(parts[0], **merged)


def start_times(span: float, n: int, spacing: str = "linear") -> torch.Tensor:
    """``n`` start times in ``[0, span]``: evenly spaced (``"linear"``), or ``0`` and then
    ``n - 1`` geometrically spaced from ``span / 30`` to ``span`` (``"log"``)."""
    if spacing not in ("linear", "log"):
        raise ValueError(f"`start_spacing` must be 'linear' or 'log', got {spacing!r}.")
    if spacing == "linear" or n < 3:
        return torch.linspace(0.0, span, n, dtype=torch.float64)
    geo = torch.logspace(math.log10(span / 30), math.log10(span), n - 1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), geo])


def run_rule(problem: Problem, name: str, rule: ClipRule, sched: Schedule, *, steps: int,
             chains: int, batch_size: int, clip_per: str, seed: int, record_every: int,
             horizon: float, starts: int, tracking_chains: int | None, max_nfev: int | None,
             checkpoint_dir: str | os.PathLike | None, checkpoint_every: int, resume: bool,
             progress: bool, shard: bool, tracking_options: dict[str, Any] | None,
             start_spacing: str,
             on_stage: Callable[[str, str, float], None] | None,
             force_resume: bool = False) -> RuleReport:
    """One rule of :func:`run_experiment` (same arguments): chains, ODE, tracking, losses."""
    seconds: dict[str, float] = {}

    def stage(label: str, t0: float) -> float:
        t1 = time.perf_counter()
        seconds[label] = t1 - t0
        if on_stage is not None:
            on_stage(name, label, t1 - t0)
        return t1

    release_memory()                 # what the previous rule freed goes back to the OS
    t = time.perf_counter()
    fld = MeanField(problem, rule, distributed=shard)
    ckpt = None
    if checkpoint_dir is not None and _dist.is_main_process():
        ckpt = Path(checkpoint_dir) / f"{file_stem(name)}.ckpt.npz"
    run = simulate_sgd(problem, rule, sched, steps=steps, chains=chains,
                       batch_size=batch_size, clip_per=clip_per, seed=seed,
                       record_every=record_every, field=fld, progress=progress,
                       checkpoint=ckpt, checkpoint_every=checkpoint_every,
                       resume=resume and ckpt is not None, force_resume=force_resume)
    t = stage("sgd", t)
    ode_kw = {} if max_nfev is None else {"max_nfev": max_nfev}
    sol = solve_ode(fld, problem.theta0, run.tau, progress=progress, **ode_kw)
    t = stage("ode", t)
    last = float(run.tau[-1])
    hz = min(horizon, 0.5 * last)
    s = start_times(last - hz, starts, start_spacing)
    tr = tracking_in_groups(run, fld, horizon=hz, starts=s, chains=tracking_chains,
                            options=tracking_options, progress=progress)
    t = stage("tracking", t)
    loss_sgd = batched_loss(problem, run.theta, progress=progress)
    loss_ode = batched_loss(problem, sol.theta, progress=progress)
    stage("loss", t)
    return RuleReport(name, rule, fld, run, sol, tr, loss_sgd, loss_ode, seconds)


def run_experiment(problem: Problem, rules: Any, schedule: Schedule | str | Callable, *,
                   steps: int, chains: int = 64, batch_size: int = 1, clip_per: str = "sample",
                   seed: int = 0, record_every: int = 10, horizon: float = 1.0,
                   starts: int = 12, tracking_chains: int | None = None,
                   max_nfev: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
                   checkpoint_every: int = 500, resume: bool = False,
                   force_resume: bool = False, progress: bool | None = None,
                   shard: bool = False, tracking_options: dict[str, Any] | None = None,
                   start_spacing: str = "linear",
                   on_stage: Callable[[str, str, float], None] | None = None,
                   on_report: Callable[[RuleReport], None] | None = None,
                   workers: int = 1) -> Experiment:
    r"""SGD chains vs the ODE, tracking distances and losses, for each of ``rules``.

    Main arguments
    --------------
    problem : Problem
    rules : ClipRule, rule name, or a list (or ``{name: rule}`` dict) of them
        A name is built by :func:`~sa_clip.make_rule` with its defaults (``"none"``; rules
        with a threshold need a ClipRule object).
        The reports are keyed by registry name (``"norm"``, ``"adaptive"``, ...) or the dict's
        keys.
    schedule : Schedule, spec string (``"power:1.0,0.6"``) or callable ``n -> a(n)``
    steps, chains, batch_size, clip_per, seed, record_every
        Passed to :func:`~sa_clip.simulate_sgd` (the same seed for every rule: common random
        numbers, so the rules differ only by their clipping).
    horizon : float
        ``T`` of ``D_T(s)``; capped at half the run's ODE time.
    starts : int
        Number of start times ``s`` in ``[0, tau_last - T]``: evenly spaced, or with
        ``start_spacing="log"`` ``s = 0`` followed by ``starts - 1`` geometrically spaced times
        from ``(tau_last - T) / 30`` (what a log axis of ``D_T(s)`` wants).

    Other arguments
    ---------------
    tracking_chains : int, optional
        Use only the first ``tracking_chains`` chains for ``D_T`` (default: all; at most
        ``chains``).
    max_nfev : int, optional
        Budget of right-hand-side evaluations of each ODE solve (``solve_ode``'s default if
        None).
    checkpoint_dir, checkpoint_every, resume, force_resume
        Checkpoint each rule's chains to ``checkpoint_dir/<name>.ckpt.npz``; ``resume``
        continues from there bit for bit (``force_resume``: see
        :func:`~sa_clip.simulate_sgd`). A name that is not a plain file name (``"../x"``,
        ``"/abs"``, spaces) is made one (:func:`sa_clip._validate.file_stem`: ``"x-1a2b3c"``),
        so nothing is written outside ``checkpoint_dir``.
    progress : bool or None
        Cost estimates and tqdm bars for the SGD chains, the ODE and tracking: ``True``
        always, ``None`` (default) for stages estimated to take more than a few seconds,
        ``False`` never (see :func:`~sa_clip.solve_ode`).
    shard : bool
        Shard ``H`` over the ``torch.distributed`` process group (``torchrun``).
    tracking_options : dict, optional
        More keywords of :func:`~sa_clip.tracking_distance` (see :func:`tracking_in_groups`).
    on_stage : callable ``(rule_name, stage, seconds)``, optional
        Called after each stage (``"sgd"``, ``"ode"``, ``"tracking"``, ``"loss"``, then any
        stage ``on_report`` added to ``report.seconds``).
    on_report : callable ``(RuleReport)``, optional
        Called with each rule's report as soon as it is done (``sa-clip run`` draws that
        rule's figures there, before the next rule starts). It may add stage times to
        ``report.seconds`` and file names to ``report.outputs``.
    workers : int
        Run up to ``workers`` rules at once, each in its own forked process with one torch
        thread (GNU OpenMP's thread pool does not survive ``fork``: more threads there can
        hang, see ``sa_clip._workers``). The stages of one rule are mostly too small to keep
        two torch threads busy: on a 2-core machine the default
        ``sa-clip run`` (two rules) takes 12.0 s with two workers against 17.8 s in one
        process. The children share the parent's libraries and data copy-on-write; each
        sends its report back pickled (the :class:`~sa_clip.MeanField` is rebuilt here).
        ``on_report`` then runs in the worker (what it adds to the report comes back with
        it) and ``on_stage`` here, when the report arrives; ``progress`` bars come from the
        first rule's worker only. The numbers are those of ``workers=1`` up to
        floating-point round-off (torch's sums may group differently with another thread
        count). Falls back to one process, with a warning, where fork is unsafe (macOS,
        Windows, CUDA initialised, ``shard=True`` or an active ``torch.distributed`` group).
        A worker that dies (killed, out of memory) costs only its own rule: the others run
        to the end, then :class:`RulesFailed` is raised, holding their :class:`Experiment`.

    Returns
    -------
    Experiment
        ``exp[name]`` is a :class:`RuleReport`.

    Example
    -------
    >>> import sa_clip as sc
    >>> exp = sc.run_experiment(sc.problems.logistic2d(), [sc.NormClip(1.0), "none"],
    ...                         "harmonic:1.0", steps=40, chains=4, record_every=2, starts=3)
    >>> [r.name for r in exp], exp["norm"].tracking.distance.shape
    (['norm', 'none'], torch.Size([4, 3]))
    """
    named = _rules(rules)
    if not isinstance(starts, numbers.Integral) or isinstance(starts, bool):
        raise TypeError(f"`starts` must be the number of start times (an integer >= 1), got "
                        f"{starts!r}; for start times of your own call "
                        "sa_clip.tracking_distance(run, field, starts=[...]).")
    starts = check_nonneg_int("starts", starts, minimum=1, maximum=10 ** 6)
    sched = make_schedule(schedule)
    if tracking_chains is not None and (isinstance(tracking_chains, bool) or not isinstance(
            tracking_chains, int) or not 1 <= tracking_chains <= chains):
        raise ValueError(f"`tracking_chains` must be an integer from 1 to `chains` = {chains} "
                         f"(or None for all), got {tracking_chains!r}.")
    settings = dict(steps=steps, chains=chains, batch_size=batch_size, clip_per=clip_per,
                    seed=seed, record_every=record_every, horizon=horizon, starts=starts,
                    tracking_chains=tracking_chains, max_nfev=max_nfev,
                    checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                    resume=resume, force_resume=force_resume, progress=progress, shard=shard,
                    tracking_options=tracking_options, start_spacing=start_spacing,
                    on_stage=on_stage)
    workers = _check_workers(workers, len(named), shard)
    _check_memory_up_front(problem, named, steps, chains, record_every, workers)
    dead: dict[str, WorkerDied] = {}
    if workers > 1:
        reports, dead = _rules_in_workers(problem, named, sched, settings, workers, on_report)
    else:
        reports = {}
        for name, rule in named.items():
            reports[name] = run_rule(problem, name, rule, sched, **settings)
            stages = set(reports[name].seconds)
            if on_report is not None:
                on_report(reports[name])
            _replay_stages(reports[name], on_stage, skip=stages)
    config = {"schedule": str(sched), "steps": steps, "chains": chains,
              "batch_size": batch_size, "clip_per": clip_per, "seed": seed,
              "record_every": record_every, "horizon": horizon, "starts": starts,
              "tracking_chains": tracking_chains, "max_nfev": max_nfev, "workers": workers}
    exp = Experiment(problem, sched, reports, config)
    if dead:
        raise RulesFailed(exp, dead)
    return exp


class RulesFailed(WorkerDied):
    """The worker processes of some rules died (killed, out of memory); the other rules ran
    to the end. ``experiment`` holds their reports; ``failed`` maps each lost rule to the
    error that says how its worker died."""

    def __init__(self, experiment: Experiment, failed: Mapping[str, BaseException]) -> None:
        self.experiment, self.failed = experiment, dict(failed)
        lost = "; ".join(str(e) for e in self.failed.values())
        kept = ", ".join(repr(n) for n in experiment.reports) or "none"
        super().__init__(f"{len(self.failed)} rule(s) lost: {lost} The other rules finished "
                         f"(`.experiment` holds them): {kept}.")


def _check_memory_up_front(problem: Problem, named: dict[str, ClipRule], steps: Any,
                           chains: Any, record_every: Any, workers: int) -> None:
    """Refuse, before any compute, runs whose records cannot fit in what this process may
    allocate (physical memory, RLIMIT_AS, cgroup), with the numbers."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
               for v in (steps, chains, record_every)):
        return                          # simulate_sgd names the bad argument
    if problem.device.type != "cpu":
        return                          # simulate_sgd checks the device's memory
    parts = run_memory(P=problem.P, chains=chains, steps=steps, record_every=record_every,
                       itemsize=torch.empty((), dtype=problem.dtype).element_size(),
                       rules=len(named), workers=workers)
    check_run_memory(parts, f"run_experiment with P = {problem.P}, chains = {chains}, "
                            f"steps = {steps}, record_every = {record_every} and {workers} "
                            f"rule(s) at once")


def _check_workers(workers: Any, n_rules: int, shard: bool) -> int:
    """The number of worker processes to use: ``workers`` checked, at most one per rule, and
    1 where forking is unsafe (with a warning saying why)."""
    workers = min(check_workers(workers), n_rules)
    if workers == 1:
        return 1
    ok, why = (False, "shard=True runs under torch.distributed") if shard else fork_available()
    if not ok:
        warnings.warn(f"workers={workers} ignored, rules run one after another: {why}.",
                      RuntimeWarning, stacklevel=3)
        return 1
    return workers


def _replay_stages(report: RuleReport, on_stage: Callable[[str, str, float], None] | None,
                   skip: set[str] = frozenset()) -> None:
    """Call ``on_stage`` for the stages of ``report`` not in ``skip``."""
    if on_stage is not None:
        for stage, seconds in report.seconds.items():
            if stage not in skip:
                on_stage(report.name, stage, seconds)


def _rules_in_workers(problem: Problem, named: dict[str, ClipRule], sched: Schedule,
                      settings: dict[str, Any], workers: int,
                      on_report: Callable[[RuleReport], None] | None
                      ) -> tuple[dict[str, RuleReport], dict[str, WorkerDied]]:
    """:func:`run_rule` (and ``on_report``) of each rule in a forked worker process; the
    reports, and the rules whose worker died."""
    on_stage = settings["on_stage"]

    def job(name: str, rule: ClipRule, first: bool) -> Callable[[], RuleReport]:
        # progress bars from the first worker only: two processes drawing bars on one
        # terminal would write over each other's lines
        mine = {**settings, "on_stage": None, "progress": settings["progress"] if first else False}

        def work() -> RuleReport:
            report = run_rule(problem, name, rule, sched, **mine)
            report.worker = {"pid": os.getpid(), "threads": torch.get_num_threads()}
            if on_report is not None:
                on_report(report)
            report.worker["peak_rss_mb"] = round(peak_rss_mb(), 1)
            return dataclasses.replace(report, field=None)   # rebuilt by the parent
        return work

    release_memory()                      # the children start from a trimmed heap
    reports: dict[str, RuleReport] = {}
    dead: dict[str, WorkerDied] = {}
    jobs = [(n, job(n, r, k == 0)) for k, (n, r) in enumerate(named.items())]
    for name, report in run_jobs(jobs, workers=workers, keep_going=True):
        if isinstance(report, WorkerDied):
            dead[name] = report
            continue
        report.field = MeanField(problem, report.rule, distributed=settings["shard"])
        reports[name] = report
        _replay_stages(report, on_stage)
    return reports, dead


__all__ = ["run_experiment", "run_rule", "Experiment", "RuleReport", "RulesFailed",
           "batched_loss", "tracking_in_groups"]
