r"""Many clipped-SGD chains at once: recursion (10) of the paper (docs/theory.md#recursion).

.. math:: \theta(n+1) = \Pi\big(\theta(n) - a(n)\, u(\theta(n); B_n)\big),

with ``u`` the clipped update direction of the batch ``B_n`` (per-sample clipping: the mean of
the clipped per-sample gradients; per-batch clipping: the clipped batch-mean gradient) and ``Pi``
the optional projection onto the ball of radius ``R`` (scheme (9)). All chains are stacked as
``theta`` of shape ``(chains, P)`` and advanced by one batched call of
:meth:`sa_clip.MeanField.directions` per step.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._validate import as_tensor, check_choice, check_memory, check_nonneg_int, check_positive
from .clipping import ClipRule, make_rule
from .io import load_npz, save_npz
from .meanfield import CLIP_PER, MeanField
from .problem import Problem
from .schedules import Schedule, make_schedule, warn_if_not_a2
from .trajectory import Trajectory

SAMPLING = ("iid", "epoch")


def _check_seed(seed: Any) -> tuple[torch.Generator, int | None]:
    if isinstance(seed, torch.Generator):
        return seed, None
    if seed is None:
        seed = secrets.randbits(62)
    seed = check_nonneg_int("seed", seed)
    return torch.Generator().manual_seed(seed), seed


def _check_indices(indices: Any, steps: int, chains: int, batch_size: int, n: int,
                   device: torch.device) -> torch.Tensor:
    idx = as_tensor("indices", indices)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"`indices` must hold integer sample indices, got dtype {idx.dtype}.")
    shapes = f"(steps, batch_size) = ({steps}, {batch_size}) or (chains, steps, batch_size) = " \
             f"({chains}, {steps}, {batch_size})"
    if idx.dim() == 2 and tuple(idx.shape) == (steps, batch_size):
        idx = idx.unsqueeze(0).expand(chains, -1, -1)
    elif not (idx.dim() == 3 and tuple(idx.shape) == (chains, steps, batch_size)):
        raise ValueError(f"`indices` must have shape {shapes}, got {tuple(idx.shape)}.")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"`indices` must lie in [0, {n - 1}] (N = {n} samples), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}].")
    return idx.to(device=device, dtype=torch.long)


class _Sampler:
    """Batch indices drawn in buffers from ``gen``; its state (the generator state before the
    current buffer and the position in it) is enough to redraw the buffer exactly, so a resumed
    run draws the same batches as an uninterrupted one."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen
        self.buf: torch.Tensor | None = None
        self.pos = 0
        self.done = 0  # rows drawn before the current buffer
        self.before = gen.get_state()

    def _draw(self) -> torch.Tensor:
        raise NotImplementedError

    def __next__(self) -> torch.Tensor:
        if self.buf is None or self.pos == len(self.buf):
            self.done += 0 if self.buf is None else len(self.buf)
            self.before = self.gen.get_state()
            self.buf, self.pos = self._draw(), 0
        self.pos += 1
        return self.buf[self.pos - 1]

    def state(self) -> tuple[torch.Tensor, int, bool]:
        """``(generator state before the current buffer, position, whether drawn)``."""
        if self.buf is None or self.pos == len(self.buf):
            return self.gen.get_state(), 0, False
        return self.before, self.pos, True

    def restore(self, rng: torch.Tensor, pos: int, drawn: bool, step: int) -> None:
        """Back to the state :meth:`state` returned at step ``step``."""
        self.gen.set_state(rng)
        self.buf, self.pos, self.done = None, 0, step - (pos if drawn else 0)
        if drawn:
            self.before = self.gen.get_state()
            self.buf, self.pos = self._draw(), pos


