"""Run independent jobs in forked worker processes, one torch thread each.

The stages of one clipping rule (a few thousand small SGD steps, a few hundred ODE right-hand
sides of a few dozen parameter vectors each) are too small for torch's intra-op threads: two
threads run them hardly faster than one, and Python threads serialise on the GIL between the
tiny operations. Separate processes do not. :func:`run_jobs` forks one process per job (at
most ``workers`` at a time), so the children share the parent's imported libraries and data
pages (copy-on-write) instead of importing torch again; each child runs its job with ONE
torch thread and sends the result back pickled through a pipe (tensors by value).

One thread, always: torch's CPU builds run their parallel regions on GNU OpenMP, whose thread
pool does not survive ``fork``. A child that starts a parallel region with two or more threads
after the parent has used the pool waits forever for threads that exist only in the parent
(``tests/test_workers.py`` shows it in a subprocess); with one thread torch never enters one.

:func:`sa_clip.run_experiment` uses it when given ``workers > 1`` (``sa-clip run`` passes one
worker per rule and core by default), and only where ``fork`` exists and is safe (see
:func:`fork_available`).
"""

from __future__ import annotations

import functools
import gc
import io
import os
import pickle
import signal
import struct
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: exit code of a worker whose job raised (its exception is sent to the parent first)
JOB_FAILED = 3
#: prctl option: the signal a process gets when its parent dies (Linux)
PR_SET_PDEATHSIG = 1


class WorkerError(RuntimeError):
    """A job failed in its worker process in a way that has no exception of its own."""


class WorkerDied(WorkerError):
    """A worker process died without sending its job's result (killed, out of memory)."""


def check_workers(workers: Any) -> int:
    """``workers`` if it is a positive integer (not a bool), else a ``ValueError`` naming it.

    >>> check_workers(2)
    2
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be a positive integer, got {workers!r}.")
    return workers


def fork_available() -> tuple[bool, str]:
    """``(True, "")`` where jobs may run in forked processes; otherwise ``(False, why)``.

    Fork needs a POSIX system, and must not follow CUDA's initialisation (a forked child
    cannot use the parent's CUDA context) or run inside a ``torch.distributed`` process group.
    """
    import torch

    if not hasattr(os, "fork") or sys.platform == "darwin":
        return False, "this platform has no safe fork (macOS, Windows)"
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return False, "CUDA is initialised in this process (a forked child cannot use it)"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False, "a torch.distributed process group is active"
    return True, ""


@functools.lru_cache(maxsize=1)
def _numpy_dtypes() -> frozenset[Any]:
    """torch dtypes that ``Tensor.numpy()`` supports (bfloat16 and the like are not)."""
    import torch

    return frozenset({torch.float16, torch.float32, torch.float64, torch.complex64,
                      torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64,
                      torch.uint8, torch.bool})


class _Pickler(pickle.Pickler):
    """Pickles contiguous CPU tensors as numpy arrays, whose data go out of band (protocol
    5): the worker writes each array's memory straight into the pipe and the parent reads it
    into the one buffer the rebuilt tensor uses, instead of a pickle string holding copies.
    Other tensors (views, bfloat16, CUDA) take torch's own pickling."""

    def reducer_override(self, obj: Any) -> Any:
        import torch

        if (type(obj) is torch.Tensor and obj.device.type == "cpu" and not obj.requires_grad
                and obj.dtype in _numpy_dtypes() and obj.is_contiguous()):
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented


def _dumps(obj: Any) -> list[Any]:
    """``[pickle stream, buffer, ...]`` of ``obj`` (protocol 5, out-of-band arrays)."""
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
    return [stream.getbuffer(), *(b.raw() for b in buffers)]


def _send(fd: int, parts: list[Any]) -> None:
    """Frame: the number of parts, each part's length (8 bytes each), then the parts."""
    views = [memoryview(p).cast("B") for p in parts]
    header = struct.pack(f"<{len(views) + 1}Q", len(views), *(v.nbytes for v in views))
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(header)
        for v in views:
            pipe.write(v)


