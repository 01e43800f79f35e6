"""Saving and loading results: numpy ``.npz`` arrays plus JSON metadata, atomically, no pickle.

The metadata travel inside the archive as a 0-d unicode array named ``__sa_clip_meta__`` holding
a JSON object with ``"format": "sa_clip"``, ``"format_version"`` and ``"kind"`` (the result type)
beside the caller's keys. Writing goes to a temporary file in the target directory, then
``os.replace``, so a crash never leaves a half-written file under the final name. Loading uses
``np.load(allow_pickle=False)``.

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

import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

FORMAT = "sa_clip"
FORMAT_VERSION = 1
_META = "__sa_clip_meta__"


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
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
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
            meta = json.loads(str(z[_META][()]))
            arrays = {k: z[k] for k in z.files if k != _META}
    except (zipfile.BadZipFile, EOFError, OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"cannot read {path!r}: truncated or not an sa_clip .npz file "
                         f"({type(exc).__name__}: {exc}).") from exc
    except ValueError as exc:
        if str(exc).startswith(repr(path)):
            raise
        raise ValueError(f"cannot read {path!r}: not an sa_clip .npz file ({exc}).") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an sa_clip result file.")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {meta['format_version']}, newer than "
                         f"this sa_clip understands ({FORMAT_VERSION}); upgrade sa_clip.")
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path!r} holds a {meta.get('kind')!r} result, not a {kind!r}.")
    return arrays, meta


__all__ = ["save_npz", "load_npz", "FORMAT_VERSION"]
