"""Checkpoints of :func:`sa_clip.simulate_sgd`: save and restore (state, sampler, records,
configuration), refusing anything that would not continue the same run.

A checkpoint is an ``.npz`` file of kind ``"SgdCheckpoint"`` (``docs/format.md``) written
atomically. Its metadata carry

* ``config``: every argument that determines the numbers (see :func:`sa_clip.simulate_sgd`);
* ``fingerprint``: what the problem is (:func:`problem_fingerprint`: a SHA-256 of ``X`` and ``y``
  read chunk by chunk through ``problem.data``, the loss's and the model's content (code,
  closure cells, ``partial`` arguments, attributes, parameters, buffers: see
  :mod:`sa_clip.sgd.fingerprint`), the parameter layout, dtype, device type and the sa_clip
  version that wrote it);
* ``step``, ``sampler`` (``pos``, ``drawn``), ``seed``;
* ``checkpoint_digest``: a SHA-256 of all arrays (names, dtypes, shapes, bytes) and of the
  metadata above (the file also carries :mod:`sa_clip.io`'s own ``digest``).

On resume (:func:`load_checkpoint`, then :func:`restore`) the digest must match, the
configuration and the fingerprint must equal this call's (else a ``ValueError`` lists what
differs; ``force_resume=True`` turns a changed loss or model, a loss that cannot be
fingerprinted, or another sa_clip version into a warning, never a changed configuration, data
or layout), and the invariants of a run must hold: ``0 <= step <= steps``; every array of the
expected dtype and shape; ``alive[k]`` exactly when ``blowup_step[k] == -1``, and
``1 <= blowup_step[k] <= step`` otherwise; ``theta`` finite where alive; the records written up
to ``step`` and not after; the sampler position inside the buffer its generator state redraws.

Example
-------
>>> import sa_clip as sc
>>> fp = problem_fingerprint(sc.problems.logistic2d(n=10))
>>> sorted(fp)
['N', 'P', 'buffers', 'data', 'device', 'dtype', 'layout', 'loss', 'model', 'opaque', 'sa_clip']
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..io import load_npz, save_npz
from ..problem import Problem, iter_chunks
from .fingerprint import describe, object_fingerprint
from .recorder import Recorder
from .samplers import Sampler
from .state import ChainState

KIND = "SgdCheckpoint"
_DATA_CHUNK = 2 ** 16


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 (32 hex digits) of a tensor's dtype, shape and bytes."""
    a = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{a.dtype}{tuple(a.shape)}".encode())
    h.update(a.numpy().tobytes())
    return h.hexdigest()[:32]


#: fingerprint entries a user may override with ``force_resume`` (code, not data)
_CODE_KEYS = ("loss", "model", "sa_clip")


def _loss_label(loss: Any) -> tuple[str, list[str]]:
    """A name for a loss and where it could not be hashed: the string itself, or a callable's
    name plus a hash of its content (code, closure cells, partial arguments, attributes)."""
    if isinstance(loss, str):
        return loss, []
    fp = object_fingerprint(loss)
    return f"{describe(loss)}#{fp.digest[:16]}", fp.opaque