class _IidSampler(_Sampler):
    """Uniform with replacement, drawn in blocks of steps (block size fixed by the sizes)."""

    def __init__(self, gen: torch.Generator, n: int, chains: int, b: int, steps: int) -> None:
        super().__init__(gen)
        self.n, self.shape, self.steps = n, (chains, b), steps
        self.block = max(1, min(steps, 2 ** 20 // max(1, chains * b)))

    def _draw(self) -> torch.Tensor:
        k = min(self.block, self.steps - self.done)
        return torch.randint(self.n, (k, *self.shape), generator=self.gen)


class _EpochSampler(_Sampler):
    """Without replacement: each chain walks through its own random permutation of the data in
    batches of ``b``; the last ``n mod b`` samples of every epoch are dropped (``drop_last``), so
    a batch never holds a sample twice."""

    def __init__(self, gen: torch.Generator, n: int, chains: int, b: int) -> None:
        super().__init__(gen)
        self.n, self.chains, self.b = n, chains, b

    def _draw(self) -> torch.Tensor:
        nb = self.n // self.b
        perm = torch.argsort(torch.rand(self.chains, self.n, generator=self.gen), dim=1)
        return perm[:, :nb * self.b].reshape(self.chains, nb, self.b).transpose(0, 1)


class _ReplaySampler(_Sampler):
    def __init__(self, gen: torch.Generator, replay: torch.Tensor) -> None:
        super().__init__(gen)
        self.replay = replay

    def _draw(self) -> torch.Tensor:
        return self.replay.transpose(0, 1)


def _digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (identifies a start or a replayed batch list
    in a checkpoint's configuration)."""
    a = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{a.dtype}{tuple(a.shape)}".encode())
    h.update(a.numpy().tobytes())
    return h.hexdigest()[:32]


def _load_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    arrays, meta = load_npz(path, kind="SgdCheckpoint")
    for key in ("config", "step", "sampler"):
        if key not in meta:
            raise ValueError(f"{path!r} is not a complete simulate_sgd checkpoint (no {key!r}).")
    return arrays, meta


def _restore(path: str, state: tuple[dict[str, Any], dict[str, Any]], config: dict[str, Any],
             s: dict[str, torch.Tensor], sampler: _Sampler) -> int:
    """Load a checkpoint into the run state ``s`` and ``sampler``; returns its step."""
    arrays, meta = state
    saved = meta["config"]
    diff = [f"{k}: checkpoint {saved.get(k)!r}, this call {config.get(k)!r}"
            for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    if diff:
        raise ValueError(f"cannot resume from {path!r}: its configuration differs from this "
                         "call's (" + "; ".join(diff) + ").")
    step = meta["step"]
    if not isinstance(step, int) or not 0 <= step <= config["steps"]:
        raise ValueError(f"{path!r} holds an invalid step {step!r}.")
    for name, t in s.items():
        a = arrays.get(name)
        if a is None or tuple(a.shape) != tuple(t.shape) or str(a.dtype) != \
                str(t.dtype).replace("torch.", ""):
            got = None if a is None else f"{a.dtype} {tuple(a.shape)}"
            raise ValueError(f"{path!r}: array {name!r} is {got}, expected "
                             f"{t.dtype} {tuple(t.shape)}.")
        s[name] = torch.from_numpy(np.array(a)).to(t.device)
    rng = arrays.get("rng")
    if rng is None or rng.dtype != np.uint8 or rng.ndim != 1:
        raise ValueError(f"{path!r}: the generator state 'rng' is missing or not uint8 1-D.")
    sm = meta["sampler"]
    try:
        sampler.restore(torch.from_numpy(np.array(rng)), int(sm["pos"]), bool(sm["drawn"]), step)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path!r}: cannot restore the generator state ({exc}).") from exc
    return step


def simulate_sgd(problem: Problem, rule: ClipRule | str, schedule: Schedule | str | Callable,
                 *, steps: int, chains: int = 1, batch_size: int = 1, clip_per: str = "sample",
                 seed: int | torch.Generator | None = None, theta0: Any = None,
                 indices: Any = None, record_every: int = 1, sampling: str = "iid",
                 project_radius: float | None = None, blowup_radius: float = 1e6,
                 record_indices: bool = False, record_noise: bool = False,
                 field: MeanField | None = None, progress: bool = False,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1000,
                 resume: bool = False) -> Trajectory:
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
    seed : int, torch.Generator or None
        Seeds the CPU generator that draws the batch indices (None: a fresh random seed, stored
        in ``meta["seed"]`` so the run can be repeated). Same seed, device and dtype: same numbers.
    theta0 : None, ``(P,)`` or ``(chains, P)``
        Start: ``problem.theta0`` for every chain by default; a ``(P,)`` vector is broadcast.
    indices : integer ``(steps, batch_size)`` (shared by all chains) or
        ``(chains, steps, batch_size)``, optional
        Replays an exact sampling sequence (then ``seed`` and ``sampling`` are not used).
    record_every : int >= 1
        Record every ``record_every``-th step; step 0 and the last step are always recorded.
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
    progress : bool
        Show a tqdm progress bar.
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
        ``ValueError`` lists what differs. With ``seed=None`` the checkpoint's seed is used.

    Returns
    -------
    Trajectory
        ``theta (chains, records, P)``, ``tau (records,)``, ``steps (records,)``,
        ``blowup_step (chains,)``, ``clip_fraction (chains, records)`` and the optional records.
        Recorded steps use :meth:`MeanField.directions_stats` (the update and the clipping
        fraction from one gradient pass), the others :meth:`MeanField.directions`.

    Raises
    ------
    TypeError, ValueError
        For a bad problem, rule, schedule, ``steps <= 0``, ``chains < 1``, ``batch_size < 1``,
        an unknown ``clip_per`` or ``sampling``, badly shaped or out-of-range ``indices``, a
        ``theta0`` of the wrong shape, or a ``field`` for another problem or rule; a
        ``checkpoint`` file that is unreadable or whose configuration differs (``resume``).

    Example
    -------
    >>> import sa_clip as sc
    >>> p = sc.problems.logistic2d()
    >>> run = sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.5", steps=10, chains=4, seed=0)
    >>> run.theta.shape, run.tau.shape
    (torch.Size([4, 11, 2]), torch.Size([11]))
    """
    from . import __version__

    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be a sa_clip.Problem, got {type(problem).__name__}.")
    rule = make_rule(rule) if isinstance(rule, str) else rule
    if not isinstance(rule, ClipRule):
        raise TypeError(f"`rule` must be a ClipRule or a rule name, got {rule!r}.")
    schedule = make_schedule(schedule)
    steps = check_nonneg_int("steps", steps, minimum=1)
    chains = check_nonneg_int("chains", chains, minimum=1)
    batch_size = check_nonneg_int("batch_size", batch_size, minimum=1)
    check_choice("clip_per", clip_per, CLIP_PER)
    check_choice("sampling", sampling, SAMPLING)
    record_every = check_nonneg_int("record_every", record_every, minimum=1)
    if project_radius is not None:
        project_radius = check_positive("project_radius", project_radius)
    blowup_radius = check_positive("blowup_radius", blowup_radius, allow_inf=True)
    if field is None:
        field = MeanField(problem, rule)
    elif not isinstance(field, MeanField) or field.problem is not problem:
        raise ValueError("`field` must be a sa_clip.MeanField built on the same `problem`.")
    elif field.rule != rule:
        raise ValueError(f"`field` uses the rule {field.rule!r} but `rule` is {rule!r}.")
    n_data, dev, dt = problem.N, problem.device, problem.dtype

    n_rec = len(range(0, steps + 1, record_every)) + (steps % record_every != 0)
    check_memory(f"`chains` = {chains}, `batch_size` = {batch_size}, `steps` = {steps} and "
                 f"`record_every` = {record_every} (P = {problem.P})",
                 chains * (n_rec * (problem.P + 1) * (1 + 2 * record_noise)
                           + batch_size * (problem.P + 1)
                           + (2 * n_data if sampling == "epoch" and indices is None else 0)
                           + (steps * batch_size if record_indices else 0)),
                 torch.empty((), dtype=dt).element_size(), dev)
    if theta0 is None:
        theta = problem.theta0.expand(chains, -1).clone()
    else:
        t0 = as_tensor("theta0", theta0, dtype=dt, device=dev)
        if t0.shape == (problem.P,):
            theta = t0.expand(chains, -1).clone()
        elif t0.shape == (chains, problem.P):
            theta = t0.clone()
        else:
            raise ValueError(f"`theta0` must have shape (P,) = ({problem.P},) or (chains, P) = "
                             f"({chains}, {problem.P}), got {tuple(t0.shape)}.")
        if not bool(torch.isfinite(theta).all()):
            raise ValueError("`theta0` must be finite.")

    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        checkpoint_every = check_nonneg_int("checkpoint_every", checkpoint_every, minimum=1)
    elif resume:
        raise ValueError("`resume=True` needs a `checkpoint` path to resume from.")
    if not isinstance(resume, bool):
        raise TypeError(f"`resume` must be a bool, got {resume!r}.")
    state = None
    if resume and os.path.exists(checkpoint):
        state = _load_checkpoint(checkpoint)
        if seed is None:  # the run being resumed drew a fresh seed: keep it
            seed = state[1]["config"]["seed"]
    gen, used_seed = _check_seed(seed)
    if indices is not None:
        replay = _check_indices(indices, steps, chains, batch_size, n_data, dev)
        batches: _Sampler = _ReplaySampler(gen, replay)
    elif sampling == "iid":
        batches = _IidSampler(gen, n_data, chains, batch_size, steps)
    else:
        if batch_size > n_data:
            raise ValueError(f"`batch_size` = {batch_size} exceeds N = {n_data}: sampling='epoch'"
                             " draws batches of distinct samples.")
        batches = _EpochSampler(gen, n_data, chains, batch_size)

    rates = schedule.rates(steps)
    tau_all = schedule.tau(steps)
    warn_if_not_a2(schedule, stacklevel=3)
    rec_steps = sorted(set(range(0, steps + 1, record_every)) | {steps})
    slot = torch.full((steps + 1,), -1, dtype=torch.long)
    slot[rec_steps] = torch.arange(len(rec_steps))
    slot_of = slot.tolist()
    n_rec = len(rec_steps)
    nan = float("nan")

    meta = {"rule": rule.to_dict(), "schedule": schedule.to_dict(), "problem": problem.name,
            "steps": steps, "chains": chains, "batch_size": batch_size, "clip_per": clip_per,
            "seed": used_seed, "sampling": "replay" if indices is not None else sampling,
            "record_every": record_every, "project_radius": project_radius,
            "blowup_radius": blowup_radius, "dtype": str(dt).replace("torch.", ""),
            "N": n_data, "P": problem.P, "sa_clip_version": __version__}
    # what a checkpoint must match to be resumed (digests of the start and the replayed batches)
    config = {**{k: v for k, v in meta.items() if k != "sa_clip_version"},
              "record_indices": bool(record_indices), "record_noise": bool(record_noise),
              "device": str(dev), "theta0": _digest(theta),
              "indices": None if indices is None else _digest(replay)}

    # the run's state: everything the loop reads and writes
    s: dict[str, torch.Tensor] = {
        "theta": theta,
        "theta_rec": torch.full((chains, n_rec, problem.P), nan, dtype=dt, device=dev),
        "clip_rec": torch.full((chains, n_rec), nan, dtype=dt, device=dev),
        "alive": torch.ones(chains, dtype=torch.bool, device=dev),
        "blowup": torch.full((chains,), -1, dtype=torch.long, device=dev)}
    s["theta_rec"][:, 0] = theta
    if record_indices:
        s["idx_rec"] = torch.zeros((chains, steps, batch_size), dtype=torch.long)
    if record_noise:
        s["xi"] = torch.zeros_like(theta)
        s["qv"] = theta.new_zeros(chains)
        s["xi_rec"] = torch.full_like(s["theta_rec"], nan)
        s["qv_rec"] = torch.full_like(s["clip_rec"], nan)
        s["nn_rec"] = torch.full_like(s["clip_rec"], nan)
        s["xi_rec"][:, 0] = 0.0
        s["qv_rec"][:, 0] = 0.0
    first = 0
    if state is not None:
        first = _restore(checkpoint, state, config, s, batches)

    def save_state(step: int) -> None:
        rng, pos, drawn = batches.state()
        arrays = {**s, "rng": rng}
        save_npz(checkpoint, arrays, {"kind": "SgdCheckpoint", "config": config, "step": step,
                                      "sampler": {"pos": pos, "drawn": drawn},
                                      "seed": used_seed})

    theta, alive, blowup = s["theta"], s["alive"], s["blowup"]
    theta_rec, clip_rec, idx_rec = s["theta_rec"], s["clip_rec"], s.get("idx_rec")
    if record_noise:
        xi, qv, xi_rec, qv_rec, nn_rec = (s[k] for k in ("xi", "qv", "xi_rec", "qv_rec",
                                                          "nn_rec"))
    with torch.no_grad():
        for n in tqdm(range(first, steps), disable=not progress, desc="simulate_sgd",
                      initial=first, total=steps):
            if checkpoint is not None and n > first and n % checkpoint_every == 0:
                s.update(theta=theta, alive=alive, blowup=blowup)
                if record_noise:
                    s.update(xi=xi, qv=qv)
                save_state(n)
            idx = next(batches).to(dev)
            if idx_rec is not None:
                idx_rec[:, n] = idx.cpu()
            r = slot_of[n]
            if r >= 0:
                u, frac = field.directions_stats(theta, idx, clip_per)
                clip_rec[:, r] = torch.where(alive, frac, nan)
            else:
                u = field.directions(theta, idx, clip_per)
            a = float(rates[n])
            new = theta - a * u
            if project_radius is not None:
                norm = new.norm(dim=1, keepdim=True)
                new = torch.where(norm > project_radius, new * (project_radius / norm), new)
            bad = ~torch.isfinite(new).all(1) | (new.norm(dim=1) > blowup_radius)
            blowup = torch.where(bad & alive, n + 1, blowup)
            if record_noise:
                m = u - field(theta)
                live = alive[:, None]
                xi = torch.where(live, xi + a * m, xi)
                qv = torch.where(alive, qv + a * a * (m * m).sum(1), qv)
                if r >= 0:
                    nn_rec[:, r] = torch.where(alive, m.norm(dim=1), nan)
            alive = alive & ~bad
            theta = torch.where(alive[:, None], new, theta)
            r1 = slot_of[n + 1]
            if r1 >= 0:
                theta_rec[:, r1] = torch.where(alive[:, None], theta, nan)
                if record_noise:
                    xi_rec[:, r1] = torch.where(alive[:, None], xi, nan)
                    qv_rec[:, r1] = torch.where(alive, qv, nan)
    if checkpoint is not None and first < steps:
        s.update(theta=theta, alive=alive, blowup=blowup)
        if record_noise:
            s.update(xi=xi, qv=qv)
        save_state(steps)

    return Trajectory(
        theta=theta_rec, tau=tau_all[rec_steps].to(dev),
        steps=torch.tensor(rec_steps, dtype=torch.int64, device=dev), blowup_step=blowup,
        clip_fraction=clip_rec, indices=idx_rec,
        xi=xi_rec if record_noise else None,
        quadratic_variation=qv_rec if record_noise else None,
        noise_norm=nn_rec if record_noise else None, meta=meta)


__all__ = ["simulate_sgd", "SAMPLING"]
