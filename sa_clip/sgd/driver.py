r"""Many clipped-SGD chains at once: the driver of recursion (10) of the paper.

.. math:: \theta(n+1) = \Pi\big(\theta(n) - a(n)\, u(\theta(n); B_n)\big)

(the maths is in ``docs/theory.md``). :func:`simulate_sgd` checks its arguments, builds the
start (:func:`~sa_clip.sgd.state.sgd_init`), the sampler (:mod:`sa_clip.sgd.samplers`) and the
records (:class:`~sa_clip.sgd.recorder.Recorder`), then loops over
:func:`~sa_clip.sgd.state.sgd_step`, writing checkpoints (:mod:`sa_clip.sgd.checkpoint`) on the
way. All chains are stacked as ``theta`` of shape ``(chains, P)`` and advanced by one batched
call of :meth:`sa_clip.MeanField.directions` per step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import torch

from .._cost import Meter, check_progress, duration
from .._validate import check_choice, check_memory, check_nonneg_int, check_positive
from ..clipping import ClipRule, make_rule
from ..meanfield import CLIP_PER, MeanField
from ..problem import Problem
from ..schedules import Schedule, make_schedule, warn_if_not_a2
from ..trajectory import Trajectory
from . import checkpoint as ckpt
from .recorder import Recorder, record_count
from .samplers import SAMPLING, Sampler, check_indices, make_generator, make_sampler
from .state import ChainState, sgd_init, sgd_step

#: largest ``steps`` (and chains, batch size, record_every) accepted: int64 step numbers
MAX_STEPS = 2 ** 62


def simulate_sgd(problem: Problem, rule: ClipRule | str, schedule: Schedule | str | Callable,
                 *, steps: int, chains: int = 1, batch_size: int = 1, clip_per: str = "sample",
                 seed: int | torch.Generator | None = None, theta0: Any = None,
                 indices: Any = None, record_every: int = 1, sampling: str = "iid",
                 project_radius: float | None = None, blowup_radius: float = 1e6,
                 record_indices: bool = False, record_noise: bool = False,
                 field: MeanField | None = None, progress: bool | None = None,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1000,
                 resume: bool = False, force_resume: bool = False) -> Trajectory:
    r"""Run ``chains`` independent clipped-SGD chains for ``steps`` steps, all at once.

    Main arguments
    --------------
    problem : Problem
    rule : ClipRule or registry name (``"norm"`` needs ``lam``: pass a rule object)
    schedule : Schedule, CLI string (``"power:0.5,0.7"``) or callable ``n -> a(n)``
        Step sizes ``a(n)``; a schedule violating (A2) triggers one ``UserWarning``.
    steps : int >= 1
    chains : int >= 1
    batch_size : int >= 1
    clip_per : ``"sample"`` | ``"batch"``
        Clip each sample's gradient then average (the paper, DP-SGD), or clip the batch-mean
        gradient (``torch.nn.utils.clip_grad_norm_``).

    Other arguments
    ---------------
    seed : int in ``[0, 2**63 - 1]``, torch.Generator or None
        Seeds the CPU generator that draws the batch indices (None: a fresh random seed, stored
        in ``meta["seed"]`` so the run can be repeated). Same seed, device and dtype: same numbers.
    theta0 : None, ``(P,)`` or ``(chains, P)``
        Start: ``problem.theta0`` for every chain by default; a ``(P,)`` vector is broadcast.
    indices : integer ``(steps, batch_size)`` (shared by all chains) or
        ``(chains, steps, batch_size)``, optional
        Replays an exact sampling sequence (then ``seed`` and ``sampling`` are not used).
    record_every : int >= 1
        Record every ``record_every``-th step; step 0 and the last step are always recorded,
        and for ``record_every >= 5`` the log-spaced early steps 1, 2, 4, 5, 8, ... below it
        (:func:`sa_clip.sgd.recorder.early_steps`), so curves start with the first steps.
    sampling : ``"iid"`` | ``"epoch"``
        Batches uniform with replacement (the paper's assumption), or epochs: each chain
        walks through its own random permutation, the last ``N mod batch_size`` samples of each
        epoch dropped so that a batch holds distinct samples (needs ``batch_size <= N``).
    project_radius : float, optional
        Project onto the ball ``||theta|| <= R`` after each step (the projected scheme (9)).
    blowup_radius : float
        A chain whose iterate is non-finite or has ``||theta|| > blowup_radius`` blew up: it is
        frozen at its last good iterate (so it costs nothing but compute), its
        ``blowup_step`` is set to that step, its records from that step on are NaN, and the
        other chains go on. Nothing is raised.
    record_indices : bool
        Keep the drawn indices, ``(chains, steps, batch_size)``, in ``Trajectory.indices``.
    record_noise : bool
        Record the martingale noise: ``M(n+1) = u - H(theta(n))`` with the exact ``H``
        (one batched full-data evaluation per step: expensive), ``xi(n) = sum_{k<n} a(k) M(k+1)``,
        its quadratic variation ``sum_{k<n} a(k)^2 ||M(k+1)||^2`` and ``||M(n+1)||``.
    field : MeanField, optional
        The engine to use (e.g. one built with a chosen ``method``); its rule must be ``rule``.
    progress : bool or None
        ``True``: after timing the first steps, print the cost to stderr ("simulate_sgd: 600
        steps x 32 chains x 0.2 ms: about 4 s") and show a tqdm bar. ``None`` (default): the
        same only when the run will take more than a few seconds (never when the environment
        sets ``SA_CLIP_PROGRESS=0``). ``False``: silent.
    checkpoint : path, optional
        Write a checkpoint to this ``.npz`` file every ``checkpoint_every`` steps and at the end
        (replacing an existing file unless ``resume=True`` resumes from it; atomically:
        temporary file then ``os.replace``; format in ``docs/format.md``, kind
        ``"SgdCheckpoint"``). It holds the state of all chains, the step, the sampler's
        generator state (``torch.Generator.get_state()``), the records so far and the
        configuration.
    checkpoint_every : int >= 1
        Steps between checkpoints (each one costs a write of the records so far).
    resume : bool
        Continue from ``checkpoint`` if that file exists (else start from step 0 and write it,
        so ``resume=True`` is safe on a first run). The result is bit-for-bit the Trajectory of
        an uninterrupted run with the same arguments (same device, dtype and ``field``
        method). The checkpoint's configuration (problem name, N, P, dtype, device, rule,
        schedule, steps, chains, batch size, clip_per, seed, sampling, record options, radii,
        and digests of the start and of replayed ``indices``) must equal this call's, else a
        ``ValueError`` lists what differs; so must the problem's fingerprint (a hash of ``X``
        and ``y``, the loss, the model's architecture, parameter layout and buffers, dtype and
        device type). The file's content digest and the invariants of a run are checked too
        (see :mod:`sa_clip.sgd.checkpoint` and ``docs/reliability.md``). With ``seed=None`` the
        checkpoint's seed is used. The loss and the model are compared by content (code,
        closure cells, ``functools.partial`` arguments, attributes, parameters, buffers), and
        the checkpoint must come from this sa_clip version. A checkpoint path that is not a
        regular file (a FIFO) is refused.
    force_resume : bool
        Resume even when the loss or model changed, cannot be fingerprinted (it holds an
        object that cannot be hashed by content), or the checkpoint comes from another sa_clip
        version: each becomes a ``UserWarning`` naming it. The configuration, data and layout
        must still match.

    Returns
    -------
    Trajectory
        ``theta (chains, records, P)``, ``tau (records,)``, ``steps (records,)``,
        ``blowup_step (chains,)``, ``clip_fraction (chains, records)`` and the optional records.
        Recorded steps use :meth:`MeanField.directions_stats` (the update and the clipping
        fraction from one gradient pass), the others :meth:`MeanField.directions`. For a stack
        of ``Linear`` layers on the fast path with a global or no-clipping rule that is not
        relative, without projection or noise records, the step is the in-place kernel of
        :mod:`sa_clip.sgd._fused` instead (updates written into ``theta``, norms from the
        layer inputs and output gradients): the same recursion, rounded differently (agrees
        with the general step to round-off; blow-ups at the same step).

    Raises
    ------
    TypeError, ValueError
        For a bad problem, rule, schedule, ``steps <= 0``, ``chains < 1``, ``batch_size < 1``,
        an unknown ``clip_per`` or ``sampling``, badly shaped or out-of-range ``indices``, a
        ``theta0`` of the wrong shape, or a ``field`` for another problem or rule; a
        ``checkpoint`` path whose folder does not exist or is not writable (checked before the
        first step), a checkpoint file that is unreadable, edited, or whose configuration or
        problem differs (``resume``).

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d()
    >>> run = sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.5", steps=10, chains=4, seed=0)
    >>> run.theta.shape, run.tau.shape
    (torch.Size([4, 11, 2]), torch.Size([11]))
    """
    run = _Run.build(problem, rule, schedule, steps=steps, chains=chains,
                     batch_size=batch_size, clip_per=clip_per, record_every=record_every,
                     sampling=sampling, project_radius=project_radius,
                     blowup_radius=blowup_radius, field=field)
    progress = check_progress(progress)
    cp = _Checkpointing.build(checkpoint, checkpoint_every, resume, force_resume)
    saved = cp.load()
    if seed is None and saved is not None:   # the run being resumed drew a fresh seed: keep it
        seed = saved.meta["config"]["seed"]
    gen, used_seed = make_generator(seed)
    run.check_memory(record_noise, record_indices, indices is None)
    state = sgd_init(problem, chains, theta0, record_noise=bool(record_noise))
    replay = None if indices is None else check_indices(indices, steps, chains, batch_size,
                                                        problem.N, problem.device)
    sampler = make_sampler(gen, sampling=sampling, n=problem.N, chains=chains,
                           batch_size=batch_size, steps=steps, replay=replay)
    tau = run.schedule.tau(steps)
    warn_if_not_a2(run.schedule, stacklevel=3)
    recorder = Recorder(steps=steps, record_every=record_every, chains=chains, P=problem.P,
                        dtype=problem.dtype, device=problem.device, batch_size=batch_size,
                        record_indices=bool(record_indices), record_noise=bool(record_noise))
    recorder.start(state)
    meta = run.meta(used_seed, replay is not None)
    if cp.path is not None:   # what a checkpoint must match (hashes: only when checkpointing)
        cp.config = {**{k: v for k, v in meta.items() if k != "sa_clip_version"},
                     "record_indices": bool(record_indices),
                     "record_noise": bool(record_noise), "device": str(problem.device),
                     "theta0": ckpt.tensor_digest(state.theta),
                     "indices": None if replay is None else ckpt.tensor_digest(replay)}
        cp.seed = used_seed
    first = 0
    if saved is not None:
        state, first = cp.restore(saved, problem, state, sampler, recorder)
    state = run.loop(state, sampler, recorder, cp, first, progress)
    if first < steps:
        cp.save(steps, state, sampler, recorder, problem)
    return recorder.trajectory(state, tau, meta)


@dataclass
class _Run:
    """The checked arguments of a run and its stepping loop."""

    problem: Problem
    rule: ClipRule
    schedule: Schedule
    field: MeanField
    steps: int
    chains: int
    batch_size: int
    clip_per: str
    record_every: int
    sampling: str
    project_radius: float | None
    blowup_radius: float

    @classmethod
    def build(cls, problem: Any, rule: Any, schedule: Any, *, steps: Any, chains: Any,
              batch_size: Any, clip_per: Any, record_every: Any, sampling: Any,
              project_radius: Any, blowup_radius: Any, field: Any) -> _Run:
        if not isinstance(problem, Problem):
            raise TypeError(f"`problem` must be a sa_clip.Problem, got {type(problem).__name__}.")
        rule = make_rule(rule) if isinstance(rule, str) else rule
        if not isinstance(rule, ClipRule):
            raise TypeError(f"`rule` must be a ClipRule or a rule name, got {rule!r}.")
        schedule = make_schedule(schedule)
        # step numbers are int64 and the ODE times of all steps are formed: below 2^62
        steps = check_nonneg_int("steps", steps, minimum=1, maximum=MAX_STEPS)
        chains = check_nonneg_int("chains", chains, minimum=1, maximum=MAX_STEPS)
        batch_size = check_nonneg_int("batch_size", batch_size, minimum=1, maximum=MAX_STEPS)
        check_choice("clip_per", clip_per, CLIP_PER)
        check_choice("sampling", sampling, SAMPLING)
        record_every = check_nonneg_int("record_every", record_every, minimum=1,
                                        maximum=MAX_STEPS)
        if project_radius is not None:
            project_radius = check_positive("project_radius", project_radius)
        blowup_radius = check_positive("blowup_radius", blowup_radius, allow_inf=True)
        return cls(problem, rule, schedule, check_field(field, problem, rule), steps, chains,
                   batch_size, clip_per, record_every, sampling, project_radius, blowup_radius)

    def check_memory(self, record_noise: bool, record_indices: bool, drawn: bool) -> None:
        """Refuse sizes whose records and buffers cannot fit before allocating them."""
        p, k, b = self.problem, self.chains, self.batch_size
        item = torch.empty((), dtype=p.dtype).element_size()
        n_rec = record_count(self.steps, self.record_every)
        check_memory(f"`chains` = {k}, `batch_size` = {b}, `steps` = {self.steps} and "
                     f"`record_every` = {self.record_every} (P = {p.P})",
                     k * (n_rec * (p.P + 1) * (1 + 2 * record_noise) + b * (p.P + 1)
                          + (2 * p.N if self.sampling == "epoch" and drawn else 0)
                          + (self.steps * b if record_indices else 0))
                     # the step sizes and ODE times of every step (float64)
                     + 2 * (self.steps + 1) * 8 // item, item, p.device)

    def meta(self, seed: int | None, replay: bool) -> dict[str, Any]:
        """``Trajectory.meta``: the run's configuration."""
        from .._version import __version__
        p = self.problem
        return {"rule": self.rule.to_dict(), "schedule": self.schedule.to_dict(),
                "problem": p.name, "steps": self.steps, "chains": self.chains,
                "batch_size": self.batch_size, "clip_per": self.clip_per, "seed": seed,
                "sampling": "replay" if replay else self.sampling,
                "record_every": self.record_every, "project_radius": self.project_radius,
                "blowup_radius": self.blowup_radius,
                "dtype": str(p.dtype).replace("torch.", ""), "N": p.N, "P": p.P,
                "sa_clip_version": __version__}

    def loop(self, state: ChainState, sampler: Sampler, recorder: Recorder,
             cp: _Checkpointing, first: int, progress: bool | None) -> ChainState:
        """Steps ``first, ..., steps - 1``, checkpointing every ``cp.every`` steps."""
        rates = self.schedule.rates(self.steps).tolist()
        dev = self.problem.device
        left, k = self.steps - first, self.chains
        meter = Meter("simulate_sgd", progress, units=left, total=self.steps, unit="step",
                      describe=lambda sec: f"{left} steps x {k} chains x {duration(sec / k)}")
        meter.tick(first, n=0)
        with torch.no_grad(), closing(meter):
            for n in range(first, self.steps):
                if n > first and cp.due(n):
                    cp.save(n, state, sampler, recorder, self.problem)
                idx = next(sampler).to(dev)
                recorder.batch(n, idx)
                state, info = sgd_step(self.field, state, idx, rates[n], step=n,
                                       clip_per=self.clip_per, project_radius=self.project_radius,
                                       blowup_radius=self.blowup_radius,
                                       stats=recorder.slot(n) >= 0, inplace=True)
                recorder.step(n, state, info)
                meter.tick(n + 1)
        return state