def problem_fingerprint(problem: Problem) -> dict[str, Any]:
    """What determines a run besides its arguments, from the public ``Problem`` API.

    ``data``: SHA-256 of the samples read in chunks of 65,536 through ``problem.data`` (dtype,
    trailing shape and bytes of ``x`` and ``y``), the same for in-memory and streamed data;
    ``loss``: the loss name, or a callable's name and a hash of its content
    (:func:`sa_clip.sgd.fingerprint.object_fingerprint`: code, closure cells, ``partial``
    arguments, default arguments, globals it reads, a module's attributes, parameters and
    buffers); ``model``: SHA-256 of ``repr(problem.model)`` and of the model's content (each
    submodule's type, ``forward`` code, plain attributes, parameters and buffers);
    ``layout``: parameter names, shapes and offsets in ``theta``; ``buffers``: SHA-256 of the
    model's buffers and frozen parameters; ``dtype``, ``device`` (type only), ``N``, ``P``;
    ``sa_clip``: the version; ``opaque``: the parts of the loss or model that could not be
    hashed by content (resume refuses them unless forced).
    """
    h = hashlib.sha256()
    for s in iter_chunks(problem.N, _DATA_CHUNK):
        for t in problem.data(s):
            a = t.detach().cpu().contiguous()
            h.update(f"{a.dtype}{tuple(a.shape[1:])}".encode())
            h.update(a.numpy().tobytes())
    layout = [[b.name, list(b.shape), b.start, b.stop] for b in problem.blocks]
    bh = hashlib.sha256()
    fixed = dict(problem.model.named_buffers())
    fixed.update(getattr(problem, "frozen", {}))       # parameters with requires_grad=False
    for name, buf in sorted(fixed.items()):
        bh.update(name.encode())
        bh.update(tensor_digest(buf).encode())
    loss, opaque = _loss_label(problem.loss_spec)
    model = object_fingerprint(problem.model)
    mh = hashlib.sha256(repr(problem.model).encode())
    mh.update(model.digest.encode())
    return {"data": h.hexdigest()[:32], "N": problem.N, "P": problem.P, "loss": loss,
            "model": mh.hexdigest()[:32],
            "layout": hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:32],
            "buffers": bh.hexdigest()[:32], "dtype": str(problem.dtype).replace("torch.", ""),
            "device": problem.device.type, "sa_clip": __version__,
            "opaque": opaque + [f"the model: {o}" for o in model.opaque]}


def check_resume_file(path: str) -> None:
    """Refuse a checkpoint path that exists but is not a regular file (a FIFO, a device, a
    socket would block or never end a read)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a folder"
                if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise ValueError(f"`checkpoint` = {path!r} is {kind}; a checkpoint must be a regular "
                         "file.")


def check_checkpoint_path(path: str | os.PathLike) -> str:
    """The checkpoint path as a string, after checking it can be written: not a folder, in
    an existing, writable folder (checked before any step is computed)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`checkpoint` = {path!r} is a folder; give a file path such as "
                         f"{os.path.join(path, 'run.ckpt.npz')!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"`checkpoint` = {path!r}: its folder {folder!r} does not exist; "
                         "create it first.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"`checkpoint` = {path!r}: its folder {folder!r} is not writable.")
    return path


def _content_digest(arrays: dict[str, Any], meta: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(json.dumps(meta, sort_keys=True, allow_nan=True).encode())
    return h.hexdigest()


def _state_arrays(state: ChainState) -> dict[str, torch.Tensor | None]:
    return {"theta": state.theta, "alive": state.alive, "blowup": state.blowup_step,
            "xi": state.xi, "qv": state.qv}


def save_checkpoint(path: str, *, step: int, state: ChainState, sampler: Sampler,
                    recorder: Recorder, config: dict[str, Any], fingerprint: dict[str, Any],
                    seed: int | None) -> None:
    """Write the run after ``step`` steps to ``path`` (atomically, with its content digest)."""
    rng, pos, drawn = sampler.state()
    arrays = {k: v for k, v in {**_state_arrays(state), **recorder.named(), "rng": rng}.items()
              if v is not None}
    meta = {"config": config, "fingerprint": fingerprint, "step": step,
            "sampler": {"pos": pos, "drawn": drawn}, "seed": seed}
    save_npz(path, arrays, {"kind": KIND, **meta,
                           "checkpoint_digest": _content_digest(arrays, meta)})


@dataclass(frozen=True)
class Saved:
    """A checkpoint file read and checked against its own digest."""

    path: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def load_checkpoint(path: str) -> Saved:
    """Read ``path``; ``ValueError`` naming it when it is not a complete checkpoint or its
    content does not match its digest (edited or damaged after it was written), or when it is
    not a regular file (a FIFO would block the read forever)."""
    check_resume_file(path)
    arrays, meta = load_npz(path, kind=KIND)
    for key in ("config", "fingerprint", "step", "sampler", "checkpoint_digest"):
        if key not in meta:
            raise ValueError(f"{path!r} is not a complete simulate_sgd checkpoint (no {key!r}; "
                             "checkpoints of sa_clip before the fingerprint cannot be resumed).")
    parts = {k: meta.get(k) for k in ("config", "fingerprint", "step", "sampler", "seed")}
    if _content_digest(arrays, parts) != meta["checkpoint_digest"]:
        raise ValueError(f"{path!r}: its content does not match its digest: the file was "
                         "modified or damaged after it was written; it cannot be resumed.")
    return Saved(path, arrays, meta)


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r}, this call {now.get(k)!r}"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


