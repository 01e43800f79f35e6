"""Saving and loading results: numpy ``.npz`` arrays plus JSON metadata, atomically, no pickle.

The metadata travel inside the archive as a 0-d unicode array named ``__sa_clip_meta__`` holding
a JSON object with ``"format": "sa_clip"``, ``"format_version"``, ``"kind"`` (the result type),
``"created"`` (UTC, ISO 8601) and ``"versions"`` (sa_clip, torch, numpy, python) beside the
caller's keys (``"config"``, ``"seed"``, ...); the full format is in ``docs/format.md``.
Writing goes to a temporary file in the target directory, then ``os.replace``, so a crash never
leaves a half-written file under the final name. Loading uses ``np.load(allow_pickle=False)``.

Example
-------
>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "r.npz")
>>> save_npz(path, {"x": np.arange(3)}, {"kind": "Demo", "note": "hi"})
>>> arrays, meta = load_npz(path, kind="Demo")
>>> arrays["x"].tolist(), meta["note"]
([0, 1, 2], 'hi')
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._version import __version__

FORMAT = "sa_clip"
FORMAT_VERSION = 1
_META = "__sa_clip_meta__"


def versions() -> dict[str, str]:
    """Versions recorded in every result file: sa_clip, torch, numpy, python."""
    import torch

    return {"sa_clip": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save_npz(path: str | os.PathLike, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``arrays`` (name -> array-like, ``None`` values skipped) and JSON-serialisable
    ``meta`` to ``path`` atomically. Torch tensors are converted with ``.cpu().numpy()``."""
    path = os.fspath(path)
    if _META in arrays:
        raise ValueError(f"`arrays` must not use the reserved name {_META!r}.")
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if value is None:
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        a = np.asarray(value)
        if a.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which cannot be saved without "
                            "pickle.")
        out[name] = a
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": _now(),
            "versions": versions(), **meta}
    out[_META] = np.array(json.dumps(full, allow_nan=True))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path: str | os.PathLike, kind: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_npz`: ``(arrays, meta)``.

    Raises ``ValueError`` naming the file when it is truncated, not an ``.npz`` archive, not
    written by sa_clip, of a newer format version, or (with ``kind``) of another result type.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if _META not in z.files:
                raise ValueError(f"{path!r} is an .npz archive but not an sa_clip result "
                                 f"(no {_META!r} entry).")
            raw = z[_META]
            if raw.shape != () or raw.dtype.kind != "U":
                raise ValueError(f"{path!r}: the metadata entry {_META!r} is not a JSON string "
                                 f"(dtype {raw.dtype}, shape {raw.shape}).")
            meta = json.loads(str(raw[()]))
            arrays = {k: z[k] for k in z.files if k != _META}
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot read {path!r}: its metadata is not valid JSON ({exc}).") from exc
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"cannot read {path!r}: truncated or not an sa_clip .npz file "
                         f"({type(exc).__name__}: {exc}).") from exc
    except ValueError as exc:
        if str(exc).startswith(repr(path)):
            raise
        raise ValueError(f"cannot read {path!r}: not an sa_clip .npz file ({exc}).") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an sa_clip result file.")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path!r} has an invalid format version {version!r} (expected an "
                         f"integer in [1, {FORMAT_VERSION}]).")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {version}, newer than "
                         f"this sa_clip understands ({FORMAT_VERSION}); upgrade sa_clip.")
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path!r} holds a {meta.get('kind')!r} result, not a {kind!r}.")
    return arrays, meta


def check_array(path: str | os.PathLike, arrays: dict[str, np.ndarray], name: str, *,
                kinds: str = "f", shape: Sequence[int | None] | None = None,
                optional: bool = False) -> np.ndarray | None:
    """Return ``arrays[name]`` after checking its dtype kind (numpy ``dtype.kind`` letters:
    ``"f"`` float, ``"i"`` signed int, ``"b"`` bool, ``"u"`` unsigned) and ``shape`` (``None``
    entries match any length); a ``ValueError`` names the file, the array and the problem."""
    where = os.fspath(path)
    a = arrays.get(name)
    if a is None:
        if optional:
            return None
        raise ValueError(f"{where!r} is missing the array {name!r}.")
    if a.dtype.kind not in kinds:
        raise ValueError(f"{where!r}: array {name!r} has dtype {a.dtype}, expected kind "
                         f"{kinds!r}.")
    if shape is not None and (a.ndim != len(shape) or any(
            s is not None and s != d for s, d in zip(shape, a.shape))):
        want = ", ".join("*" if s is None else str(s) for s in shape)
        want = f"({want},)" if len(shape) == 1 else f"({want})"
        raise ValueError(f"{where!r}: array {name!r} has shape {a.shape}, expected {want}.")
    return a


__all__ = ["save_npz", "load_npz", "check_array", "versions", "FORMAT_VERSION"]
