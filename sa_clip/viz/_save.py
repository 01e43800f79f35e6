"""Writing figures, animations and small files atomically.

Every file goes to a unique temporary name in its target folder and is then moved into place
with :func:`os.replace`, which is atomic on one file system: a reader (or a second run writing
the same folder) sees either the old complete file or the new complete file, never a torn or
0-byte one, and a process killed mid-write leaves at most a hidden ``.<name>.*.tmp`` file.
Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import distributed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path``; on success move it onto ``path``.

    The temporary name keeps the suffix of ``path`` (writers that pick the format from the
    suffix still work). On an exception the temporary file is removed and ``path`` is left
    as it was.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('hello', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())        # mkstemp makes 0600; give the usual mode
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def figure_of_animation(anim: Any):
    """The figure a matplotlib ``Animation`` draws on.

    matplotlib keeps it in the private attribute ``_fig`` (no public accessor as of 3.10);
    this is the one place sa_clip reads it, so a rename upstream breaks one tested line.
    """
    fig = getattr(anim, "_fig", None)
    if fig is None:
        raise TypeError(f"expected a matplotlib Animation, got {type(anim).__name__}.")
    return fig


def save_figure(fig, out: str | os.PathLike, name: str, *, dpi: int | None = None) -> Path:
    """Save ``fig`` as ``out/name`` atomically (folders created), close it, return the path.

    The format comes from the suffix of ``name``; ``dpi`` defaults to the figure's own (which
    the ``dpi`` argument of every figure function sets). Under ``torchrun`` only rank 0 writes
    (the others only close the figure).

    Example
    -------
    >>> import matplotlib.pyplot as plt, tempfile
    >>> fig, ax = plt.subplots()
    >>> _ = ax.plot([0, 1], [1, 0])
    >>> save_figure(fig, tempfile.mkdtemp(), "line.png").name
    'line.png'
    """
    import matplotlib.pyplot as plt

    path = Path(out) / name
    try:
        if distributed.is_main_process():
            fmt = path.suffix[1:].lower() or None
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=fig.get_dpi() if dpi is None else dpi)
    finally:
        plt.close(fig)
    return path


def save_animation(anim, path: str | os.PathLike, *, fps: int = 12, dpi: int = 80) -> Path:
    """Save a matplotlib animation atomically: ``.gif`` with pillow, ``.mp4`` with ffmpeg
    (which must be installed, otherwise a ``ValueError`` says so). Closes its figure.

    Raises
    ------
    ValueError
        For a suffix other than ``.gif``/``.mp4``, or ``.mp4`` without ffmpeg.
    """
    import matplotlib.pyplot as plt
    from matplotlib import animation

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        writer = animation.PillowWriter(fps=fps)
    elif suffix == ".mp4":
        if not animation.FFMpegWriter.isAvailable():
            raise ValueError(f"saving {str(path)!r} needs ffmpeg, which was not found: install "
                             "it or save a .gif instead.")
        writer = animation.FFMpegWriter(fps=fps)
    else:
        raise ValueError(f"animation path must end in .gif or .mp4, got {str(path)!r}.")
    fig = figure_of_animation(anim)
    try:
        if distributed.is_main_process():
            with atomic_path(path) as tmp:
                anim.save(tmp, writer=writer, dpi=dpi)
    finally:
        plt.close(fig)
    return path


__all__ = ["save_figure", "save_animation", "atomic_path", "write_text_atomic",
           "figure_of_animation"]
