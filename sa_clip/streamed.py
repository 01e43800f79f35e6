"""Problems whose data stay on disk (or in any host array) and are read chunk by chunk.

A :class:`StreamedProblem` is a :class:`~sa_clip.Problem` that holds no ``X``/``y`` tensors.
All full-data maths (``H``, ``DH``, the loss, clip statistics) reads samples through
``Problem.data(slice)`` and SGD minibatches through ``Problem.take(index)``; this class
overrides exactly those two, so memory is bounded by one chunk whatever ``N`` is. The data
come from a :class:`DataSource`:

* :class:`ArrayData` -- NumPy arrays, e.g. ``np.load(path, mmap_mode="r")`` memory maps;
* :class:`NpyData` -- two ``.npy`` files, each read maps only the rows it needs and releases
  them at once, so the process's resident memory stays one chunk (a long-lived memory map
  would count every page ever touched in the resident set);
* :class:`ChunkedData` -- a sequence of sources (or ``(X, y)`` array pairs) back to back,
  e.g. one ``.npy`` pair per shard file.

NaN/inf in the inputs (and real-valued targets) and the label range for cross-entropy are
checked once, chunk by chunk, at construction.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validate import check_nonneg_int
from .problem import Problem, _check_model_and_loss, iter_chunks


class DataSource(ABC):
    """``N`` samples ``(x_i, y_i)`` read as NumPy arrays, a contiguous range or an index at a
    time. Subclasses set ``n``, ``x_shape``/``y_shape`` (one sample's), ``x_dtype``/``y_dtype``
    and implement :meth:`read` and :meth:`gather`."""

    n: int
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    x_dtype: np.dtype
    y_dtype: np.dtype

    def __len__(self) -> int:
        return self.n

    @abstractmethod
    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``start .. stop-1`` as in-memory arrays ``(stop-start, *x_shape)``, ..."""

    @abstractmethod
    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples at a 1-d integer ``index`` (values in ``[0, n)``), in that order."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, x_shape={self.x_shape}, "
                f"x_dtype={self.x_dtype}, y_shape={self.y_shape}, y_dtype={self.y_dtype})")


def _check_pair(x_shape: tuple[int, ...], y_shape: tuple[int, ...], what: str) -> int:
    if len(x_shape) == 0:
        raise ValueError(f"`X` must have shape (N, ...), got a 0-d array{what}.")
    n = x_shape[0]
    if n == 0:
        raise ValueError(f"`X` is empty (N = 0){what}: the mean field needs at least one sample.")
    if len(y_shape) == 0 or y_shape[0] != n:
        raise ValueError(f"`y` must have length N = {n} (the length of `X`), got shape "
                         f"{tuple(y_shape)}{what}.")
    return n


class ArrayData(DataSource):
    """Samples held in NumPy arrays, typically memory maps (``np.load(p, mmap_mode="r")``).

    Only the rows asked for are copied into memory on each read.

    Example
    -------
    >>> import numpy as np, sa_clip as sc
    >>> d = sc.ArrayData(np.zeros((4, 2)), np.arange(4))
    >>> d.read(1, 3)[1]
    array([1, 2])
    """

    def __init__(self, X: Any, y: Any):
        for name, a in (("X", X), ("y", y)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"`{name}` must be a NumPy array (np.load(path, mmap_mode='r') "
                                f"for data on disk), got {type(a).__name__}.")
        self.n = _check_pair(X.shape, y.shape, "")
        self.X, self.y = X, y
        self.x_shape, self.y_shape = tuple(X.shape[1:]), tuple(y.shape[1:])
        self.x_dtype, self.y_dtype = X.dtype, y.dtype

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.X[start:stop]), np.array(self.y[start:stop])

    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.X[index]), np.asarray(self.y[index])


