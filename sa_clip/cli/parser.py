"""The sa-clip parser, built from a registry of subcommand modules.

A subcommand is a module with ``add_arguments(parser)`` and ``main(args) -> int`` (and,
optionally, ``HELP`` and ``DESCRIPTION`` strings). sa_clip's own commands also define
``DEFAULTS`` and ``QUICK``: their options are then filled from ``--config`` / ``--quick`` /
defaults and checked before ``main`` runs. Registering another command is one line in
:data:`COMMANDS`, e.g. ``"explore": "sa_clip.viz.explore",``.

The modules of sa_clip's own commands import torch and matplotlib only inside ``main``, so
``sa-clip --help``, ``sa-clip run --help`` and a bad argument answer before torch loads
(tests/test_cli_light.py). A command whose module is heavy to import is listed in
:data:`DEFERRED` with its one-line help: its options are built only when it is the command
being run.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from types import ModuleType

from .options import PROG, Parser

#: subcommand name -> module path, in the order ``--help`` lists them
COMMANDS: dict[str, str] = {
    "run": "sa_clip.cli.run",
    "portrait": "sa_clip.cli.portrait",
    "tracking": "sa_clip.cli.tracking",
    "equilibria": "sa_clip.cli.equilibria",
    "bench": "sa_clip.cli.bench",
    "explore": "sa_clip.viz.explore",
}
#: commands whose module imports torch or matplotlib at import, with the one-line help that
#: ``sa-clip --help`` shows for them (their options are built only when they run)
DEFERRED: dict[str, str] = {
    "explore": "interactive explorer of a 2-parameter problem (sliders, animated chains, D_T)",
}

DESCRIPTION = ("sa-clip: run clipped SGD against its ODE d theta/d tau = -H(theta) and draw "
               "what happens. Options may also come from --config FILE.toml (keys are the long "
               "option names); the command line wins. Bad arguments give one line on stderr "
               "and exit code 2.")


def command_module(name: str) -> ModuleType:
    """The module of subcommand ``name``."""
    return importlib.import_module(COMMANDS[name])


def build_parser(argv: Sequence[str] | None = None) -> Parser:
    """The top-level parser; ``parser.commands[name]`` is each subcommand's parser.

    With ``argv`` (the arguments about to be parsed), a :data:`DEFERRED` command gets its
    options only if ``argv`` names it: ``sa-clip --help`` then imports no heavy module."""
    wanted = _command_in(argv) if argv is not None else None
    ap = Parser(prog=PROG, description=DESCRIPTION,
                epilog="Run `sa-clip SUBCOMMAND --help` for the options of each command.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = ap.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)
    for name in COMMANDS:
        if argv is not None and name in DEFERRED and name != wanted:
            subparsers.add_parser(name, help=DEFERRED[name], add_help=False)
            continue
        module = command_module(name)
        doc = (module.__doc__ or name).strip()
        p = subparsers.add_parser(name, help=getattr(module, "HELP", doc.split("\n")[0]),
                                  description=getattr(module, "DESCRIPTION", doc),
                                  formatter_class=argparse.HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(command_main=module.main)
        ap.commands[name] = p
    return ap


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option (the top-level
    parser's options take no value)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def _version() -> str:
    from .._version import __version__
    return __version__
