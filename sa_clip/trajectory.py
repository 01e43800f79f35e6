r"""The result of :func:`sa_clip.simulate_sgd`: many chains recorded at common steps.

The interpolated trajectory ``theta_bar(tau)`` of a chain is piecewise linear through the recorded
points ``(tau_n, theta(n))`` (docs/theory.md#ode-time).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._validate import _is_integer, check_index, check_indices
from .io import check_array, check_blowups, check_increasing, load_npz, save_npz

_OPTIONAL = ("indices", "xi", "quadratic_variation", "noise_norm")


@dataclass
class Trajectory:
    """Recorded clipped-SGD chains.

    Attributes
    ----------
    theta : tensor ``(chains, records, P)``
        Parameters at the recorded steps. A chain that blew up is NaN at every record with
        ``steps[r] >= blowup_step[chain]``.
    tau : float64 tensor ``(records,)``
        ODE times ``tau_n = sum_{k<n} a(k)`` of the recorded steps.
    steps : int64 tensor ``(records,)``
        Step numbers ``n`` of the records (``0`` first, the last step last).
    blowup_step : int64 tensor ``(chains,)``
        ``n`` such that ``theta(n)`` was the first non-finite iterate or the first with
        ``||theta(n)|| > blowup_radius``; ``-1`` where the chain never blew up.
    clip_fraction : tensor ``(chains, records)``
        Fraction of the batch's samples clipped by the step that leaves record ``r`` (the step
        from ``theta(steps[r])`` to ``theta(steps[r] + 1)``); for ``clip_per="batch"`` it is 1
        when the batch-mean gradient was clipped, else 0. NaN at the last record (no step
        leaves it) and after a blow-up.
    indices : int64 tensor ``(chains, steps, batch_size)`` or None
        The sample indices of every batch (``record_indices=True``).
    xi : tensor ``(chains, records, P)`` or None
        ``xi(n) = sum_{k<n} a(k) M(k+1)`` with the martingale noise ``M(k+1) = u - H(theta(k))``
        (``record_noise=True``).
    quadratic_variation : tensor ``(chains, records)`` or None
        ``sum_{k<n} a(k)^2 ||M(k+1)||^2``.
    noise_norm : tensor ``(chains, records)`` or None
        ``||M(n+1)||`` of the step leaving record ``r`` (NaN at the last record).
    meta : dict
        The run's configuration (rule, schedule, problem, steps, chains, batch size, ...).

    Example
    -------
    >>> import torch
    >>> tr = Trajectory(theta=torch.tensor([[[0.0], [2.0]]]), tau=torch.tensor([0.0, 1.0],
    ...                 dtype=torch.float64), steps=torch.tensor([0, 1]),
    ...                 blowup_step=torch.tensor([-1]), clip_fraction=torch.zeros(1, 2))
    >>> tr.interpolate(torch.tensor([0.25]))
    tensor([[[0.5000]]])
    """

    theta: torch.Tensor
    tau: torch.Tensor
    steps: torch.Tensor
    blowup_step: torch.Tensor
    clip_fraction: torch.Tensor
    indices: torch.Tensor | None = None
    xi: torch.Tensor | None = None
    quadratic_variation: torch.Tensor | None = None
    noise_norm: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def chains(self) -> int:
        return self.theta.shape[0]

    def run_key(self) -> str:
        """A digest (32 hex digits) of what identifies this run: its shape, ``meta``, record
        times and steps, blow-up steps and the first and last records of every chain (not
        all of ``theta``: cheap for a large run). Results computed from the run
        (:attr:`sa_clip.TrackingResult.run_id`) carry it, so a figure can refuse a result of
        another run."""
        h = hashlib.sha256(repr(tuple(self.theta.shape)).encode())
        h.update(json.dumps(self.meta, sort_keys=True, default=str).encode())
        for t in (self.tau, self.steps, self.blowup_step, self.theta[:, 0],
                  self.theta[:, -1]):
            a = t.detach().cpu().contiguous()
            h.update(str(a.dtype).encode())
            h.update(a.numpy().tobytes())
        return h.hexdigest()[:32]

    @property
    def records(self) -> int:
        return self.theta.shape[1]

    @property
    def blown_up(self) -> torch.Tensor:
        """Boolean ``(chains,)``: which chains blew up."""
        return self.blowup_step >= 0

    @property
    def blowup_tau(self) -> torch.Tensor:
        """ODE time of the first record at or after each chain's blow-up (``inf`` where none),
        float64 ``(chains,)``: the chain is NaN from there on."""
        r = torch.searchsorted(self.steps, self.blowup_step).clamp(max=self.records - 1)
        return torch.where(self.blown_up, self.tau[r], torch.full_like(self.tau[r], float("inf")))

    def interpolate(self, tau: Any, chains: Any = None) -> torch.Tensor:
        """``theta_bar(tau)`` for every chain: shape ``(chains, len(tau), P)``.

        Piecewise linear in ``tau`` through the records. ``tau`` must lie in
        ``[0, self.tau[-1]]``; NaN records (blow-ups) give NaN on the segments that touch them.
        ``chains``: an index, list or slice of chains to interpolate (default all); only those
        rows are read, so one chain of a large run costs one chain's memory.
        """
        t = torch.as_tensor(tau, dtype=torch.float64).reshape(-1).to(self.tau.device)
        if not bool(torch.isfinite(t).all()):
            raise ValueError("`tau` must be finite.")
        lo, hi = float(self.tau[0]), float(self.tau[-1])
        if t.numel() and (float(t.min()) < lo or float(t.max()) > hi):
            raise ValueError(f"`tau` must lie within the recorded ODE times [{lo}, {hi}], got "
                             f"values in [{float(t.min())}, {float(t.max())}].")
        if chains is not None and not isinstance(chains, slice):   # ints, numpy ints only
            chains = (check_index("chains", chains, self.chains, negative=True)
                      if _is_integer(chains)
                      else check_indices("chains", chains, self.chains, distinct=False))
        theta = self.theta if chains is None else self.theta[chains]
        if theta.dim() == 2:                              # one chain given as an int
            theta = theta.unsqueeze(0)
        if self.records == 1:
            return theta[:, :1].expand(-1, t.numel(), -1).clone()
        j = torch.searchsorted(self.tau, t, right=True).clamp(1, self.records - 1)
        t0, t1 = self.tau[j - 1], self.tau[j]
        w = ((t - t0) / (t1 - t0)).to(theta.dtype)
        a, b = theta[:, j - 1], theta[:, j]
        # exactly the record at a record time (keeps NaN of the next segment out)
        out = a + w[None, :, None] * (b - a)
        out = torch.where((w == 1)[None, :, None], b, out)
        return torch.where((w == 0)[None, :, None], a, out)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (``.npz`` with JSON metadata, atomic, no pickle)."""
        arrays = {"theta": self.theta, "tau": self.tau, "steps": self.steps,
                  "blowup_step": self.blowup_step, "clip_fraction": self.clip_fraction}
        arrays.update({k: getattr(self, k) for k in _OPTIONAL})
        save_npz(path, arrays, {"kind": "Trajectory", "config": self.meta,
                                "seed": self.meta.get("seed")})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trajectory:
        """Read a file written by :meth:`save`.

        Beyond the content digest :func:`sa_clip.io.load_npz` checks, the arrays must be of the
        right dtype and shape and keep the invariants :func:`~sa_clip.simulate_sgd`
        guarantees: ``tau`` finite and strictly increasing, ``steps`` non-negative and strictly
        increasing, each ``blowup_step`` ``-1`` or a step in ``[1, steps[-1]]`` with ``theta``
        finite at the records before it and NaN from it on, ``clip_fraction`` in ``[0, 1]``
        or NaN, ``indices`` non-negative (and ``< N`` when the config records ``N``). Anything
        else is a ``ValueError`` naming the file and the problem.
        """
        arrays, meta = load_npz(path, kind="Trajectory")
        where = os.fspath(path)
        theta = check_array(path, arrays, "theta", shape=(None, None, None))
        c, r, p = theta.shape
        if r < 1:
            raise ValueError(f"{where!r}: array 'theta' has no records.")
        got = {"theta": theta,
               "tau": check_array(path, arrays, "tau", shape=(r,)),
               "steps": check_array(path, arrays, "steps", kinds="iu", shape=(r,)),
               "blowup_step": check_array(path, arrays, "blowup_step", kinds="iu", shape=(c,)),
               "clip_fraction": check_array(path, arrays, "clip_fraction", shape=(c, r)),
               "indices": check_array(path, arrays, "indices", kinds="iu",
                                      shape=(c, None, None), optional=True),
               "xi": check_array(path, arrays, "xi", shape=(c, r, p), optional=True),
               "quadratic_variation": check_array(path, arrays, "quadratic_variation",
                                                  shape=(c, r), optional=True),
               "noise_norm": check_array(path, arrays, "noise_norm", shape=(c, r),
                                         optional=True)}
        config = meta.get("config", meta.get("meta", {}))
        if not isinstance(config, dict):
            raise ValueError(f"{where!r}: its 'config' is not a JSON object.")
        _check_invariants(where, got, config)
        t = {k: None if v is None else torch.from_numpy(np.array(v)) for k, v in got.items()}
        return cls(**t, meta=config)

    def __repr__(self) -> str:
        return (f"Trajectory(chains={self.chains}, records={self.records}, P={self.theta.shape[-1]}"
                f", tau=[0, {float(self.tau[-1]):.4g}], blown_up={int(self.blown_up.sum())})")


