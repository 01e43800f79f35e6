"""The records of a run of :func:`sa_clip.simulate_sgd`, and the :class:`Trajectory` they make.

Steps ``0, record_every, 2 record_every, ...`` and the last step are recorded, and, when
``record_every >= EARLY_FROM`` (5), before the first ``record_every`` the log-spaced steps
``floor(2^(j/2)) = 1, 2, 4, 5, 8, 11, 16, ...``: the early steps move most, so a curve drawn
through the records starts with the run's first steps, not with a straight segment from step
0 to step ``record_every``. Record ``r``
holds ``theta(steps[r])`` (NaN once the chain is dead), the clipping fraction of the step that
leaves it, and, with noise, ``xi``, its quadratic variation and ``||M||`` of that step.

Example
-------
>>> rec = Recorder(steps=10, record_every=4, chains=2, P=3, dtype=torch.float64,
...                device=torch.device("cpu"))
>>> rec.steps, rec.slot(4), rec.slot(5)
([0, 4, 8, 10], 1, -1)
>>> record_steps(40, 10)
[0, 1, 2, 4, 5, 8, 10, 20, 30, 40]
"""

from __future__ import annotations

import torch

from ..trajectory import Trajectory
from .state import ChainState, StepInfo

#: Checkpoint array names of the records (kept from format version 1).
_NAMES = {"theta": "theta_rec", "clip_fraction": "clip_rec", "indices": "idx_rec",
          "xi": "xi_rec", "quadratic_variation": "qv_rec", "noise_norm": "nn_rec"}


#: the smallest ``record_every`` that gets log-spaced early records
EARLY_FROM = 5


def early_steps(steps: int, record_every: int) -> list[int]:
    """The log-spaced steps ``floor(2^(j/2))`` below ``record_every`` (and ``<= steps``);
    none when ``record_every < EARLY_FROM`` (the first segment is short already)."""
    out: set[int] = set()
    if record_every < EARLY_FROM:
        return []
    j = 0
    while (n := int(2 ** (j / 2))) < min(record_every, steps + 1):
        out.add(n)
        j += 1
    return sorted(out)


def record_steps(steps: int, record_every: int) -> list[int]:
    """The recorded step numbers: every ``record_every``-th, the last, and the log-spaced
    early steps of :func:`early_steps`."""
    return sorted(set(range(0, steps + 1, record_every)) | {steps}
                  | set(early_steps(steps, record_every)))


def record_count(steps: int, record_every: int) -> int:
    """``len(record_steps(steps, record_every))`` in O(log record_every)."""
    return (len(range(0, steps + 1, record_every)) + (steps % record_every != 0)
            + len([n for n in early_steps(steps, record_every) if n != steps]))


class Recorder:
    """Preallocated records of ``chains`` chains (NaN until written)."""

    def __init__(self, *, steps: int, record_every: int, chains: int, P: int,
                 dtype: torch.dtype, device: torch.device, batch_size: int = 1,
                 record_indices: bool = False, record_noise: bool = False) -> None:
        self.steps = record_steps(steps, record_every)
        slot = [-1] * (steps + 1)
        for r, n in enumerate(self.steps):
            slot[n] = r
        self._slot = slot
        nan, R = float("nan"), len(self.steps)
        full = dict(dtype=dtype, device=device)
        self.arrays: dict[str, torch.Tensor] = {
            "theta": torch.full((chains, R, P), nan, **full),
            "clip_fraction": torch.full((chains, R), nan, **full)}
        if record_indices:
            self.arrays["indices"] = torch.zeros((chains, steps, batch_size), dtype=torch.long)
        if record_noise:
            self.arrays["xi"] = torch.full((chains, R, P), nan, **full)
            self.arrays["quadratic_variation"] = torch.full((chains, R), nan, **full)
            self.arrays["noise_norm"] = torch.full((chains, R), nan, **full)

    def slot(self, n: int) -> int:
        """Record index of step ``n``, ``-1`` when step ``n`` is not recorded."""
        return self._slot[n]

    def start(self, state: ChainState) -> None:
        """Record step 0."""
        self.arrays["theta"][:, 0] = state.theta
        if "xi" in self.arrays:
            self.arrays["xi"][:, 0] = 0.0
            self.arrays["quadratic_variation"][:, 0] = 0.0

    def batch(self, n: int, idx: torch.Tensor) -> None:
        """Keep the batch of step ``n`` (with ``record_indices``)."""
        if "indices" in self.arrays:
            self.arrays["indices"][:, n] = idx.cpu()

    def step(self, n: int, state: ChainState, info: StepInfo) -> None:
        """Record what step ``n`` (from ``theta(n)`` to ``state.theta = theta(n+1)``) gave."""
        r, r1 = self._slot[n], self._slot[n + 1]
        if r >= 0:
            if info.clip_fraction is not None:
                self.arrays["clip_fraction"][:, r] = info.clip_fraction
            if info.noise_norm is not None:
                self.arrays["noise_norm"][:, r] = info.noise_norm
        if r1 >= 0:
            live = state.alive
            self.arrays["theta"][:, r1] = torch.where(live[:, None], state.theta, float("nan"))
            if state.xi is not None and state.qv is not None:
                self.arrays["xi"][:, r1] = torch.where(live[:, None], state.xi, float("nan"))
                self.arrays["quadratic_variation"][:, r1] = torch.where(live, state.qv,
                                                                        float("nan"))

    # ------------------------------------------------------------------ checkpoints
    def named(self) -> dict[str, torch.Tensor]:
        """The records under their checkpoint names (``theta_rec``, ``clip_rec``, ...)."""
        return {_NAMES[k]: v for k, v in self.arrays.items()}

    def load(self, arrays: dict[str, torch.Tensor]) -> None:
        """Take the records back from :meth:`named` (shapes and dtypes already checked)."""
        for k in self.arrays:
            self.arrays[k] = arrays[_NAMES[k]]

    def trajectory(self, state: ChainState, tau: torch.Tensor, meta: dict) -> Trajectory:
        """The :class:`~sa_clip.Trajectory` of the run (``tau``: the ODE times of all steps)."""
        dev = state.theta.device
        a = self.arrays
        return Trajectory(theta=a["theta"], tau=tau[self.steps].to(dev),
                          steps=torch.tensor(self.steps, dtype=torch.int64, device=dev),
                          blowup_step=state.blowup_step, clip_fraction=a["clip_fraction"],
                          indices=a.get("indices"), xi=a.get("xi"),
                          quadratic_variation=a.get("quadratic_variation"),
                          noise_norm=a.get("noise_norm"), meta=meta)


__all__ = ["Recorder", "record_steps", "record_count", "early_steps"]
