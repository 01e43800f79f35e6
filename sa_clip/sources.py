"""Where a problem's samples live: a :class:`DataSource` read a chunk or a minibatch at a time.

A :class:`~sa_clip.Problem` always holds one source. All full-data maths (``H``, ``DH``, the
loss, clip statistics) reads samples through ``Problem.data(slice)`` and SGD minibatches through
``Problem.take(index)``, which ask the source, so memory is bounded by one chunk whatever
``N`` is:

* :class:`TensorData` -- two tensors in memory (``Problem(model, X, y)`` builds one);
* :class:`ArrayData` -- NumPy arrays, e.g. ``np.load(path, mmap_mode="r")`` memory maps;
* :class:`NpyData` -- two ``.npy`` files, each read maps only the rows it needs and releases
  them at once, so the process's resident memory stays one chunk (a long-lived memory map
  would count every page ever touched in the resident set);
* :class:`ChunkedData` -- a sequence of sources (or ``(X, y)`` array pairs) back to back,
  e.g. one ``.npy`` pair per shard file.

A source checks only its own shapes (``N`` samples on both sides) and that its element types
are numbers; what the data must satisfy for a problem (finite values, label range, dtypes) is
checked once by the :class:`~sa_clip.Problem`, whatever the source.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ._validate import as_tensor


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices ``[s, s+size)`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class DataSource(ABC):
    """``N`` samples ``(x_i, y_i)``, read a contiguous range or an index at a time.

    Subclasses set ``n``, ``x_shape``/``y_shape`` (one sample's), ``x_dtype``/``y_dtype``
    (NumPy dtypes) and implement :meth:`read` and :meth:`gather` (NumPy arrays in host memory).
    :meth:`rows` and :meth:`take` return the same samples as torch tensors; a source that
    already holds tensors (:class:`TensorData`) overrides them and sets ``in_memory``.
    """

    n: int
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    x_dtype: Any
    y_dtype: Any
    #: True when the samples are tensors held in (host or device) memory
    in_memory: bool = False

    def __len__(self) -> int:
        return self.n

    @abstractmethod
    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``start .. stop-1`` as in-memory arrays ``(stop-start, *x_shape)``, ..."""

    @abstractmethod
    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples at a 1-d integer ``index`` (values in ``[0, n)``), in that order."""

    def torch_dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """The torch dtypes of ``x`` and ``y`` as :meth:`rows` returns them."""
        return _torch_dtype(self.x_dtype), _torch_dtype(self.y_dtype)

    def rows(self, s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``s`` (a contiguous slice of ``range(n)``) as CPU tensors, read now."""
        start, stop, step = s.indices(self.n)
        if step != 1:
            raise ValueError(f"`s` must be a contiguous slice (step 1), got {s!r}.")
        x, y = self.read(start, max(start, stop))
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at an integer ``index`` tensor of any shape (negative values count from
        the end), as CPU tensors of shape ``index.shape + x_shape`` and ``index.shape +
        y_shape``, read now."""
        if not isinstance(index, torch.Tensor) or index.is_floating_point() or \
                index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"`index` must be an integer tensor of sample indices, got "
                            f"{getattr(index, 'dtype', type(index).__name__)}.")
        flat = index.detach().reshape(-1).cpu().numpy().astype(np.int64)
        if flat.size and (flat.min() < -self.n or flat.max() >= self.n):
            raise IndexError(f"`index` must lie in [-{self.n}, {self.n - 1}], got values in "
                             f"[{flat.min()}, {flat.max()}].")
        x, y = self.gather(flat % self.n)
        x = torch.from_numpy(np.ascontiguousarray(x))
        y = torch.from_numpy(np.ascontiguousarray(y))
        return x.reshape(*index.shape, *self.x_shape), y.reshape(*index.shape, *self.y_shape)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, x_shape={self.x_shape}, "
                f"x_dtype={self.x_dtype}, y_shape={self.y_shape}, y_dtype={self.y_dtype})")


def _torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _check_kind(name: str, dtype: np.dtype, where: str = "") -> None:
    """Refuse element types torch cannot hold (strings, objects, ...)."""
    if dtype.kind not in "biufc":
        raise TypeError(f"`{name}` must hold numbers (bool, integer, floating), got dtype "
                        f"{dtype}{where}.")
    try:
        _torch_dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"`{name}` has dtype {dtype}{where}, which torch cannot hold; convert "
                        f"it (e.g. to float32 or int64).") from exc


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


class TensorData(DataSource):
    """Samples held as two torch tensors, ``X`` of shape ``(N, ...)`` and ``y`` of length ``N``
    (on any device): the source of a :class:`~sa_clip.Problem` built from ``X`` and ``y``.

    :meth:`rows` and :meth:`take` are plain tensor indexing (no copy to the host).

    Example
    -------
    >>> import torch, sa_clip as sc
    >>> d = sc.TensorData(torch.zeros(4, 2), torch.arange(4))
    >>> d.n, d.take(torch.tensor([[3, 0]]))[1]
    (4, tensor([[3, 0]]))
    """

    in_memory = True

    def __init__(self, X: Any, y: Any):
        X, y = as_tensor("X", X), as_tensor("y", y)
        self.n = _check_pair(tuple(X.shape), tuple(y.shape), "")
        self.X, self.y = X, y
        self.x_shape, self.y_shape = tuple(X.shape[1:]), tuple(y.shape[1:])
        self.x_dtype, self.y_dtype = X.dtype, y.dtype

    def to(self, device: Any, x_dtype: torch.dtype, y_dtype: torch.dtype) -> TensorData:
        """A copy on ``device`` with the given dtypes (no copy where nothing changes)."""
        return TensorData(self.X.to(device=device, dtype=x_dtype),
                          self.y.to(device=device, dtype=y_dtype))

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return (self.X[start:stop].detach().cpu().numpy(),
                self.y[start:stop].detach().cpu().numpy())

    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = torch.as_tensor(index, device=self.X.device)
        return self.X[i].detach().cpu().numpy(), self.y[i].detach().cpu().numpy()

    def rows(self, s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[s], self.y[s]

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[index], self.y[index]


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
        _check_kind("X", X.dtype)
        _check_kind("y", y.dtype)
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
        _check_kind("X", self._x.dtype, f" (file {self._x.path!r})")
        _check_kind("y", self._y.dtype, f" (file {self._y.path!r})")
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
            if isinstance(part, DataSource) and part.in_memory:
                raise TypeError(f"`parts[{i}]` is a {type(part).__name__} of tensors; "
                                f"concatenate tensors with torch.cat and use them directly.")
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


__all__ = ["DataSource", "TensorData", "ArrayData", "NpyData", "ChunkedData", "iter_chunks"]