def check_field(field: Any, problem: Problem, rule: ClipRule) -> MeanField:
    """``field`` when it is a MeanField on ``problem`` with ``rule``; a new one when None."""
    if field is None:
        return MeanField(problem, rule)
    if not isinstance(field, MeanField) or field.problem is not problem:
        raise ValueError("`field` must be a sa_clip.MeanField built on the same `problem`.")
    if field.rule != rule:
        raise ValueError(f"`field` uses the rule {field.rule!r} but `rule` is {rule!r}.")
    return field


@dataclass
class _Checkpointing:
    """Where and how often a run writes checkpoints (``path`` None: never)."""

    path: str | None
    every: int
    resume: bool
    config: dict[str, Any] | None = None
    seed: int | None = None
    force: bool = False
    _fingerprint: dict[str, Any] | None = None

    @classmethod
    def build(cls, checkpoint: Any, every: Any, resume: Any, force: Any = False
              ) -> _Checkpointing:
        if checkpoint is None:
            if resume:
                raise ValueError("`resume=True` needs a `checkpoint` path to resume from.")
        else:
            checkpoint = ckpt.check_checkpoint_path(checkpoint)
            every = check_nonneg_int("checkpoint_every", every, minimum=1)
        if not isinstance(resume, bool):
            raise TypeError(f"`resume` must be a bool, got {resume!r}.")
        if not isinstance(force, bool):
            raise TypeError(f"`force_resume` must be a bool, got {force!r}.")
        if resume and checkpoint is not None:
            ckpt.check_resume_file(checkpoint)
        return cls(checkpoint, every, resume, force=force)

    def load(self) -> ckpt.Saved | None:
        """The checkpoint to resume from, if resuming and it exists."""
        if self.path is None or not self.resume or not os.path.exists(self.path):
            return None
        return ckpt.load_checkpoint(self.path)

    def fingerprint(self, problem: Problem) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = ckpt.problem_fingerprint(problem)
        return self._fingerprint

    def due(self, n: int) -> bool:
        return self.path is not None and n % self.every == 0

    def restore(self, saved: ckpt.Saved, problem: Problem, state: ChainState, sampler: Sampler,
                recorder: Recorder) -> tuple[ChainState, int]:
        assert self.config is not None
        return ckpt.restore(saved, config=self.config, fingerprint=self.fingerprint(problem),
                            state=state, sampler=sampler, recorder=recorder,
                            force=self.force)

    def save(self, step: int, state: ChainState, sampler: Sampler, recorder: Recorder,
             problem: Problem) -> None:
        if self.path is None:
            return
        assert self.config is not None
        ckpt.save_checkpoint(self.path, step=step, state=state, sampler=sampler,
                             recorder=recorder, config=self.config,
                             fingerprint=self.fingerprint(problem), seed=self.seed)


__all__ = ["simulate_sgd", "check_field", "SAMPLING"]