def _read_exactly(pipe: Any, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = pipe.readinto(view[got:])
        if not k:
            raise EOFError
        got += k
    return buf


def _receive(fd: int) -> Any:
    """The object a worker sent with :func:`_send` (read whole: the worker is done), or
    ``None`` if it sent nothing (it died); EOF inside a message is an error too."""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        try:
            head = pipe.read(8)
            if not head:
                return None
            (n,) = struct.unpack("<Q", head)
            sizes = struct.unpack(f"<{n}Q", _read_exactly(pipe, 8 * n))
            parts = [_read_exactly(pipe, k) for k in sizes]
        except EOFError:
            return None
    return pickle.loads(parts[0], buffers=parts[1:])


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel kill this worker when its parent dies (a killed ``sa-clip
    run`` leaves no workers computing on); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:          # the parent died before the prctl took effect
        os._exit(JOB_FAILED)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a :class:`WorkerError` carrying its
    class name and message (a class defined in a function, or one whose ``__init__`` takes
    other arguments than its ``args``, cannot be rebuilt in the parent: its message would be
    lost)."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
        return exc
    except Exception:
        cls = type(exc)
        return WorkerError(f"{cls.__module__}.{cls.__qualname__}: {exc}")


def _child(job: Callable[[], Any], write_fd: int, parent: int) -> None:
    """Body of a forked worker: run ``job`` and send ``(ok, payload)``; never returns."""
    code = 0
    try:
        # the parent decides what an interruption means: Ctrl-C (SIGINT to the whole process
        # group) is the parent's to handle, it then ends the workers; SIGTERM ends a worker
        # at once (not through a handler the parent installed, which would raise in the job)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent(parent)
        import torch

        torch.set_num_threads(1)            # see the module docstring: OpenMP after fork
        try:
            payload = (True, job())
        except BaseException as exc:                    # sent to the parent, re-raised there
            payload = (False, (_portable(exc), traceback.format_exc()))
            code = JOB_FAILED
        try:
            parts = _dumps(payload)
        except Exception as exc:                        # an unpicklable result or exception
            parts = _dumps((False, (TypeError(f"the job's result cannot be sent back: {exc}"),
                                    traceback.format_exc())))
            code = JOB_FAILED
        _send(write_fd, parts)
    except BaseException:                               # nothing can be reported any more
        code = JOB_FAILED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)                                  # no atexit handlers of the parent


def run_jobs(jobs: Sequence[tuple[str, Callable[[], Any]]], *, workers: int,
             keep_going: bool = False) -> Iterator[tuple[str, Any]]:
    """Run each ``(name, job)`` in its own forked process, at most ``workers`` at a time;
    yield ``(name, result)`` in the order of ``jobs`` as soon as each (and those before it)
    is done.

    ``job`` is called without arguments in the child (a closure: with fork it needs no
    pickling), with one torch thread; its result must pickle. CPU tensors in it come back
    without a copy in a pickle string (their memory is written to the pipe and read into the
    tensor's own buffer). An exception in a job is raised here with the child's traceback
    attached as a note; a child that dies without a result (a signal, running out of memory)
    raises :class:`WorkerDied` (a :class:`WorkerError`) naming the job and its exit status.
    On any error the other children are killed; results already yielded are the caller's.
    With ``keep_going=True`` a job whose worker died is yielded as ``(name, WorkerDied(...))``
    instead and the other jobs go on: one killed worker costs only its own job. An
    interruption (``KeyboardInterrupt`` in the calling process) kills the running workers.

    Example
    -------
    >>> dict(run_jobs([("a", lambda: 1 + 1), ("b", lambda: "x" * 3)], workers=2))
    {'a': 2, 'b': 'xxx'}
    """
    import selectors

    check_workers(workers)
    pending = list(enumerate(jobs))
    running: dict[int, tuple[int, str, int]] = {}       # read fd -> (index, name, pid)
    done: dict[int, Any] = {}
    next_out = 0
    sel = selectors.DefaultSelector()
    parent = os.getpid()
    # objects that exist now are never collected in a child: without this, the first
    # collection there writes to every object's header and copies the parent's heap
    gc.freeze()
    try:
        while pending or running:
            while pending and len(running) < workers:
                i, (name, job) = pending.pop(0)
                r, w = os.pipe()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:                            # the child
                    os.close(r)
                    _child(job, w, parent)
                os.close(w)
                running[r] = (i, name, pid)
                sel.register(r, selectors.EVENT_READ)
            for key, _ in sel.select():
                i, name, pid = running.pop(key.fd)
                sel.unregister(key.fd)
                message = _receive(key.fd)             # closes the fd
                _, status = os.waitpid(pid, 0)
                try:
                    done[i] = _result(name, message, status)
                except WorkerDied as exc:
                    if not keep_going:
                        raise
                    done[i] = exc
            while next_out in done:
                yield jobs[next_out][0], done.pop(next_out)
                next_out += 1
    finally:
        for fd, (_, _, pid) in running.items():         # an error or an abandoned generator
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            sel.unregister(fd)
            os.close(fd)
        sel.close()
        gc.unfreeze()


def _result(name: str, message: Any, status: int) -> Any:
    """The job's result from the message its worker sent, or the error it raised."""
    code = os.waitstatus_to_exitcode(status)
    if message is None:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        raise WorkerDied(f"the worker process of job {name!r} died without a result: "
                          f"{how}{hint}.")
    ok, payload = message
    if ok:
        return payload
    exc, text = payload
    if isinstance(exc, BaseException):
        exc.add_note(f"raised in the worker process of job {name!r}:\n{text}")
        raise exc
    raise WorkerError(f"job {name!r} failed in its worker process:\n{text}")


__all__ = ["run_jobs", "fork_available", "check_workers", "WorkerError", "WorkerDied"]