_FORCE = "pass force_resume=True (CLI: --force-resume) to resume anyway"


def _check_fingerprint(path: str, saved: dict[str, Any], now: dict[str, Any],
                       force: bool) -> None:
    """Raise when the problem differs; with ``force`` a difference of code (loss, model,
    version) or a loss that cannot be fingerprinted is a warning instead."""
    saved = {k: v for k, v in saved.items() if k != "opaque"}
    now_all, now = now, {k: v for k, v in now.items() if k != "opaque"}
    written = saved.get("sa_clip")
    if written != now["sa_clip"]:
        by = f"sa_clip {written}" if written else "an older sa_clip (no version recorded)"
        msg = (f"{path!r} was written by {by}, this is sa_clip {now['sa_clip']}: a checkpoint "
               "is resumed only by the version that wrote it (its fingerprint and its numbers "
               "may differ)")
        if not force:
            raise ValueError(f"cannot resume: {msg}; {_FORCE}.")
        warnings.warn(f"force_resume: {msg}; resuming anyway.", UserWarning, stacklevel=4)
    hard = _differences({k: v for k, v in saved.items() if k not in _CODE_KEYS},
                        {k: v for k, v in now.items() if k not in _CODE_KEYS})
    soft = [] if written != now["sa_clip"] else _differences(
        {k: saved.get(k) for k in ("loss", "model")}, {k: now[k] for k in ("loss", "model")})
    if hard:
        raise ValueError(f"cannot resume from {path!r}: the problem differs from the one it "
                         "was written for (" + "; ".join(sorted(hard + soft)) + ").")
    if soft:
        msg = ("the problem differs from the one it was written for (" + "; ".join(soft)
               + "): the loss or the model changed (code, closure values, partial arguments, "
               "attributes or parameters)")
        if not force:
            raise ValueError(f"cannot resume from {path!r}: {msg}; {_FORCE}.")
        warnings.warn(f"force_resume: {path!r}: {msg}; resuming anyway.", UserWarning,
                      stacklevel=4)
    opaque = now_all.get("opaque") or []
    if opaque:
        msg = ("the loss or model cannot be fingerprinted, so resume cannot check that it is "
               "the one the checkpoint was written with: " + "; ".join(opaque))
        if not force:
            raise ValueError(f"cannot resume from {path!r}: {msg}; {_FORCE} if you are sure "
                             "it is unchanged.")
        warnings.warn(f"force_resume: {path!r}: {msg}; resuming anyway.", UserWarning,
                      stacklevel=4)


def _array(saved: Saved, name: str, like: torch.Tensor) -> torch.Tensor:
    a = saved.arrays.get(name)
    want = str(like.dtype).replace("torch.", "")
    if a is None or tuple(a.shape) != tuple(like.shape) or str(a.dtype) != want:
        got = None if a is None else f"{a.dtype} {tuple(a.shape)}"
        raise ValueError(f"{saved.path!r}: array {name!r} is {got}, expected "
                         f"{want} {tuple(like.shape)}.")
    return torch.from_numpy(np.array(a)).to(like.device)


