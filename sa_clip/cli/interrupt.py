"""SIGINT and SIGTERM end a command cleanly: one line on stderr, exit code 130 or 143.

While a command runs, both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the
main thread. The output folder (:mod:`~sa_clip.cli.output`) then keeps every finished file
with a manifest that says ``"interrupted"``; worker processes ignore SIGINT (a Ctrl-C reaches
the whole process group: the parent decides) and are killed by the parent on its way out.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

#: the signals that interrupt a command
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a command ran; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` (main thread only;
    elsewhere a no-op; a signal this process ignores, as ``nohup`` or a shell's background
    job sets up, stays ignored); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _raise) for s in SIGNALS
              if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells report it."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def message(exc: KeyboardInterrupt) -> str:
    """The one line printed for an interruption: the signal and what the folder holds."""
    name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    kept = getattr(exc, "kept", None)
    return f"interrupted by {name}" + (f"; {kept}" if kept else "") + "."
