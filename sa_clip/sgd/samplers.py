"""Where the batches of :func:`sa_clip.simulate_sgd` come from: seeds and samplers.

A sampler yields one ``(chains, batch_size)`` tensor of sample indices per step. Indices are
drawn on the CPU from a ``torch.Generator`` in buffers of many steps; the generator state before
the current buffer and the position in it (:meth:`Sampler.state`) are enough to redraw the
buffer exactly, so a resumed run draws the same batches as an uninterrupted one.

Example
-------
>>> gen, seed = make_generator(3)
>>> s = IidSampler(gen, n=10, chains=2, batch_size=4, steps=5)
>>> next(s).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import secrets
from typing import Any

import torch

from .._validate import as_tensor, check_nonneg_int

SAMPLING = ("iid", "epoch")

#: Largest seed accepted: seeds are stored as signed 64-bit integers (JSON, numpy, torch).
MAX_SEED = 2 ** 63 - 1


def make_generator(seed: Any) -> tuple[torch.Generator, int | None]:
    """A CPU ``torch.Generator`` for ``seed`` and the integer seed it was made from.

    ``seed`` is an integer in ``[0, 2**63 - 1]``, ``None`` (a fresh random 62-bit seed, returned
    so that the run can be repeated) or a ``torch.Generator`` (used as is; the seed returned is
    ``None``). An integer ``s`` gives ``torch.Generator().manual_seed(s)``.

    >>> gen, s = make_generator(None)
    >>> isinstance(s, int) and 0 <= s < 2 ** 62
    True
    >>> make_generator(2 ** 63)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `seed` must be an integer in [0, 2**63 - 1] = [0, 92...807], got 92...808.
    """
    if isinstance(seed, torch.Generator):
        return seed, None
    if seed is None:
        seed = secrets.randbits(62)
    seed = check_nonneg_int("seed", seed)
    if seed > MAX_SEED:
        raise ValueError(f"`seed` must be an integer in [0, 2**63 - 1] = [0, {MAX_SEED}], "
                         f"got {seed}.")
    return torch.Generator().manual_seed(seed), seed


def check_indices(indices: Any, steps: int, chains: int, batch_size: int, n: int,
                  device: torch.device) -> torch.Tensor:
    """Replayed batches as ``(chains, steps, batch_size)`` int64 on ``device``; a
    ``(steps, batch_size)`` array is shared by all chains."""
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


class Sampler:
    """Batch indices drawn in buffers from ``gen`` (subclasses define :meth:`_draw`)."""

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
        """Back to the state :meth:`state` returned at step ``step``. Raises ``ValueError``
        when ``pos`` cannot be a position in the buffer that state redraws."""
        self.gen.set_state(rng)
        self.buf, self.pos, self.done = None, 0, step - (pos if drawn else 0)
        if drawn:
            self.before = self.gen.get_state()
            self.buf = self._draw()
            if not 0 < pos < len(self.buf):
                raise ValueError(f"sampler position {pos} is outside its buffer of "
                                 f"{len(self.buf)} steps (expected 0 < pos < {len(self.buf)})")
            self.pos = pos


class IidSampler(Sampler):
    """Uniform with replacement, drawn in blocks of steps (block size fixed by the sizes)."""

    def __init__(self, gen: torch.Generator, n: int, chains: int, batch_size: int,
                 steps: int) -> None:
        super().__init__(gen)
        self.n, self.shape, self.steps = n, (chains, batch_size), steps
        self.block = max(1, min(steps, 2 ** 20 // max(1, chains * batch_size)))

    def _draw(self) -> torch.Tensor:
        k = min(self.block, self.steps - self.done)
        if k <= 0:
            raise ValueError(f"no steps left to draw ({self.done} of {self.steps} drawn)")
        return torch.randint(self.n, (k, *self.shape), generator=self.gen)


class EpochSampler(Sampler):
    """Without replacement: each chain walks through its own random permutation of the data in
    batches of ``batch_size``; the last ``n mod batch_size`` samples of every epoch are dropped
    (``drop_last``), so a batch never holds a sample twice."""

    def __init__(self, gen: torch.Generator, n: int, chains: int, batch_size: int) -> None:
        super().__init__(gen)
        self.n, self.chains, self.b = n, chains, batch_size

    def _draw(self) -> torch.Tensor:
        nb = self.n // self.b
        perm = torch.argsort(torch.rand(self.chains, self.n, generator=self.gen), dim=1)
        return perm[:, :nb * self.b].reshape(self.chains, nb, self.b).transpose(0, 1)


class ReplaySampler(Sampler):
    """Replays fixed batches ``replay`` of shape ``(chains, steps, batch_size)``."""

    def __init__(self, gen: torch.Generator, replay: torch.Tensor) -> None:
        super().__init__(gen)
        self.replay = replay

    def _draw(self) -> torch.Tensor:
        return self.replay.transpose(0, 1)


def make_sampler(gen: torch.Generator, *, sampling: str, n: int, chains: int, batch_size: int,
                 steps: int, replay: torch.Tensor | None = None) -> Sampler:
    """The sampler of a run: replayed batches when ``replay`` is given, else ``sampling``."""
    if replay is not None:
        return ReplaySampler(gen, replay)
    if sampling == "iid":
        return IidSampler(gen, n, chains, batch_size, steps)
    if batch_size > n:
        raise ValueError(f"`batch_size` = {batch_size} exceeds N = {n}: sampling='epoch'"
                         " draws batches of distinct samples.")
    return EpochSampler(gen, n, chains, batch_size)


__all__ = ["SAMPLING", "MAX_SEED", "make_generator", "check_indices", "Sampler", "IidSampler",
           "EpochSampler", "ReplaySampler", "make_sampler"]
