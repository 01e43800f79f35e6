"""The sa-clip parser, built from a registry of subcommand modules.

A subcommand is a module with ``add_arguments(parser)`` and ``main(args) -> int`` (and,
optionally, ``HELP`` and ``DESCRIPTION`` strings). sa_clip's own commands also define
``DEFAULTS`` and ``QUICK``: their options are then filled from ``--config`` / ``--quick`` /
defaults and checked before ``main`` runs. Registering another command is one line in
:data:`COMMANDS`, e.g. ``"explore": "sa_clip.viz.explore",``.
"""

from __future__ import annotations

import argparse
import importlib
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

DESCRIPTION = ("sa-clip: run clipped SGD against its ODE d theta/d tau = -H(theta) and draw "
               "what happens. Options may also come from --config FILE.toml (keys are the long "
               "option names); the command line wins. Bad arguments give one line on stderr "
               "and exit code 2.")


def command_module(name: str) -> ModuleType:
    """The module of subcommand ``name``."""
    return importlib.import_module(COMMANDS[name])


def build_parser() -> Parser:
    """The top-level parser; ``parser.commands[name]`` is each subcommand's parser."""
    ap = Parser(prog=PROG, description=DESCRIPTION,
                epilog="Run `sa-clip SUBCOMMAND --help` for the options of each command.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = ap.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)
    for name in COMMANDS:
        module = command_module(name)
        doc = (module.__doc__ or name).strip()
        p = subparsers.add_parser(name, help=getattr(module, "HELP", doc.split("\n")[0]),
                                  description=getattr(module, "DESCRIPTION", doc),
                                  formatter_class=argparse.HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(command_main=module.main)
        ap.commands[name] = p
    return ap


def _version() -> str:
    from .._version import __version__
    return __version__