def _check_invariants(where: str, a: dict[str, Any], config: dict[str, Any]) -> None:
    """The invariants of a recorded run (see :meth:`Trajectory.load`)."""
    check_increasing(where, "tau", a["tau"])
    steps = check_increasing(where, "steps", a["steps"], minimum=0)
    blow = check_blowups(where, a["blowup_step"], int(steps[-1]))
    theta = a["theta"]
    after = (blow[:, None] >= 0) & (steps[None, :] >= blow[:, None])       # (C, R)
    finite = np.isfinite(theta).all(-1)
    nan = np.isnan(theta).all(-1)
    wrong = np.argwhere(np.where(after, ~nan, ~finite))
    if wrong.size:
        ch, rec = (int(v) for v in wrong[0])
        state = (f"blew up at step {blow[ch]}" if blow[ch] >= 0 else "never blew up")
        want = "NaN" if after[ch, rec] else "finite"
        raise ValueError(f"{where!r}: chain {ch} {state}, so 'theta' at record {rec} (step "
                         f"{steps[rec]}) must be {want}; the file is inconsistent.")
    cf = a["clip_fraction"]
    bad = np.argwhere(~np.isnan(cf) & ((cf < 0) | (cf > 1)))
    if bad.size:
        ch, rec = (int(v) for v in bad[0])
        raise ValueError(f"{where!r}: 'clip_fraction' must lie in [0, 1] (or be NaN), found "
                         f"{cf[ch, rec]} for chain {ch} at record {rec}.")
    idx = a["indices"]
    if idx is not None and idx.size:
        n = config.get("N")
        hi = n - 1 if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None
        if idx.min() < 0 or (hi is not None and idx.max() > hi):
            raise ValueError(f"{where!r}: 'indices' must lie in [0, "
                             f"{'N - 1' if hi is None else hi}], found values in "
                             f"[{idx.min()}, {idx.max()}].")


__all__ = ["Trajectory"]
