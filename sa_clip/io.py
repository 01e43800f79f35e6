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
import hashlib
import json
import os
import platform
import tempfile
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


def content_digest(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of the arrays (name, dtype, shape and bytes, in name order) and of the
    metadata (canonical JSON, sorted keys, without its ``"digest"`` entry).

    Stored as ``meta["digest"]`` by :func:`save_npz` and checked by :func:`load_npz`: any change
    to the numbers or the metadata after writing (a corrupted byte, an edited value) is caught.
    It is a checksum, not a signature: whoever edits a file on purpose can recompute it.
    """
    h = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != "digest"}
    h.update(json.dumps(body, sort_keys=True, allow_nan=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.reshape(-1).view(np.uint8).data if a.dtype.itemsize else b"")
    return "sha256:" + h.hexdigest()


def save_npz(path: str | os.PathLike, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``arrays`` (name -> array-like, ``None`` values skipped) and JSON-serialisable
    ``meta`` to ``path`` atomically, with a content digest (:func:`content_digest`) in the
    metadata. Torch tensors are converted with ``.cpu().numpy()``."""
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
    full = json.loads(json.dumps(full, allow_nan=True))    # exactly what a reader will see
    full.pop("digest", None)
    full["digest"] = content_digest(out, full)
    out[_META] = np.array(json.dumps(full, allow_nan=True))
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"`path` = {path!r}: its folder {directory!r} does not exist; create it "
                         "first.")
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


class _FileError(ValueError):
    """A ValueError whose message already names the file."""


def _read(path: str) -> tuple[dict[str, np.ndarray], Any]:
    """The arrays and the parsed metadata of an .npz archive; _FileError for what is wrong."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise _FileError(f"`path` = {path!r} is a single .npy array; an sa_clip result file is "
                         f"an .npz archive (written by the result's save() or io.save_npz).")
    if magic[:2] != b"PK":
        raise _FileError(f"cannot read {path!r}: truncated or not an sa_clip .npz file (it "
                         f"does not start like a zip archive).")
    with np.load(path, allow_pickle=False) as z:
        if _META not in z.files:
            raise _FileError(f"{path!r} is an .npz archive but not an sa_clip result "
                             f"(no {_META!r} entry).")
        raw = z[_META]
        if raw.shape != () or raw.dtype.kind != "U":
            raise _FileError(f"{path!r}: the metadata entry {_META!r} is not a JSON string "
                             f"(dtype {raw.dtype}, shape {raw.shape}).")
        try:
            meta = json.loads(str(raw[()]))
        except ValueError as exc:   # JSONDecodeError, and bad unicode escapes
            raise _FileError(f"cannot read {path!r}: its metadata is not valid JSON ({exc})."
                             ) from exc
        arrays = {k: z[k] for k in z.files if k != _META}
    return arrays, meta


def load_npz(path: str | os.PathLike, kind: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_npz`: ``(arrays, meta)``.

    Every failure to read is a ``ValueError`` naming the file: truncated or corrupted (whatever
    the zip, npy or JSON reader raised: ``BadZipFile``, ``NotImplementedError`` for an unknown
    compression, ``RuntimeError`` for an "encrypted" entry, ``tokenize.TokenError``, ...), a
    ``.npy`` file or anything else that is not an ``.npz`` archive, not written by sa_clip, of
    a newer format version, (with ``kind``) of another result type, or whose content digest
    does not match (an array or a metadata value changed after writing). A missing file is a
    ``FileNotFoundError``.
    """
    try:
        path = os.fspath(path)
    except TypeError as exc:
        raise TypeError(f"`path` must be a file path (str or os.PathLike), got {path!r}."
                        ) from exc
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"`path` = {path!r} is a directory, not an sa_clip .npz file.")
    try:
        arrays, meta = _read(path)
    except _FileError as exc:
        raise ValueError(str(exc)) from exc.__cause__
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:   # noqa: BLE001 - a corrupted archive can raise almost anything
        raise ValueError(f"cannot read {path!r}: truncated, corrupted or not an sa_clip .npz "
                         f"file ({type(exc).__name__}: {exc}).") from exc
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
    if "digest" in meta:
        stored = meta["digest"]
        if not isinstance(stored, str) or not stored.startswith("sha256:"):
            raise ValueError(f"{path!r}: its metadata 'digest' is {stored!r}, expected "
                             f"'sha256:<64 hex digits>'.")
        try:
            computed = content_digest(arrays, meta)
        except Exception as exc:   # noqa: BLE001 - an array numpy can load but not view
            raise ValueError(f"{path!r}: cannot compute its content digest ({type(exc).__name__}"
                             f": {exc}).") from exc
        if computed != stored:
            raise ValueError(f"{path!r}: content digest mismatch (stored {stored[:19]}..., "
                             f"computed {computed[:19]}...): the file was corrupted or edited "
                             f"after it was written.")
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


def check_increasing(path: str | os.PathLike, name: str, a: np.ndarray, *, strict: bool = True,
                     minimum: float | None = None) -> np.ndarray:
    """Return the 1-d array ``a`` (array ``name`` of file ``path``) after checking that it is
    finite, (strictly, by default) increasing and ``>= minimum``; a ``ValueError`` names the
    file, the array and the first offending entry. Used on load for times (``tau``, ``t``) and
    step numbers, whose order the rest of the code relies on."""
    where = os.fspath(path)
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{where!r}: array {name!r} must be finite, found {a[bad[0]]} at "
                             f"index {int(bad[0])}.")
    if minimum is not None and a.size and a.min() < minimum:
        i = int(np.argmin(a))
        raise ValueError(f"{where!r}: array {name!r} must be >= {minimum}, found {a[i]} at "
                         f"index {i}.")
    d = np.diff(a)
    bad = np.flatnonzero(d <= 0 if strict else d < 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where!r}: array {name!r} must be {'strictly ' if strict else ''}"
                         f"increasing, found {a[i]} then {a[i + 1]} at indices {i}, {i + 1}.")
    return a


def check_blowups(path: str | os.PathLike, blowup_step: np.ndarray, last_step: int,
                  alive: np.ndarray | None = None) -> np.ndarray:
    """Return ``blowup_step`` after checking each entry is ``-1`` (never blew up) or a step in
    ``[1, last_step]``, and (when given) that ``alive`` is exactly ``blowup_step == -1``; a
    ``ValueError`` names the file and the first inconsistent chain. For trajectories and SGD
    checkpoints (``last_step``: the steps done)."""
    where = os.fspath(path)
    blow = np.asarray(blowup_step)
    bad = np.flatnonzero((blow != -1) & ((blow < 1) | (blow > last_step)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where!r}: 'blowup_step' of chain {i} is {blow[i]}, expected -1 "
                         f"(never blew up) or a step in [1, {last_step}].")
    if alive is not None:
        alive = np.asarray(alive)
        if alive.shape != blow.shape or alive.dtype.kind != "b":
            raise ValueError(f"{where!r}: 'alive' must be a bool array of shape {blow.shape}, "
                             f"got {alive.dtype} {alive.shape}.")
        bad = np.flatnonzero(alive != (blow == -1))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{where!r}: chain {i} is {'alive' if alive[i] else 'dead'} but "
                             f"its blow-up step is {blow[i]}; the file is inconsistent.")
    return blow


__all__ = ["save_npz", "load_npz", "check_array", "check_increasing", "check_blowups",
           "content_digest", "versions", "FORMAT_VERSION"]
