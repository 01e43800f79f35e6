"""The ``sa-clip`` command: run clipped SGD against its ODE and draw what happens.

Subcommands (``sa-clip SUBCOMMAND --help`` for each): ``run`` (the main job: ODE vs many
SGD chains, tracking, figures and summary.json), ``portrait``, ``tracking``, ``equilibria``
and ``bench``.

Layout of this package:

* :mod:`~sa_clip.cli.options`  the parser class, shared options, ``--config`` and checks;
* :mod:`~sa_clip.cli.parser`   the registry of subcommands and :func:`build_parser`;
* :mod:`~sa_clip.cli.builders` problem, rules, fields and chains from the options;
* :mod:`~sa_clip.cli.output`   output folders (checked, locked, staged, manifest last);
* :mod:`~sa_clip.cli.report`   tables, the problem as fields, stage timings;
* one module per subcommand: ``run``, ``portrait``, ``tracking``, ``equilibria``, ``bench``.

Library users call :func:`sa_clip.run_experiment` (what ``run`` computes) and
:func:`sa_clip.viz.save_figure` directly; nothing here is needed outside the command line.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from . import interrupt
from .interrupt import interruptible
from .options import PROG, CliError, as_typed, resolve_options
from .parser import COMMANDS, build_parser, command_module

#: commands that open a window: they keep matplotlib's backend (MPLBACKEND or its default)
WINDOWED = {"explore"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sa-clip`` console script; returns the exit code.

    Parsing and the checks of the options import neither torch nor matplotlib: ``--help``
    and a bad argument answer at once; the command loads them when it runs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command_parser = parser.commands[args.command]
    with interruptible():
        try:
            return _run(args, command_parser)
        except KeyboardInterrupt as exc:        # SIGINT or SIGTERM: one line, 130 or 143
            print(f"{PROG}: {interrupt.message(exc)}", file=sys.stderr)
            return interrupt.exit_code(exc)


def _run(args, command_parser) -> int:
    module = command_module(args.command)
    started = False
    try:
        if hasattr(module, "DEFAULTS"):
            args = resolve_options(args, command_parser, module.DEFAULTS,
                                   getattr(module, "QUICK", {}))
        if args.command not in WINDOWED:
            _figures_to_files()                    # files only: never a window
        from .. import distributed

        started = distributed.init_from_env()      # under torchrun: shard H over the ranks
        if not distributed.is_main_process():      # one rank prints and writes files
            args.quiet, args.progress = True, False
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                return args.command_main(args)
        return args.command_main(args)
    except (CliError, ValueError, TypeError, OSError) as exc:
        text = str(exc) if not isinstance(exc, OSError) or not exc.strerror else (
            f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror)
        msg = " ".join(as_typed(text, command_parser).split())
        print(f"{PROG}: error: {msg} (see `{PROG} {args.command} --help`)", file=sys.stderr)
        return 2
    finally:
        if started:
            import torch
            torch.distributed.destroy_process_group()


def _figures_to_files() -> None:
    """The commands write figures to files: matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")


def console() -> None:
    """The ``sa-clip`` console script (and ``python -m sa_clip.cli``): :func:`main`, then exit
    at once with its code. The command has written and closed its files by then; the
    interpreter's own teardown (freeing every module of torch, matplotlib and scipy one object
    at a time) would add about a second to every command without doing anything useful. An
    exception leaves the normal way, with its traceback."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = ["main", "console", "build_parser", "CliError", "COMMANDS", "PROG"]