class _NpyFile:
    """One ``.npy`` file, rows mapped on demand (C order only)."""

    def __init__(self, path: Any, name: str):
        try:
            path = os.fspath(path)
        except TypeError as exc:
            raise TypeError(f"`{name}` must be a path to a .npy file, got {path!r}.") from exc
        if not os.path.isfile(path):
            raise ValueError(f"`{name}` must be an existing .npy file, got {path!r}.")
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise ValueError(f"`{name}` = {path!r} could not be memory-mapped as a .npy "
                             f"array: {exc}") from exc
        if not isinstance(arr, np.memmap):
            raise ValueError(f"`{name}` = {path!r} is not a single .npy array.")
        if arr.ndim > 1 and not arr.flags.c_contiguous:
            raise ValueError(f"`{name}` = {path!r} is stored in Fortran order; rows must be "
                             "contiguous: save it with np.save(path, np.ascontiguousarray(a)).")
        self.path, self.offset = path, int(arr.offset)
        self.shape, self.dtype = tuple(arr.shape), arr.dtype
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        del arr   # unmaps

    def rows(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        mm = np.memmap(self.path, self.dtype, "r", offset=self.offset + start * self.row_bytes,
                       shape=(stop - start, *self.shape[1:]))
        return np.array(mm)   # a copy; the map is released with ``mm``

    def take(self, index: np.ndarray) -> np.ndarray:
        mm = np.memmap(self.path, self.dtype, "r", offset=self.offset, shape=self.shape)
        return np.array(mm[index])


class NpyData(DataSource):
    """Samples in two ``.npy`` files (``np.save``), mapped a chunk at a time.

    Each :meth:`read` maps just rows ``start .. stop-1``, copies them and unmaps, so neither the
    files nor the pages already read stay in the process's memory.

    Example
    -------
    >>> import numpy as np, os, tempfile, sa_clip as sc
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "x.npy"), np.ones((5, 2), np.float32))
    >>> np.save(os.path.join(d, "y.npy"), np.zeros(5, np.float32))
    >>> sc.NpyData(os.path.join(d, "x.npy"), os.path.join(d, "y.npy")).n
    5
    """

    def __init__(self, x_path: Any, y_path: Any):
        self._x, self._y = _NpyFile(x_path, "x_path"), _NpyFile(y_path, "y_path")
        self.n = _check_pair(self._x.shape, self._y.shape,
                             f" (files {self._x.path!r}, {self._y.path!r})")
        self.x_shape, self.y_shape = self._x.shape[1:], self._y.shape[1:]
        self.x_dtype, self.y_dtype = self._x.dtype, self._y.dtype

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self._x.rows(start, stop), self._y.rows(start, stop)

    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._x.take(index), self._y.take(index)


class ChunkedData(DataSource):
    """Several sources (or ``(X, y)`` NumPy array pairs) back to back, as one data set.

    Reads that span several parts are stitched together; the parts must agree in per-sample
    shapes and dtypes.

    Example
    -------
    >>> import numpy as np, sa_clip as sc
    >>> d = sc.ChunkedData([(np.zeros((2, 3)), np.zeros(2)), (np.ones((3, 3)), np.ones(3))])
    >>> d.n, d.read(1, 3)[1]
    (5, array([0., 1.]))
    """

    def __init__(self, parts: Sequence[DataSource | tuple[Any, Any]]):
        if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
            raise TypeError(f"`parts` must be a non-empty sequence of DataSource or (X, y) "
                            f"array pairs, got {type(parts).__name__}.")
        srcs = []
        for i, part in enumerate(parts):
            if isinstance(part, DataSource):
                srcs.append(part)
            elif isinstance(part, tuple) and len(part) == 2:
                srcs.append(ArrayData(*part))
            else:
                raise TypeError(f"`parts[{i}]` must be a DataSource or an (X, y) pair, got "
                                f"{type(part).__name__}.")
        first = srcs[0]
        for i, s in enumerate(srcs[1:], 1):
            if (s.x_shape, s.y_shape, s.x_dtype, s.y_dtype) != (
                    first.x_shape, first.y_shape, first.x_dtype, first.y_dtype):
                raise ValueError(f"`parts[{i}]` does not match `parts[0]`: {s!r} vs {first!r}.")
        self.parts = srcs
        self.offsets = np.cumsum([0] + [s.n for s in srcs])
        self.n = int(self.offsets[-1])
        self.x_shape, self.y_shape = first.x_shape, first.y_shape
        self.x_dtype, self.y_dtype = first.x_dtype, first.y_dtype

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for j, s in enumerate(self.parts):
            a, b = max(start, self.offsets[j]), min(stop, self.offsets[j + 1])
            if a < b:
                x, y = s.read(int(a - self.offsets[j]), int(b - self.offsets[j]))
                xs.append(x)
                ys.append(y)
        if not xs:
            return (np.empty((0, *self.x_shape), self.x_dtype),
                    np.empty((0, *self.y_shape), self.y_dtype))
        return np.concatenate(xs), np.concatenate(ys)

    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = np.searchsorted(self.offsets, index, side="right") - 1
        x = np.empty((len(index), *self.x_shape), self.x_dtype)
        y = np.empty((len(index), *self.y_shape), self.y_dtype)
        for j in np.unique(part):   # a loop over parts, not samples
            sel = part == j
            x[sel], y[sel] = self.parts[j].gather(index[sel] - self.offsets[j])
        return x, y


def _first_bad(a: np.ndarray) -> tuple[int, ...] | None:
    if a.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.argwhere(bad)[0])


