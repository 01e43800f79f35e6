"""A supervised-learning problem as a function of one flat parameter vector.

``Problem(model, X, y, loss)`` freezes a ``torch.nn.Module`` and a data set ``D = {(x_i, y_i)}``
into functions of ``theta``, the flat vector of all weights in
``torch.nn.utils.parameters_to_vector(model.parameters())`` order (docs/theory.md#problem).
Everything above this module (mean field, ODE, SGD chains) sees only ``theta``.

Per-sample losses ``l_i(theta)``:

* ``"mse"``: ``sum_k (f(theta, x_i)_k - y_ik)^2`` (the paper's (4); no factor 1/2);
* ``"cross_entropy"``: ``-log softmax(f(theta, x_i))_{y_i}`` (the paper's (5)), integer labels;
* a callable ``loss(output_i, y_i) -> scalar`` for one sample (batch dimension removed).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ._validate import as_tensor, check_choice, check_finite

LOSSES = ("mse", "cross_entropy")
GRANULARITIES = ("global", "layer", "unit")
_NOT_A1 = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
           nn.PReLU, nn.RReLU)


@dataclass(frozen=True)
class Block:
    """One parameter tensor of the model, as a slice of the flat vector ``theta``.

    ``theta[start:stop].view(shape)`` is the tensor named ``name``.
    """

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def units(self) -> int:
        """Output units (rows, dim 0) for tensors with 2+ dims; 0-d and 1-d tensors are one unit."""
        return self.shape[0] if len(self.shape) >= 2 else 1


class Layout:
    """The blocks of ``theta`` and the groups the clipping rules take norms over.

    Granularity ``"global"`` is one group; ``"layer"`` one group per parameter tensor;
    ``"unit"`` one group per output unit (dim-0 slice) of tensors with two or more dims, 0-d and
    1-d tensors as a whole (timm's ``unitwise_norm``). Every group is a contiguous range of
    ``theta`` since tensors are flattened row-major.
    """

    def __init__(self, blocks: tuple[Block, ...]):
        self.blocks = blocks
        self.size = blocks[-1].stop if blocks else 0
        self._cache: dict[tuple[str, torch.device], tuple[torch.Tensor, int]] = {}

    def __repr__(self) -> str:
        return f"Layout(size={self.size}, blocks={[b.name for b in self.blocks]})"

    def group_sizes(self, granularity: str) -> list[int]:
        """Sizes of the contiguous groups, in order."""
        check_choice("granularity", granularity, GRANULARITIES)
        if granularity == "global":
            return [self.size]
        if granularity == "layer":
            return [b.numel for b in self.blocks]
        sizes = []
        for b in self.blocks:
            sizes += [b.numel // b.units] * b.units
        return sizes

    def groups(self, granularity: str, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, int]:
        """``(index, n_groups)``: ``index[p]`` is the group of coordinate ``p`` (shape ``(P,)``)."""
        key = (granularity, torch.device(device))
        if key not in self._cache:
            sizes = self.group_sizes(granularity)
            index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            self._cache[key] = (index.to(device), len(sizes))
        return self._cache[key]

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat ``theta`` of shape ``(P,)`` as the model's named tensors."""
        return {b.name: theta[b.start:b.stop].view(b.shape) for b in self.blocks}


def group_norms(x: torch.Tensor, layout: Layout, granularity: str) -> torch.Tensor:
    """Euclidean norms of ``x`` (shape ``(..., P)``) over the groups of ``granularity``.

    Returns shape ``(..., G)``. Differentiable everywhere, a zero norm included (its
    derivative is taken as 0 instead of sqrt's infinite slope).
    """
    check_choice("granularity", granularity, GRANULARITIES)
    if granularity == "global":
        sq = torch.linalg.vecdot(x, x).unsqueeze(-1)      # no (..., P) temporary
    else:
        # groups are contiguous: per-block sums over reshaped views (a loop over parameter
        # tensors, not samples) are several times faster than a scatter-add over P
        lead = x.shape[:-1]
        parts = []
        for b in layout.blocks:
            blk = x[..., b.start:b.stop]
            k = b.units if granularity == "unit" else 1
            blk = blk.reshape(*lead, k, b.numel // k)
            parts.append(torch.linalg.vecdot(blk, blk))
        sq = torch.cat(parts, -1)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def _check_model_and_loss(model: Any, loss: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(loss, str):
        check_choice("loss", loss, LOSSES)
    elif not callable(loss):
        raise TypeError(f"`loss` must be one of {list(LOSSES)} or a callable "
                        f"loss(output_i, y_i) -> scalar, got {type(loss).__name__}.")
    if not list(model.parameters()):
        raise ValueError("`model` has no parameters: there is nothing to train.")


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices ``[s, s+size)`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def resolve_device(device: Any) -> torch.device | None:
    """``"auto"`` -> CUDA when available else CPU; None stays None; otherwise ``torch.device``."""
    if device is None:
        return None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
                         ) from exc


class Problem:
    """A model, a data set and a per-sample loss, as functions of a flat ``theta``.

    Main arguments
    --------------
    model : torch.nn.Module
        The network ``f(theta, x)``. It is copied (the caller's module is never changed) and
        put in ``eval()`` mode: per-sample gradients need samples that do not interact.
    X : tensor or array, shape ``(N, ...)``
        Inputs. Floating inputs are cast to the problem's dtype.
    y : tensor or array, length ``N``
        Targets: real values for ``"mse"``, integer class labels for ``"cross_entropy"``.
    loss : ``"mse"`` | ``"cross_entropy"`` | callable
        Per-sample loss (see the module docstring). A callable takes one sample's output
        (batch dimension removed) and target and returns a scalar tensor.

    Other arguments
    ---------------
    dtype : torch.dtype, optional
        Default: the promotion of the model's and the inputs' floating dtypes, so float64
        anywhere gives float64 everywhere. The dtype never depends on the device: use
        float64 for reference accuracy (the tests compare with brute force at 1e-10..1e-12;
        near-equilibrium and Jacobian work needs it), float32 for speed and memory (half the
        bytes; on GPUs float64 throughput is 1/2 (data-centre parts) to 1/64 (consumer parts)
        of float32), at a relative round-off of about 1e-7 in ``H``. ``device="auto"`` does
        not change it.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, optional
        Default: the model's device. ``"auto"`` is CUDA when ``torch.cuda.is_available()``,
        else CPU; under ``torchrun`` with :func:`sa_clip.distributed.init_from_env` that is
        this process's own GPU (``LOCAL_RANK``).
    name : str, optional
        A label used in results and plots.

    Attributes
    ----------
    theta0 : (P,) the model's weights, flat. ``blocks``: one :class:`Block` per tensor.
    N, P : numbers of samples and parameters.

    Raises
    ------
    TypeError, ValueError
        For a model that is not a Module, X/y length mismatch, NaN/inf in the data, an
        unknown loss, float or out-of-range labels for cross-entropy, or an output shape
        that does not fit the targets.

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> X = torch.randn(20, 3, dtype=torch.float64); y = X.sum(1)
    >>> p = sc.Problem(torch.nn.Linear(3, 1), X, y, loss="mse")
    >>> p.P, p.theta0.dtype
    (4, torch.float64)
    """

    def __init__(self, model: nn.Module, X: Any, y: Any,
                 loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse", *,
                 dtype: torch.dtype | None = None, device: Any = None, name: str | None = None):
        _check_model_and_loss(model, loss)
        X = as_tensor("X", X)
        y = as_tensor("y", y)
        if X.dim() == 0:
            raise ValueError(f"`X` must have shape (N, ...), got a 0-d tensor {X!r}.")
        n = X.shape[0]
        if n == 0:
            raise ValueError("`X` is empty (N = 0): the mean field needs at least one sample.")
        if y.dim() == 0 or y.shape[0] != n:
            raise ValueError(f"`y` must have length N = {n} (the length of `X`), got shape "
                             f"{tuple(y.shape)}.")
        self._setup_model(model, loss, X.dtype, dtype, device, name)
        dtype, dev = self.dtype, self.device
        check_finite("X", X)
        self.X = X.to(device=dev, dtype=dtype if X.is_floating_point() else X.dtype)
        if loss == "cross_entropy":
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(f"`y` must hold integer class labels for loss='cross_entropy', "
                                f"got dtype {y.dtype}; convert with y.long().")
            self.y = y.to(device=dev, dtype=torch.long)
        else:
            if y.is_floating_point():
                check_finite("y", y)
                y = y.to(dtype)
            self.y = y.to(dev)
        self.N = n
        self._finish_setup()

    # ------------------------------------------------------------------ set-up
    def _setup_model(self, model: nn.Module, loss: Any, x_dtype: torch.dtype,
                     dtype: torch.dtype | None, device: Any, name: str | None) -> None:
        """Choose dtype and device, copy the model, record the loss (no data involved)."""
        first = next(model.parameters())
        if dtype is None:
            dtype = first.dtype if first.is_floating_point() else torch.float32
            if x_dtype.is_floating_point:
                dtype = torch.promote_types(dtype, x_dtype)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating dtype, got {dtype}.")
        dev = resolve_device(device) or first.device
        self.model = copy.deepcopy(model).to(device=dev, dtype=dtype).eval()
        self.dtype, self.device, self.name = dtype, dev, name or type(model).__name__
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        self._loss = loss

    def _finish_setup(self) -> None:
        """Layout, ``theta0``, ``P`` and the output checks, once the data are in place."""
        named = list(self.model.named_parameters())
        blocks, start = [], 0
        for pname, p in named:
            blocks.append(Block(pname, tuple(p.shape), start, start + p.numel()))
            start += p.numel()
        self.layout = Layout(tuple(blocks))
        self.blocks = self.layout.blocks
        self.buffers = dict(self.model.named_buffers())
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.P = self.layout.size
        self._check_output()
        if any(isinstance(m, _NOT_A1) for m in self.model.modules()):
            warnings.warn("the model uses a piecewise-linear activation (e.g. ReLU), which "
                          "violates assumption (A1) (twice continuously differentiable): "
                          "allowed, but the ODE limit is not covered by the theorem.",
                          UserWarning, stacklevel=3)

    def _label_range(self) -> tuple[int, int]:
        """Smallest and largest class label (cross-entropy only)."""
        return int(self.y.min()), int(self.y.max())

    # ------------------------------------------------------------------ set-up checks
    def _check_output(self) -> None:
        x1, y1 = self.data(slice(0, 1))
        out = self.outputs(self.theta0, x1)
        if out.shape[:1] != (1,):
            raise ValueError(f"`model` must keep the batch dimension: input of shape "
                             f"{tuple(x1.shape)} gave output {tuple(out.shape)}.")
        self.output_shape = tuple(out.shape[1:])
        if self._loss == "mse":
            if out[0].numel() != y1[0].numel():
                raise ValueError(f"loss='mse' needs one target per output: the model gives "
                                 f"{tuple(out.shape[1:])} per sample, `y` has "
                                 f"{tuple(y1.shape[1:])}.")
        elif self._loss == "cross_entropy":
            if out.dim() != 2:
                raise ValueError(f"loss='cross_entropy' needs logits of shape (N, C); the model "
                                 f"gives {tuple(out.shape)} per batch.")
            c = out.shape[1]
            lo, hi = self._label_range()
            if lo < 0 or hi >= c:
                raise ValueError(f"`y` labels must lie in [0, {c - 1}] for a model with {c} "
                                 f"logits, got labels in [{lo}, {hi}].")
        else:
            val = self._loss(out[0], y1[0])
            if not isinstance(val, torch.Tensor) or val.numel() != 1:
                raise TypeError("a callable `loss` must return a scalar tensor for one sample, "
                                f"got {type(val).__name__} {getattr(val, 'shape', '')}.")

    # ------------------------------------------------------------------ theta handling
    def check_theta(self, theta: Any, name: str = "theta") -> tuple[torch.Tensor, bool]:
        """Return ``(theta as (K, P) tensor of the problem's dtype, was_batched)``."""
        t = as_tensor(name, theta, dtype=self.dtype, device=self.device)
        if t.dim() not in (1, 2) or t.shape[-1] != self.P:
            raise ValueError(f"`{name}` must have shape (P,) or (K, P) with P = {self.P}, got "
                             f"{tuple(t.shape)}.")
        return (t, True) if t.dim() == 2 else (t.unsqueeze(0), False)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's named tensors as views of a flat ``theta`` (shape ``(P,)``)."""
        return self.layout.unflatten(theta)

    # ------------------------------------------------------------------ data access
    def data(self, s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``s`` (a contiguous slice) as ``(x, y)`` tensors on the problem's device.

        Every full-data computation reads the data through this method, chunk by chunk, so a
        problem whose data live elsewhere (memory-mapped files, shards) overrides only this and
        :meth:`take`.
        """
        return self.X[s], self.y[s]

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at an integer ``index`` tensor of any shape: ``x`` of shape
        ``index.shape + X.shape[1:]`` and ``y`` likewise (minibatches of SGD chains)."""
        return self.X[index], self.y[index]

    # ------------------------------------------------------------------ per-sample maths
    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model outputs ``f(theta, x)`` for a batch ``x`` and one ``theta`` of shape (P,)."""
        return functional_call(self.model, {**self.unflatten(theta), **self.buffers}, (x,))

    def batch_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses (shape ``(B,)``) from a batch of outputs and targets."""
        if self._loss == "mse":
            b = out.shape[0]
            return ((out.reshape(b, -1) - y.reshape(b, -1).to(out.dtype)) ** 2).sum(1)
        if self._loss == "cross_entropy":
            return -torch.log_softmax(out, -1).gather(1, y.reshape(-1, 1)).squeeze(1)
        return vmap(lambda o, t: self._loss(o, t).reshape(()))(out, y)

    def sample_losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                      ) -> torch.Tensor:
        """``l_i(theta)`` for a batch: shape ``(B,)``; ``theta`` of shape (P,)."""
        return self.batch_losses(self.outputs(theta, x), y)

    def _loss_one(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
                  ) -> torch.Tensor:
        out = functional_call(self.model, {**params, **self.buffers}, (x.unsqueeze(0),))
        return self.batch_losses(out, y.unsqueeze(0))[0]

    def per_sample_grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                         ) -> torch.Tensor:
        """Per-sample gradients ``g_i = grad l_i(theta)``, shape ``(B, P)`` (``vmap(grad)``).

        Differentiated with respect to the named tensors (views of ``theta``) and concatenated
        once: differentiating through the slices of a flat ``theta`` instead would scatter every
        block into a zero ``(B, P)`` tensor, about 15 times slower on an MLP.
        """
        g = vmap(grad(self._loss_one), in_dims=(None, 0, 0))(self.unflatten(theta), x, y)
        b = x.shape[0]
        return torch.cat([g[blk.name].reshape(b, -1) for blk in self.blocks], dim=1)

    # ------------------------------------------------------------------ full-data (unclipped)
    def _chunk(self, k: int, max_elements: int = 2 ** 24) -> int:
        return max(1, min(self.N, max_elements // max(1, k * max(self.P, 1))))

    def _mean_loss_single(self, theta: torch.Tensor) -> torch.Tensor:
        total = theta.new_zeros(())
        for s in iter_chunks(self.N, self._chunk(1, 2 ** 26)):
            total = total + self.sample_losses(theta, *self.data(s)).sum()
        return total / self.N

    def loss(self, theta: Any) -> torch.Tensor:
        """Full-data mean loss ``L(theta) = (1/N) sum_i l_i``: a scalar, or ``(K,)``."""
        t, batched = self.check_theta(theta)
        with torch.no_grad():
            out = vmap(self._mean_loss_single)(t)
        return out if batched else out[0]

    def gradient(self, theta: Any) -> torch.Tensor:
        """Unclipped full-data gradient ``grad L(theta)``: ``(P,)``, or ``(K, P)``."""
        t, batched = self.check_theta(theta)
        g = vmap(grad(self._mean_loss_single))(t)
        return g if batched else g[0]

    @classmethod
    def from_npy(cls, model: nn.Module, x_path: Any, y_path: Any,
                 loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
                 **kwargs: Any) -> Problem:
        """A problem streamed from the ``.npy`` files ``x_path`` and ``y_path``, never loaded
        whole: a :class:`sa_clip.StreamedProblem` over :class:`sa_clip.NpyData` (see there
        for ``kwargs``).

        Example
        -------
        >>> import numpy as np, torch, tempfile, os, sa_clip as sc
        >>> d = tempfile.mkdtemp(); xp, yp = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
        >>> np.save(xp, np.ones((5, 2))); np.save(yp, np.zeros(5))
        >>> p = sc.Problem.from_npy(torch.nn.Linear(2, 1), xp, yp)
        >>> p.N, p.dtype
        (5, torch.float64)
        """
        from .streamed import NpyData, StreamedProblem
        return StreamedProblem(model, NpyData(x_path, y_path), loss, **kwargs)

    def __repr__(self) -> str:
        return (f"Problem(name={self.name!r}, N={self.N}, P={self.P}, loss={self.loss_name!r}, "
                f"dtype={self.dtype}, device={self.device})")
