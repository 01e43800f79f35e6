"""Sharding the mean field over processes with ``torch.distributed``.

``H(theta) = (1/N) sum_i u_i(theta)`` is a sum over samples, so ``W`` processes can each sum a
contiguous shard of the samples and add their partial sums with one ``all_reduce``; every
process then holds the full ``H`` (see ``MeanField(..., distributed=True)``). This module holds
the few helpers that needs: starting the process group under ``torchrun``, this process's
rank, the shard of the samples it owns, and the collectives.

Launch a script that calls :func:`init_from_env` with ``torchrun --nproc_per_node K
script.py``; run without ``torchrun`` the same script is a single process and nothing changes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from ._validate import check_choice

BACKENDS = ("gloo", "nccl")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when the environment variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) are all present."""
    return all(k in os.environ for k in _ENV)


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group when launched by ``torchrun``; otherwise a no-op.

    Main arguments
    --------------
    backend : ``"gloo"`` | ``"nccl"``, optional
        Default: ``"nccl"`` when CUDA is available, else ``"gloo"``. With CUDA present the
        process is first pinned to GPU ``LOCAL_RANK`` (``torch.cuda.set_device``), so that
        ``device="auto"`` (``torch.device("cuda")``) means this process's own GPU.

    Returns
    -------
    bool
        Whether a process group is initialised after the call (already-initialised groups are
        left as they are and count).

    Example
    -------
    >>> import sa_clip as sc
    >>> sc.distributed.init_from_env()     # plain ``python``: nothing to do
    False
    """
    if backend is not None:
        check_choice("backend", backend, BACKENDS)
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def is_active(group: Any = None) -> bool:
    """True inside an initialised process group (``torch.distributed`` available and set up)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``; ``(0, 1)`` outside any group."""
    if not is_active():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_main_process(group: Any = None) -> bool:
    """True on rank 0 of ``group``, and in a plain single process: the one that prints and
    saves.

    Example
    -------
    >>> import sa_clip as sc
    >>> sc.distributed.is_main_process()
    True
    """
    return rank_and_world(group)[0] == 0


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous samples ``[n*rank//world, n*(rank+1)//world)`` owned by ``rank``.

    The shards cover ``range(n)`` in order, without overlap; their sizes differ by at most
    one (uneven splits are fine, a shard may be empty when ``n < world``).

    Example
    -------
    >>> [shard(5, r, 2) for r in range(2)]
    [slice(0, 2, None), slice(2, 5, None)]
    """
    return slice(n * rank // world, n * (rank + 1) // world)


def all_reduce_sum(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum of ``t`` over the processes of ``group`` (a new tensor; ``t`` is not changed).

    Every process gets the same bits: gloo and NCCL all-reduce send the finished sum to all
    ranks, which is what keeps adaptive ODE solvers on all ranks taking the same steps.
    """
    out = t.detach().clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_gather_rows(t: torch.Tensor, n: int, dim: int = 0, group: Any = None) -> torch.Tensor:
    """Concatenate along ``dim`` the shards of a length-``n`` axis held by the processes.

    Process ``r`` passes ``t`` whose size along ``dim`` is that of ``shard(n, r, W)``; every
    process gets the full tensor, of size ``n`` along ``dim``, in sample order. Shards are
    padded to a common size for the collective and trimmed afterwards.
    """
    rank, world = rank_and_world(group)
    sizes = [shard(n, r, world).stop - shard(n, r, world).start for r in range(world)]
    if t.shape[dim] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {t.shape[dim]} rows along dim {dim}, its shard of "
                         f"n = {n} has {sizes[rank]}.")
    width = max(sizes)
    pad_shape = list(t.shape)
    pad_shape[dim] = width - sizes[rank]
    padded = torch.cat([t, t.new_zeros(pad_shape)], dim).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim)