class StreamedProblem(Problem):
    """A :class:`~sa_clip.Problem` whose samples stay in a :class:`DataSource`.

    Identical maths to ``Problem(model, X, y, loss)`` on the same data (``MeanField``,
    ``loss``, ``gradient``, SGD ``directions`` all work unchanged), but ``X`` and ``y`` are
    never held whole: ``data(slice)`` reads one chunk and ``take(index)`` a minibatch.

    Main arguments
    --------------
    model : torch.nn.Module
    source : DataSource
        E.g. ``NpyData(x_path, y_path)``; see also :meth:`Problem.from_npy`.
    loss : ``"mse"`` | ``"cross_entropy"`` | callable

    Other arguments
    ---------------
    dtype, device, name
        As for :class:`~sa_clip.Problem`: floating inputs are cast chunk by chunk to
        ``dtype`` (default: the promotion of the model's and the file's dtypes, so a float32
        file with a float32 model stays float32).
    scan_rows : int, optional
        Rows per chunk of the one-off scan for NaN/inf and labels at construction (default:
        about 2^22 numbers per chunk).

    Raises
    ------
    TypeError, ValueError
        As for ``Problem``; a non-finite entry is reported with its global sample index.

    Example
    -------
    >>> import numpy as np, torch, sa_clip as sc
    >>> X = np.linspace(-1, 1, 8)[:, None]; y = 3 * X[:, 0]
    >>> p = sc.StreamedProblem(torch.nn.Linear(1, 1), sc.ArrayData(X, y), "mse")
    >>> sc.MeanField(p, sc.NormClip(0.5))(p.theta0).shape
    torch.Size([2])
    """

    def __init__(self, model: nn.Module, source: DataSource,
                 loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse", *,
                 dtype: torch.dtype | None = None, device: Any = None, name: str | None = None,
                 scan_rows: int | None = None):
        _check_model_and_loss(model, loss)
        if not isinstance(source, DataSource):
            raise TypeError(f"`source` must be a sa_clip.DataSource (ArrayData, NpyData, "
                            f"ChunkedData), got {type(source).__name__}.")
        if loss == "cross_entropy" and source.y_dtype.kind not in "iu":
            raise TypeError(f"`y` must hold integer class labels for loss='cross_entropy', "
                            f"got dtype {source.y_dtype}; save the labels as integers.")
        x_dtype = torch.from_numpy(np.empty(0, source.x_dtype)).dtype
        self._setup_model(model, loss, x_dtype, dtype, device, name)
        self.source, self.N = source, source.n
        per_row = max(1, int(np.prod(source.x_shape, dtype=np.int64)))
        self._scan_rows = (max(1, 2 ** 22 // per_row) if scan_rows is None
                           else check_nonneg_int("scan_rows", scan_rows, minimum=1))
        self._labels = self._scan()
        self._finish_setup()

    @property
    def X(self) -> torch.Tensor:  # noqa: N802 - the name Problem uses
        raise AttributeError("a StreamedProblem holds no `X` in memory: read samples with "
                             "problem.data(slice) or problem.take(index).")

    @property
    def y(self) -> torch.Tensor:
        raise AttributeError("a StreamedProblem holds no `y` in memory: read samples with "
                             "problem.data(slice) or problem.take(index).")

    def _scan(self) -> tuple[int, int] | None:
        """One pass over the data: NaN/inf in ``X`` (and real ``y``), the label range."""
        lo, hi = None, None
        for s in iter_chunks(self.N, self._scan_rows):
            x, y = self.source.read(s.start, s.stop)
            for name, a in (("X", x), ("y", y)):
                bad = _first_bad(a)
                if bad is not None:
                    at = (bad[0] + s.start, *bad[1:])
                    raise ValueError(f"`{name}` must be finite; found {a[bad]} at index {at}.")
            if self._loss == "cross_entropy":
                lo = int(y.min()) if lo is None else min(lo, int(y.min()))
                hi = int(y.max()) if hi is None else max(hi, int(y.max()))
        return None if lo is None else (lo, hi)

    def _label_range(self) -> tuple[int, int]:
        return self._labels  # type: ignore[return-value]  # set by _scan for cross-entropy

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(np.ascontiguousarray(x))
        xt = xt.to(device=self.device, dtype=self.dtype if xt.is_floating_point() else xt.dtype)
        yt = torch.from_numpy(np.ascontiguousarray(y))
        if self._loss == "cross_entropy":
            yt = yt.to(device=self.device, dtype=torch.long)
        else:
            yt = yt.to(device=self.device, dtype=self.dtype if yt.is_floating_point()
                       else yt.dtype)
        return xt, yt

    def data(self, s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``s`` (a contiguous slice), read from the source now."""
        start, stop, step = s.indices(self.N)
        if step != 1:
            raise ValueError(f"`s` must be a contiguous slice (step 1), got {s!r}.")
        return self._tensors(*self.source.read(start, max(start, stop)))

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at an integer ``index`` tensor of any shape, read from the source now."""
        flat = index.detach().reshape(-1).cpu().numpy().astype(np.int64)
        if flat.size and (flat.min() < -self.N or flat.max() >= self.N):
            raise IndexError(f"`index` must lie in [-{self.N}, {self.N - 1}], got values in "
                             f"[{flat.min()}, {flat.max()}].")
        x, y = self._tensors(*self.source.gather(flat % self.N))
        return (x.reshape(*index.shape, *self.source.x_shape),
                y.reshape(*index.shape, *self.source.y_shape))

    def __repr__(self) -> str:
        return (f"StreamedProblem(name={self.name!r}, N={self.N}, P={self.P}, "
                f"loss={self.loss_name!r}, dtype={self.dtype}, device={self.device}, "
                f"source={type(self.source).__name__})")
