"""The one place the CLI reads argparse internals.

argparse has no public way to list a parser's options; ``ArgumentParser._actions`` has held
them since Python 2.7. If a future Python renames it, only this function (and its test in
``tests/test_cli.py``) changes.
"""

from __future__ import annotations

import argparse


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{dest: Action}`` for every optional argument of ``parser`` except ``--help``."""
    actions = getattr(parser, "_actions", None)
    if actions is None:             # pragma: no cover - only on an argparse without _actions
        raise RuntimeError("this Python's argparse has no `_actions`; sa_clip.cli needs an "
                           "update (sa_clip/cli/_argparse_compat.py).")
    return {a.dest: a for a in actions if a.option_strings and a.dest != "help"}


def option_name(action: argparse.Action) -> str:
    """The option as a user types it: the first long form (``--batch-size``)."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings)[0]