def _check_chains(path: str, state: ChainState, step: int) -> None:
    alive, blow = state.alive, state.blowup_step
    if not bool((alive == (blow == -1)).all()):
        raise ValueError(f"{path!r}: 'alive' and 'blowup' disagree (a chain is alive exactly "
                         "when its blow-up step is -1).")
    dead = blow[~alive]
    if dead.numel() and (int(dead.min()) < 1 or int(dead.max()) > step):
        raise ValueError(f"{path!r}: blow-up steps must lie in [1, {step}] (the step), got "
                         f"[{int(dead.min())}, {int(dead.max())}].")
    if not bool(torch.isfinite(state.theta[alive]).all()):
        raise ValueError(f"{path!r}: 'theta' is not finite for a chain marked alive.")


def _check_records(path: str, recorder: Recorder, state: ChainState, step: int) -> None:
    """Records of steps after ``step`` not written yet; the last one before it written for
    the chains alive now."""
    theta = recorder.arrays["theta"]
    later = [r for r, n in enumerate(recorder.steps) if n > step]
    if later and not bool(torch.isnan(theta[:, later]).all()):
        raise ValueError(f"{path!r}: records of steps after its step {step} are already "
                         "written: the step does not belong to these records.")
    last = max(r for r, n in enumerate(recorder.steps) if n <= step)
    if not bool(torch.isfinite(theta[state.alive, last]).all()):
        raise ValueError(f"{path!r}: the record of step {recorder.steps[last]} is missing for a "
                         f"chain alive at step {step}: the step does not belong to these "
                         "records.")


def restore(saved: Saved, *, config: dict[str, Any], fingerprint: dict[str, Any],
            state: ChainState, sampler: Sampler, recorder: Recorder, force: bool = False
            ) -> tuple[ChainState, int]:
    """The run state of ``saved`` for this call: ``(state, step)``; ``sampler`` and
    ``recorder`` are set in place. ``state`` is the fresh start (shapes and dtypes to match).
    ``force``: see :func:`_check_fingerprint`."""
    path, meta = saved.path, saved.meta
    diff = _differences(meta["config"], config)
    if diff:
        raise ValueError(f"cannot resume from {path!r}: its configuration differs from this "
                         "call's (" + "; ".join(diff) + ").")
    _check_fingerprint(path, meta["fingerprint"], fingerprint, force)
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= config["steps"]:
        raise ValueError(f"{path!r} holds an invalid step {step!r} (expected an integer in "
                         f"[0, {config['steps']}]).")
    got = {k: _array(saved, k, v) for k, v in _state_arrays(state).items() if v is not None}
    new = ChainState(got["theta"], got["alive"], got["blowup"], got.get("xi"), got.get("qv"))
    _check_chains(path, new, step)
    recorder.load({k: _array(saved, k, v) for k, v in recorder.named().items()})
    _check_records(path, recorder, new, step)
    _restore_sampler(saved, sampler, step)
    return new, step


def _restore_sampler(saved: Saved, sampler: Sampler, step: int) -> None:
    path, sm = saved.path, saved.meta["sampler"]
    rng = saved.arrays.get("rng")
    if rng is None or rng.dtype != np.uint8 or rng.ndim != 1:
        raise ValueError(f"{path!r}: the generator state 'rng' is missing or not uint8 1-D.")
    pos, drawn = (sm.get("pos"), sm.get("drawn")) if isinstance(sm, dict) else (None, None)
    if not isinstance(drawn, bool) or isinstance(pos, bool) or not isinstance(pos, int) \
            or not (0 < pos <= step if drawn else pos == 0):
        raise ValueError(f"{path!r}: invalid sampler position {sm!r} at step {step} (expected "
                         "pos = 0 when not drawn, 0 < pos <= step when drawn).")
    try:
        sampler.restore(torch.from_numpy(np.array(rng)), pos, drawn, step)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path!r}: cannot restore the sampler ({exc}).") from exc


__all__ = ["KIND", "problem_fingerprint", "check_resume_file", "tensor_digest",
           "check_checkpoint_path", "save_checkpoint", "load_checkpoint", "restore", "Saved"]
