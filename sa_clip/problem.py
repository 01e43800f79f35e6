"""A supervised-learning problem as a function of one flat parameter vector.

``Problem(model, X, y, loss)`` freezes a ``torch.nn.Module`` and a data set ``D = {(x_i, y_i)}``
into functions of ``theta``, the flat vector of the model's trainable weights in
``model.named_parameters()`` order (docs/theory.md#problem). Everything above this
module (mean field, ODE, SGD chains) sees only ``theta``.

Per-sample losses ``l_i(theta)``:

* ``"mse"``: ``sum_k (f(theta, x_i)_k - y_ik)^2`` (the paper's (4); no factor 1/2);
* ``"cross_entropy"``: ``-log softmax(f(theta, x_i))_{y_i}`` (the paper's (5)), integer labels;
* a callable ``loss(output_i, y_i) -> scalar`` for one sample (batch dimension removed).

Layers: this module imports the theta geometry (:mod:`sa_clip.layout`), the data sources
(:mod:`sa_clip.sources`) and the validators, and nothing above them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ._cost import warn_slow_conv
from ._validate import as_tensor, check_choice, check_nonneg_int
from .layout import GRANULARITIES, Block, Layout, group_norms
from .recurrent import unroll_recurrent
from .sources import DataSource, NpyData, TensorData, iter_chunks

LOSSES = ("mse", "cross_entropy")
_NOT_A1 = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
           nn.PReLU, nn.RReLU)
LossSpec = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_model_and_loss(model: Any, loss: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(loss, str):
        check_choice("loss", loss, LOSSES)
    elif not callable(loss):
        raise TypeError(f"`loss` must be one of {list(LOSSES)} or a callable "
                        f"loss(output_i, y_i) -> scalar, got {type(loss).__name__}.")
    params = list(model.parameters())
    if not params:
        raise ValueError("`model` has no parameters: there is nothing to train.")
    if not any(p.requires_grad for p in params):
        raise ValueError("`model` has no trainable parameters (every parameter has "
                         "requires_grad=False): there is nothing to train.")


def resolve_device(device: Any) -> torch.device | None:
    """``"auto"`` -> CUDA when available else CPU; None stays None; otherwise ``torch.device``."""
    if device is None:
        return None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
                         ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device` is {device!r} but CUDA is not available here "
                             "(torch.cuda.is_available() is False); use 'cpu' or 'auto'.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"`device` is {device!r} but this machine has {count} CUDA "
                             f"device(s): use 'cuda:0' .. 'cuda:{count - 1}'.")
    return dev


def _source(X: Any, y: Any, data: Any) -> DataSource:
    """The data source from ``X``/``y`` (tensors or arrays) or ``data`` (a DataSource)."""
    if isinstance(X, DataSource) and data is None and y is None:
        data, X = X, None
    if data is not None:
        if X is not None or y is not None:
            raise TypeError("pass the data either as `X` and `y` or as `data` (a DataSource), "
                            "not both.")
        if not isinstance(data, DataSource):
            raise TypeError(f"`data` must be a sa_clip.DataSource (TensorData, ArrayData, "
                            f"NpyData, ChunkedData), got {type(data).__name__}.")
        return data
    if X is None or y is None:
        raise TypeError("`X` and `y` are required (or `data`, a sa_clip.DataSource).")
    if isinstance(y, DataSource) or isinstance(X, DataSource):
        raise TypeError("a DataSource goes in `data=` (or alone in `X`), not beside `y`.")
    return TensorData(as_tensor("X", X), as_tensor("y", y))


def _check_dtypes(loss: Any, x_dtype: torch.dtype, y_dtype: torch.dtype) -> None:
    if x_dtype.is_complex:
        raise TypeError(f"`X` must be real (floating, integer or bool), got dtype {x_dtype}; "
                        "theta and the losses are real.")
    if y_dtype.is_complex:
        raise TypeError(f"`y` must be real (floating, integer or bool), got dtype {y_dtype}.")
    if loss == "cross_entropy" and (y_dtype.is_floating_point or y_dtype == torch.bool):
        raise TypeError(f"`y` must hold integer class labels for loss='cross_entropy', "
                        f"got dtype {y_dtype}; convert with y.long().")


class Problem:
    """A model, a data set and a per-sample loss, as functions of a flat ``theta``.

    Main arguments
    --------------
    model : torch.nn.Module
        The network ``f(theta, x)``. It is copied (the caller's module is never changed) and
        put in ``eval()`` mode: per-sample gradients need samples that do not interact.
        ``theta`` holds its **trainable** parameters only: a parameter with
        ``requires_grad=False`` is left out of ``theta``, ``P``, the layout and every
        gradient, and is held fixed at its value (in ``frozen``), like a buffer. So
        ``H(theta) = (1/N) sum_i clip(grad_theta l_i(theta))`` differentiates only the
        trainable parameters, and SGD chains never move the frozen ones.
    X : tensor or array, shape ``(N, ...)``
        Inputs: real (floating inputs are cast to the problem's dtype; integer or bool inputs
        are kept as they are, for models that take them, e.g. ``nn.Embedding``).
    y : tensor or array, length ``N``
        Targets: real values for ``"mse"``, integer class labels for ``"cross_entropy"``.
    loss : ``"mse"`` | ``"cross_entropy"`` | callable
        Per-sample loss (see the module docstring). A callable takes one sample's output
        (batch dimension removed) and target and returns a scalar tensor.

    Other arguments
    ---------------
    data : sa_clip.DataSource, optional
        Instead of ``X`` and ``y``: samples that stay where they are (``NpyData`` files,
        ``ArrayData`` memory maps, ``ChunkedData`` shards) and are read one chunk or minibatch
        at a time, so memory is bounded by one chunk whatever ``N`` is; see also
        :meth:`from_npy`. ``Problem(model, X, y)`` is ``Problem(model, data=TensorData(X, y))``.
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
    scan_rows : int, optional
        Rows per chunk of the one-off scan of the data at construction (default: about 2^22
        numbers per chunk).

    Attributes
    ----------
    theta0 : tensor ``(P,)``
        The model's trainable weights, flat.
    layout, blocks : Layout, tuple of Block
        One :class:`Block` per trainable tensor.
    frozen : dict
        Name -> the fixed (non-trainable) parameters.
    N, P : int
        Numbers of samples and of trainable parameters.
    source : DataSource
        The :class:`~sa_clip.DataSource` the samples are read from.
    in_memory : bool
        Whether the samples are tensors in memory (built from ``X`` and ``y``).
    X, y : tensors
        The data, on the problem's device and in its dtype, **for in-memory data only**. A
        problem over a streamed source holds no ``X``/``y`` (``hasattr(p, "X")`` is False;
        reading it raises ``AttributeError`` saying so): read its samples with :meth:`data`
        and :meth:`take`, which work for every source.
    loss_spec, loss_name : str or callable, str
        The per-sample loss as given (``"mse"``, ``"cross_entropy"`` or the callable), and
        its label.

    Raises
    ------
    TypeError, ValueError
        For a model that is not a Module or has no trainable parameter, X/y length mismatch,
        complex X or y, NaN/inf in the data (reported with the sample index), an unknown loss,
        float or out-of-range labels for cross-entropy, a model that cannot be applied to one
        sample of ``X`` (input width, dtype), or an output shape that does not fit the targets.
        All the checks run once, whatever the source; a streamed source is scanned chunk by
        chunk.

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> X = torch.randn(20, 3, dtype=torch.float64); y = X.sum(1)
    >>> p = sc.Problem(torch.nn.Linear(3, 1), X, y, loss="mse")
    >>> p.P, p.theta0.dtype
    (4, torch.float64)
    >>> lin = torch.nn.Linear(3, 1); _ = lin.bias.requires_grad_(False)   # a frozen bias
    >>> sc.Problem(lin, X, y).P
    3
    """

    def __init__(self, model: nn.Module, X: Any = None, y: Any = None, loss: LossSpec = "mse",
                 *, data: DataSource | None = None, dtype: torch.dtype | None = None,
                 device: Any = None, name: str | None = None, scan_rows: int | None = None):
        _check_model_and_loss(model, loss)
        source = _source(X, y, data)
        x_dtype, y_dtype = source.torch_dtypes()
        _check_dtypes(loss, x_dtype, y_dtype)
        self._setup_model(model, loss, x_dtype, dtype, device, name)
        if source.in_memory:     # convert once; data()/take() are then plain indexing
            source = source.to(self.device, *self._data_dtypes(x_dtype, y_dtype))
        self.source, self.N = source, source.n
        self.in_memory = bool(source.in_memory)
        per_row = max(1, int(torch.Size(source.x_shape).numel()))
        self._scan_rows = (max(1, 2 ** 22 // per_row) if scan_rows is None
                           else check_nonneg_int("scan_rows", scan_rows, minimum=1))
        self._labels = self._scan(x_dtype)
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
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string or None, got {name!r}.")
        dev = resolve_device(device) or first.device
        # nn.LSTM/GRU/RNN run fused kernels that torch.func cannot batch: an unrolled cell on
        # the same parameters takes their place in this private copy (sa_clip.recurrent)
        self.model = unroll_recurrent(copy.deepcopy(model)).to(device=dev, dtype=dtype).eval()
        self.dtype, self.device, self.name = dtype, dev, name or type(model).__name__
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        self.loss_spec: LossSpec = loss

    def _data_dtypes(self, x_dtype: torch.dtype, y_dtype: torch.dtype
                     ) -> tuple[torch.dtype, torch.dtype]:
        """The dtypes ``data``/``take`` return: floating inputs and real targets in the
        problem's dtype, labels as int64, other inputs as they are."""
        xd = self.dtype if x_dtype.is_floating_point else x_dtype
        if self.loss_spec == "cross_entropy":
            return xd, torch.long
        return xd, self.dtype if y_dtype.is_floating_point else y_dtype

    def _finish_setup(self) -> None:
        """Layout, ``theta0``, ``P`` and the output checks, once the data are in place."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.frozen = {n: p.detach() for n, p in self.model.named_parameters()
                       if not p.requires_grad}
        blocks, start = [], 0
        for pname, p in named:
            blocks.append(Block(pname, tuple(p.shape), start, start + p.numel()))
            start += p.numel()
        self.layout = Layout(tuple(blocks))
        self.blocks = self.layout.blocks
        self.buffers = dict(self.model.named_buffers())
        self._fixed = {**self.frozen, **self.buffers}
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.P = self.layout.size
        for pname, t in (*named, *self.frozen.items()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"`model` has non-finite values in its parameter {pname!r} "
                                 f"(in {self.dtype}); theta0 and every fixed parameter must be "
                                 "finite.")
        self._check_output()
        warn_slow_conv(self.model, self.dtype, self.device)
        if any(isinstance(m, _NOT_A1) for m in self.model.modules()):
            warnings.warn("the model uses a piecewise-linear activation (e.g. ReLU), which "
                          "violates assumption (A1) (twice continuously differentiable): "
                          "allowed, but the ODE limit is not covered by the theorem.",
                          UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ set-up checks
    def _scan(self, source_x_dtype: torch.dtype) -> tuple[int, int] | None:
        """One pass over the data as the problem reads it: NaN/inf in ``X`` (and real ``y``),
        the label range for cross-entropy. Returns ``(min label, max label)`` or None."""
        lo = hi = None
        for s in iter_chunks(self.N, self._scan_rows):
            x, y = self.data(s)
            for name, t in (("X", x), ("y", y)):
                if not t.is_floating_point():
                    continue
                bad = ~torch.isfinite(t)
                if bool(bad.any()):
                    first = tuple(int(i) for i in torch.nonzero(bad)[0])
                    at = (first[0] + s.start, *first[1:])
                    hint = ""
                    if (name == "X" and source_x_dtype.is_floating_point
                            and source_x_dtype.itemsize > self.dtype.itemsize):
                        hint = (f" after conversion from {source_x_dtype} to {self.dtype} "
                                f"(values beyond {self.dtype}'s range overflow: pass "
                                f"dtype={source_x_dtype} or rescale)")
                    raise ValueError(f"`{name}` must be finite; found {t[first].item()} at "
                                     f"index {at}{hint} ({int(bad.sum())} non-finite entries "
                                     f"in samples {s.start}..{s.stop - 1}).")
            if self.loss_spec == "cross_entropy" and y.numel():
                lo = int(y.min()) if lo is None else min(lo, int(y.min()))
                hi = int(y.max()) if hi is None else max(hi, int(y.max()))
        return None if lo is None else (lo, hi)

    def _apply_hint(self, x1: torch.Tensor) -> str:
        """Why the model may refuse one sample of ``X``: dtype, or input width."""
        if not x1.is_floating_point():
            return (f" `X` has dtype {x1.dtype}: a model with floating weights needs floating "
                    f"inputs (convert with X.to({self.dtype}))")
        lin = next((m for m in self.model.modules() if isinstance(m, nn.Linear)), None)
        if lin is not None and x1.dim() >= 2 and x1.shape[-1] != lin.in_features:
            return (f" the model's first Linear layer takes in_features = {lin.in_features} "
                    f"inputs per sample, `X` has {x1.shape[-1]} (X.shape[1:] = "
                    f"{tuple(x1.shape[1:])})")
        return ""

    def _check_output(self) -> None:
        x1, y1 = self.data(slice(0, 1))
        try:
            out = self.outputs(self.theta0, x1)
        except (RuntimeError, TypeError, IndexError, ValueError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = self._apply_hint(x1)
            raise ValueError(f"`model` cannot be applied to `X` (one sample of shape "
                             f"{tuple(x1.shape[1:])}, dtype {x1.dtype})"
                             f"{':' + hint + '.' if hint else '.'} The model raised "
                             f"{type(exc).__name__}: {msg}") from exc
        if out.shape[:1] != (1,):
            raise ValueError(f"`model` must keep the batch dimension: input of shape "
                             f"{tuple(x1.shape)} gave output {tuple(out.shape)}.")
        self.output_shape = tuple(out.shape[1:])
        loss = self.loss_spec
        if loss == "mse":
            if out[0].numel() != y1[0].numel():
                raise ValueError(f"loss='mse' needs one target per output: the model gives "
                                 f"{tuple(out.shape[1:])} per sample, `y` has "
                                 f"{tuple(y1.shape[1:])}.")
        elif loss == "cross_entropy":
            if y1.dim() != 1:
                raise ValueError(f"`y` must hold one class label per sample for "
                                 f"loss='cross_entropy' (shape (N,)), got shape "
                                 f"(N, {', '.join(map(str, y1.shape[1:]))}).")
            if out.dim() != 2:
                raise ValueError(f"loss='cross_entropy' needs logits of shape (N, C); the model "
                                 f"gives {tuple(out.shape)} per batch.")
            c = out.shape[1]
            lo, hi = self._labels
            if lo < 0 or hi >= c:
                raise ValueError(f"`y` labels must lie in [0, {c - 1}] for a model with {c} "
                                 f"logits, got labels in [{lo}, {hi}].")
        else:
            val = loss(out[0], y1[0])
            if not isinstance(val, torch.Tensor) or val.numel() != 1:
                raise TypeError("a callable `loss` must return a scalar tensor for one sample, "
                                f"got {type(val).__name__} {getattr(val, 'shape', '')}.")

    # ------------------------------------------------------------------ data tensors
    @property
    def X(self) -> torch.Tensor:  # noqa: N802 - the conventional name
        """The inputs, for in-memory data only (see the class docstring)."""
        if self.in_memory:
            return self.source.X
        raise AttributeError(f"this Problem streams its data from a {type(self.source).__name__}"
                             " and holds no `X` in memory: read samples with "
                             "problem.data(slice) or problem.take(index).")

    @property
    def y(self) -> torch.Tensor:
        """The targets, for in-memory data only (see the class docstring)."""
        if self.in_memory:
            return self.source.y
        raise AttributeError(f"this Problem streams its data from a {type(self.source).__name__}"
                             " and holds no `y` in memory: read samples with "
                             "problem.data(slice) or problem.take(index).")

    @property
    def _loss(self) -> LossSpec:
        """Old private name of :attr:`loss_spec`, kept for code written against it."""
        return self.loss_spec

    # ------------------------------------------------------------------ theta handling
    def check_theta(self, theta: Any, name: str = "theta", *, finite: bool = True
                    ) -> tuple[torch.Tensor, bool]:
        """Return ``(theta as (K, P) tensor of the problem's dtype and device, was_batched)``.

        Accepts ``(P,)`` or ``(K, P)`` with ``K >= 1``, real (floating, integer or bool)
        values. Raises ``ValueError`` naming ``name`` for complex values (their imaginary part
        would be lost), another shape, ``K = 0``, or (with ``finite=True``, the default)
        NaN/inf entries in the problem's dtype; ``TypeError`` for what is not array-like.
        Internal callers that must pass blown-up states through (ODE right-hand sides, SGD
        chains) use ``finite=False``.
        """
        t = as_tensor(name, theta)
        if t.is_complex():
            raise ValueError(f"`{name}` must be real, got dtype {t.dtype} (the imaginary part "
                             f"would be dropped); pass theta.real if that is what you mean.")
        if t.dim() not in (1, 2) or t.shape[-1] != self.P:
            raise ValueError(f"`{name}` must have shape (P,) or (K, P) with P = {self.P}, got "
                             f"{tuple(t.shape)}.")
        if t.dim() == 2 and t.shape[0] == 0:
            raise ValueError(f"`{name}` must hold at least one parameter vector: got shape "
                             f"{tuple(t.shape)} (K = 0).")
        t = t.to(dtype=self.dtype, device=self.device)
        if finite:
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                first = tuple(int(i) for i in torch.nonzero(bad)[0])
                raise ValueError(f"`{name}` must be finite; found {t[first].item()} at index "
                                 f"{first} ({int(bad.sum())} non-finite entries in all, "
                                 f"in {self.dtype}).")
        return (t, True) if t.dim() == 2 else (t.unsqueeze(0), False)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's named trainable tensors as views of a flat ``theta`` (shape ``(P,)``)."""
        return self.layout.unflatten(theta)

    # ------------------------------------------------------------------ data access
    def _convert(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.in_memory:           # converted once at construction
            return x, y
        xd, yd = self._data_dtypes(x.dtype, y.dtype)
        return x.to(device=self.device, dtype=xd), y.to(device=self.device, dtype=yd)

    def data(self, s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``s`` (a contiguous slice) as ``(x, y)`` tensors on the problem's device.

        Every full-data computation reads the data through this method, chunk by chunk, from
        the problem's :class:`~sa_clip.DataSource`.
        """
        if not isinstance(s, slice):
            raise TypeError(f"`s` must be a slice of sample indices, got {s!r}.")
        return self._convert(*self.source.rows(s))

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at an integer ``index`` tensor of any shape: ``x`` of shape
        ``index.shape + X.shape[1:]`` and ``y`` likewise (minibatches of SGD chains)."""
        return self._convert(*self.source.take(index))

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Problem:
        """The same problem on another device and/or in another floating dtype (a new
        :class:`Problem`; this one is unchanged).

        Model, frozen parameters, buffers and in-memory data are converted (in-memory data
        from this problem's copy, so ``float32 -> float64`` does not restore digits a
        ``float64 -> float32`` conversion dropped); a streamed source stays where it is and
        is converted chunk by chunk. The data are checked again in the new dtype (a narrower
        dtype may overflow), one pass over them.

        Example
        -------
        >>> import torch, sa_clip as sc
        >>> p = sc.problems.tanh_regression()
        >>> p.to(dtype=torch.float32).theta0.dtype
        torch.float32
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # warned once already
            return Problem(self.model, data=self.source, loss=self.loss_spec,
                           dtype=self.dtype if dtype is None else dtype,
                           device=self.device if device is None else device, name=self.name,
                           scan_rows=self._scan_rows)

    # ------------------------------------------------------------------ per-sample maths
    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model outputs ``f(theta, x)`` for a batch ``x`` and one ``theta`` of shape (P,)."""
        return functional_call(self.model, {**self.unflatten(theta), **self._fixed}, (x,))

    def batch_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses (shape ``(B,)``) from a batch of outputs and targets."""
        loss = self.loss_spec
        if loss == "mse":
            b = out.shape[0]
            return ((out.reshape(b, -1) - y.reshape(b, -1).to(out.dtype)) ** 2).sum(1)
        if loss == "cross_entropy":
            return -torch.log_softmax(out, -1).gather(1, y.reshape(-1, 1)).squeeze(1)
        return vmap(lambda o, t: loss(o, t).reshape(()))(out, y)

    def sample_losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                      ) -> torch.Tensor:
        """``l_i(theta)`` for a batch: shape ``(B,)``; ``theta`` of shape (P,)."""
        return self.batch_losses(self.outputs(theta, x), y)

    def _loss_one(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
                  ) -> torch.Tensor:
        out = functional_call(self.model, {**params, **self._fixed}, (x.unsqueeze(0),))
        return self.batch_losses(out, y.unsqueeze(0))[0]

    def per_sample_grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                         ) -> torch.Tensor:
        """Per-sample gradients ``g_i = grad l_i(theta)``, shape ``(B, P)`` (``vmap(grad)``).

        Differentiated with respect to the named trainable tensors (views of ``theta``) and
        concatenated once: differentiating through the slices of a flat ``theta`` instead
        would scatter every block into a zero ``(B, P)`` tensor, about 15 times slower on an
        MLP.
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
    def from_npy(cls, model: nn.Module, x_path: Any, y_path: Any, loss: LossSpec = "mse",
                 **kwargs: Any) -> Problem:
        """A problem streamed from the ``.npy`` files ``x_path`` and ``y_path``, never loaded
        whole: ``Problem(model, data=NpyData(x_path, y_path), loss=loss, **kwargs)``.

        Example
        -------
        >>> import numpy as np, torch, tempfile, os, sa_clip as sc
        >>> d = tempfile.mkdtemp(); xp, yp = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
        >>> np.save(xp, np.ones((5, 2))); np.save(yp, np.zeros(5))
        >>> p = sc.Problem.from_npy(torch.nn.Linear(2, 1), xp, yp)
        >>> p.N, p.dtype, p.in_memory
        (5, torch.float64, False)
        """
        return cls(model, data=NpyData(x_path, y_path), loss=loss, **kwargs)

    def __repr__(self) -> str:
        src = "" if self.in_memory else f", source={type(self.source).__name__}"
        return (f"Problem(name={self.name!r}, N={self.N}, P={self.P}, loss={self.loss_name!r}, "
                f"dtype={self.dtype}, device={self.device}{src})")


__all__ = ["Problem", "Block", "Layout", "group_norms", "GRANULARITIES", "LOSSES",
           "iter_chunks", "resolve_device"]
