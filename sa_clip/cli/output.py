"""Output folders that are checked before compute, owned by one live run, and complete or
marked.

How ``sa-clip`` writes ``--out DIR`` (commands ``run``, ``portrait``, ``tracking``):

1. Before anything is computed, ``DIR`` is created if needed and checked: a file of that
   name, a folder that cannot be created or written are errors (exit 2).
2. The run takes an exclusive lock on ``DIR/.sa-clip.lock`` (``fcntl.flock``, released by
   the operating system when the process ends, even on ``kill -9``). A second run on the same
   folder is refused while the first is alive.
3. Every file is written into a private staging folder ``DIR/.staging-*`` (each one through a
   unique temporary name and ``os.replace``), so a killed run never touches ``DIR``'s files.
4. At the end the old ``manifest.json`` is removed, the staged files are moved into ``DIR``
   one by one (atomic renames), and a new ``manifest.json`` is written LAST. It lists the files
   of this run, with ``"status": "complete"``. ``DIR`` may still hold files of earlier runs
   that this run did not write: the manifest says which files belong to the run.
5. If writing fails (for example a full disk) or the command raises, the files written so far
   are moved into place and the manifest says ``"status": "incomplete"`` with the error; the
   error message says what was kept. A folder without ``manifest.json`` was interrupted
   while files were being moved into place. Stale staging folders are removed by the next run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import distributed
from .options import CliError

MANIFEST = "manifest.json"
LOCK = ".sa-clip.lock"
STAGING_PREFIX = ".staging-"

try:                                    # POSIX; elsewhere runs are not locked (documented)
    import fcntl
except ImportError:                     # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def check_folder(path: str | os.PathLike, option: str) -> Path:
    """Create ``path`` if needed and check that files can be created in it; raise
    :class:`CliError` naming ``option`` otherwise. Returns the path."""
    if not str(path).strip():
        raise CliError(f"`{option}` must name a folder, got an empty string.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CliError(f"`{option}` {str(path)!r} is a file, not a folder: choose a folder "
                       "name.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CliError(f"`{option}` {str(path)!r} cannot be written: "
                       f"{exc.strerror or exc}.") from None
    return path


def jsonable(x: Any) -> Any:
    """``json.dumps`` default: tensors as lists, paths as strings."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class OutputFolder:
    """The ``--out`` folder of one run (see the module docstring for the protocol).

    Use as a context manager after :meth:`open`; :meth:`path` gives where a writer puts a
    file, :meth:`add` records it, and leaving the block publishes the files and the manifest.
    Under ``torchrun`` only rank 0 does any of this.
    """

    def __init__(self, out: str | os.PathLike, command: str, option: str = "--out") -> None:
        if not str(out).strip():              # Path("") would be the current folder
            raise CliError(f"`{option}` must name a folder, got an empty string.")
        self.out, self.command, self.option = Path(out), command, option
        self.active = distributed.is_main_process()
        self.staging: Path = self.out
        self.files: list[str] = []
        self.published: list[Path] = []
        self.started = _now()
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ before compute
    def open(self) -> OutputFolder:
        """Check the folder, take its lock, make the staging folder."""
        if not self.active:
            return self
        check_folder(self.out, self.option)
        self._lock()
        for stale in self.out.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.staging = Path(tempfile.mkdtemp(dir=self.out, prefix=STAGING_PREFIX))
        return self

    def _lock(self) -> None:
        if fcntl is None:                   # pragma: no cover
            return
        fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CliError(f"`{self.option}` {str(self.out)!r} is in use by another sa-clip "
                           f"run (pid {holder}); wait for it to finish or choose another "
                           f"`{self.option}`.") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)             # releases the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ while running
    def path(self, name: str) -> Path:
        """Where to write ``name`` now (inside the staging folder); records it."""
        self.add(name)
        return self.staging / name

    def add(self, name: str) -> None:
        if name not in self.files:
            self.files.append(name)

    def save_figure(self, fig: Any, name: str, **kwargs: Any) -> Path:
        """Save (atomically, into staging) and close ``fig``; return its final path."""
        from ..viz import save_figure

        save_figure(fig, self.staging, name, **kwargs)
        self.add(name)
        return self.out / name

    def save_animation(self, anim: Any, name: str, **kwargs: Any) -> Path:
        from ..viz import save_animation

        save_animation(anim, self.staging / name, **kwargs)
        self.add(name)
        return self.out / name

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Write ``data`` as JSON (atomically, into staging); return its final path."""
        from ..viz._save import write_text_atomic

        if self.active:
            write_text_atomic(self.staging / name, json.dumps(data, indent=2,
                                                              default=jsonable))
        self.add(name)
        return self.out / name

    # ------------------------------------------------------------------ at the end
    def publish(self, error: BaseException | None = None) -> None:
        """Move the staged files into place and write the manifest last."""
        if not self.active:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                (self.out / MANIFEST).unlink()
            for name in self.files:
                src = self.staging / name
                if src.exists():
                    os.replace(src, self.out / name)
                    self.published.append(self.out / name)
            status = "complete" if error is None else "incomplete"
            manifest = {"command": self.command, "status": status, "pid": os.getpid(),
                        "started": self.started, "finished": _now(),
                        "files": [p.name for p in self.published]}
            if error is not None:
                manifest["error"] = f"{type(error).__name__}: {error}"
            from ..viz._save import write_text_atomic

            write_text_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2))
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            self.publish()
            return False
        try:
            self.publish(exc)
        except OSError as second:
            kept = f"could not move the files into place either ({second.strerror or second})"
        else:
            kept = (f"kept the {len(self.published)} file(s) written so far in "
                    f"{str(self.out)!r} ({MANIFEST} lists them, status 'incomplete')")
        if isinstance(exc, OSError):
            raise CliError(f"writing to `{self.option}` {str(self.out)!r} failed: "
                           f"{exc.strerror or exc}; {kept}.") from exc
        return False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
