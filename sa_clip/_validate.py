"""Small validators used at the public boundary.

Each returns what it checks, so a call site reads ``lam = check_positive("lam", lam)``.
Errors name the argument in backticks, show the value and say what is accepted.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


def check_positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """Return ``float(value)`` if it is a finite real number > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a positive real number, got {value!r} "
                        f"of type {type(value).__name__}.")
    v = float(value)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        accepted = "a number > 0" + (" (inf allowed)" if allow_inf else ", finite")
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
    return v


def check_real(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a finite real number (bools excluded), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a finite real number, got {value!r} "
                        f"of type {type(value).__name__}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}.")
    return v


def check_nonneg_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Return ``int(value)`` if it is an integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer >= {minimum}, got {value!r} "
                        f"of type {type(value).__name__}.")
    v = int(value)
    if v < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {v}.")
    return v


def check_float_dtype(name: str, value: Any) -> torch.dtype:
    """Return ``value`` if it is a floating ``torch.dtype``, else raise."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"`{name}` must be a floating torch.dtype (torch.float32, "
                        f"torch.float64, ...), got {value!r}.")
    return value


def seeded_generator(seed: Any, name: str = "seed") -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``, an integer in ``[0, 2^63)``."""
    seed = check_nonneg_int(name, seed)
    if seed >= 2 ** 63:
        raise ValueError(f"`{name}` must be an integer in [0, 2^63), got {seed}.")
    return torch.Generator().manual_seed(seed)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def as_tensor(name: str, value: Any, *, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Convert arrays and sequences to a tensor; reject objects that are not array-like."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (np.ndarray, list, tuple, numbers.Number)):
        try:
            a = np.asarray(value)
        except (ValueError, TypeError) as exc:   # ragged nested lists
            raise ValueError(f"`{name}` must be a rectangular array of numbers (equal-length "
                             f"rows), got {_short(value)}.") from exc
        if a.dtype.kind not in "biufc":
            raise TypeError(f"`{name}` must hold numbers, got {_short(value)} (numpy dtype "
                            f"{a.dtype}).")
        try:
            t = torch.as_tensor(a)
        except (TypeError, RuntimeError) as exc:   # e.g. uint16 on old torch
            raise TypeError(f"`{name}` has dtype {a.dtype}, which torch cannot hold.") from exc
    else:
        raise TypeError(f"`{name}` must be a torch.Tensor or array-like, got "
                        f"{type(value).__name__}.")
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype if dtype is not None else t.dtype, device=device)
    return t


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """Raise if a floating tensor holds NaN or inf (the first bad index is reported)."""
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"`{name}` must be finite; found {t[first].item()} at index "
                             f"{first} ({int(bad.sum())} non-finite entries in all).")
    return t


def device_memory(device: Any) -> int | None:
    """Bytes of memory of ``device`` (physical RAM for the CPU), or None when unknown."""
    dev = torch.device(device if device is not None else "cpu")
    try:
        if dev.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if dev.type == "cuda":
            return int(torch.cuda.get_device_properties(dev).total_memory)
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None
    return None


def check_memory(what: str, elements: int, itemsize: int, device: Any) -> None:
    """Raise a ValueError before allocating when ``elements`` numbers of ``itemsize`` bytes
    cannot fit in the memory of ``device`` (instead of the allocator's RuntimeError)."""
    total = device_memory(device)
    need = int(elements) * int(itemsize)
    if total is not None and need > total:
        raise ValueError(f"{what} need about {need / 2 ** 30:.4g} GiB, more than the "
                         f"{total / 2 ** 30:.4g} GiB of memory of {torch.device(device or 'cpu')}"
                         "; reduce them.")


def _is_integer(value: Any) -> bool:
    """True for Python and numpy integers and integer 0-d tensors/arrays; False for bools."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim == 0 and (value.dtype in (torch.int8, torch.int16, torch.int32,
                                                    torch.int64, torch.uint8)
                                    or getattr(value.dtype, "kind", "") in "iu")
    return isinstance(value, numbers.Integral)


def check_index(name: str, value: Any, size: int, *, negative: bool = False) -> int:
    """Return ``int(value)`` if it is an integer index into ``size`` items, else raise.

    Python and numpy integers (and integer 0-d arrays/tensors) are accepted; bools, strings
    and floats (even ``2.0``) are refused with a ``TypeError``. ``negative=True`` also accepts
    ``-size .. -1`` (counted from the end) and returns the non-negative index.

    >>> check_index("chain", np.int64(2), 4)
    2
    """
    if not _is_integer(value):
        raise TypeError(f"`{name}` must be an integer index (int or numpy integer), got "
                        f"{_short(value)} of type {type(value).__name__}.")
    v = int(value)
    low = -size if negative else 0
    if not low <= v < size:
        span = f"[{low}, {size - 1}]" if size > 0 else "(none: there are 0 items)"
        raise ValueError(f"`{name}` must be an index in {span}, got {v}.")
    return v + size if v < 0 else v


def check_indices(name: str, value: Any, size: int, *, distinct: bool = True) -> list[int]:
    """Return a list of ints from a sequence of integer indices into ``size`` items.

    Accepts lists, tuples, ranges, integer numpy arrays and tensors (numpy integers inside
    are fine); refuses strings (``'12'`` is not ``[1, 2]``), floats, bools and, with
    ``distinct``, repeated indices.

    >>> check_indices("keep_paths", np.array([0, 2]), 3)
    [0, 2]
    """
    if isinstance(value, (str, bytes)) or _is_integer(value) or not isinstance(
            value, (list, tuple, range, np.ndarray, torch.Tensor)):
        raise TypeError(f"`{name}` must be a sequence of integer indices (list, tuple, range "
                        f"or integer array), got {_short(value)} of type "
                        f"{type(value).__name__}.")
    if isinstance(value, (np.ndarray, torch.Tensor)):
        if value.ndim != 1:
            raise ValueError(f"`{name}` must be one-dimensional, got shape "
                             f"{tuple(value.shape)}.")
        items = list(value)
    else:
        items = list(value)
    out = [check_index(f"{name}[{i}]", v, size) for i, v in enumerate(items)]
    if distinct and len(set(out)) != len(out):
        raise ValueError(f"`{name}` must hold distinct indices, got {out}.")
    return out
