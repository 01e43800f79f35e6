"""Output folders that are checked before compute, owned by one live run, and complete or
marked.

How ``sa-clip`` writes ``--out DIR`` (commands ``run``, ``portrait``, ``tracking``):

1. Before anything is computed, ``DIR`` is created if needed and checked: a file of that
   name, a folder that cannot be created or written are errors (exit 2).
2. The run takes an exclusive lock on ``DIR/.sa-clip.lock`` (``fcntl.flock``, released by
   the operating system when the process ends, even on ``kill -9``). The lock file is opened
   with ``O_NOFOLLOW`` and must be a regular file: a symbolic link or a FIFO of that name is
   refused, never followed or written through. A second run on the same folder is refused
   while the first is alive; the file is removed when the run ends (a ``kill -9`` leaves it
   behind, unlocked: the next run takes it over).
3. Every file is written into a private staging folder ``DIR/.staging-*`` (each one through a
   unique temporary name and ``os.replace``), so a killed run never touches ``DIR``'s files.
4. At the end the old ``manifest.json`` is removed, the staged files are moved into ``DIR``
   one by one (atomic renames), and a new ``manifest.json`` is written LAST. It lists the files
   of this run, with ``"status": "complete"``. ``DIR`` may still hold files of earlier runs
   that this run did not write: the manifest says which files belong to the run.
5. If the run ends early, every file it finished (all complete files in the staging folder,
   also those written by worker processes whose rule had not reported yet) is moved into
   place, and the manifest says ``"status": "interrupted"`` (SIGINT or SIGTERM, with
   ``"signal"``) or ``"incomplete"`` (an error, with ``"error"``, or rules that failed, with
   ``"failed"``), and lists under ``"missing"`` the files the run meant to write and did not.
   A run that failed before it had written anything (a refused argument) leaves ``DIR`` as
   it was, the previous run's manifest included. A folder without ``manifest.json`` was
   interrupted while files were being moved into place (signals are held off meanwhile).
   Stale staging folders are removed by the next run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any

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
        from .. import distributed

        self.out, self.command, self.option = Path(out), command, option
        self.active = distributed.is_main_process()
        self.staging: Path = self.out
        self.files: list[str] = []
        self.published: list[Path] = []
        #: files the command means to write (:meth:`expect`): a manifest that is not
        #: complete lists those that are missing
        self.expected: list[str] = []
        #: what failed without stopping the run (``{rule: message}``), in the manifest
        self.failed: dict[str, str] = {}
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
        """Take ``DIR/.sa-clip.lock``: a regular file opened without following a link, locked
        with ``flock``; retried if the file was replaced or removed between the open and the
        lock (a run that just ended removes it)."""
        if fcntl is None:                   # pragma: no cover
            return
        path = self.out / LOCK
        flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        for _ in range(100):
            try:
                fd = os.open(path, flags, 0o644)
            except OSError as exc:
                raise CliError(f"`{self.option}` {str(self.out)!r}: its lock file {LOCK} "
                               f"cannot be opened ({exc.strerror or exc}; a symbolic link "
                               f"there is refused): remove {str(path)!r} or choose another "
                               f"`{self.option}`.") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise CliError(f"`{self.option}` {str(self.out)!r}: {LOCK} there is not a "
                               f"regular file (a FIFO or device?): remove {str(path)!r} or "
                               f"choose another `{self.option}`.")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise CliError(f"`{self.option}` {str(self.out)!r} is in use by another "
                               f"sa-clip run (pid {holder}); wait for it to finish or choose "
                               f"another `{self.option}`.") from None
            if _same_file(fd, path):        # still the file at that name: it is ours
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._lock_fd = fd
                return
            os.close(fd)                    # removed or replaced meanwhile: take the new one
        raise CliError(f"`{self.option}` {str(self.out)!r}: its lock file {LOCK} keeps being "
                       f"replaced; is another program using the folder?")

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):  # removed while still locked: no run can
                if _same_file(self._lock_fd, self.out / LOCK):   # take it in between
                    (self.out / LOCK).unlink()
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

    def expect(self, *names: str) -> None:
        """Declare files the command means to write (listed as ``"missing"`` by a manifest
        that is not complete, where they were not written)."""
        self.expected.extend(n for n in names if n not in self.expected)

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
        """Move the staged files into place and write the manifest last (SIGINT and SIGTERM
        are held off meanwhile, so a second Ctrl-C cannot leave a folder without one)."""
        if not self.active:
            return
        with _signals_held():
            try:
                staged = self._staged()
                if error is not None and not staged and not self.failed:
                    return                      # nothing written: DIR stays as it was
                self._publish(staged, error)
            finally:
                shutil.rmtree(self.staging, ignore_errors=True)
                self._unlock()

    def _staged(self) -> list[str]:
        """The complete files in the staging folder: those recorded, in order, then any
        other (written by a worker process whose report never came back); temporary files
        (names starting with a dot) are not complete."""
        try:
            found = {p.name for p in self.staging.iterdir() if p.is_file()
                     and not p.name.startswith(".")}
        except OSError:
            found = set()
        return [n for n in self.files if n in found] + sorted(found - set(self.files))

    def _publish(self, staged: list[str], error: BaseException | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.out / MANIFEST).unlink()
        for name in staged:
            os.replace(self.staging / name, self.out / name)
            self.published.append(self.out / name)
        done = [p.name for p in self.published]
        signum = getattr(error, "signum", signal.SIGINT) if isinstance(
            error, KeyboardInterrupt) else None
        status = ("interrupted" if signum is not None else
                  "incomplete" if error is not None or self.failed else "complete")
        manifest: dict[str, Any] = {"command": self.command, "status": status,
                                    "pid": os.getpid(), "started": self.started,
                                    "finished": _now(), "files": done}
        if status != "complete":
            manifest["missing"] = [n for n in self.expected if n not in done]
        if signum is not None:
            manifest["signal"] = signal.Signals(signum).name
        elif error is not None:
            manifest["error"] = f"{type(error).__name__}: {error}"
        if self.failed:
            manifest["failed"] = dict(self.failed)
        from ..viz._save import write_text_atomic

        write_text_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2))

    def kept(self) -> str:
        """What the folder holds now, in words (for the last line a command prints)."""
        if not self.published:
            return f"{str(self.out)!r} is as it was (nothing was finished)"
        return (f"kept the {len(self.published)} finished file(s) in {str(self.out)!r} "
                f"({MANIFEST} lists them and what is missing)")

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
            kept = self.kept()
        if isinstance(exc, KeyboardInterrupt):
            exc.kept = kept                     # for the one line sa-clip prints
        if isinstance(exc, OSError):
            raise CliError(f"writing to `{self.option}` {str(self.out)!r} failed: "
                           f"{exc.strerror or exc}; {kept}.") from exc
        return False


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the one named ``path`` now (not removed, replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def _signals_held():
    """Hold off SIGINT and SIGTERM in this thread (POSIX); they are delivered on leaving."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):     # pragma: no cover - Windows
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
