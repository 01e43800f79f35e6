"""Parsing and options of the sa-clip command: the parser class, the options several commands
share, reading --config TOML files, and filling and checking the options before any compute.

Precedence of every option: command line > --config file > --quick > the command's default.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ._argparse_compat import option_actions, option_name

PROG = "sa-clip"
DTYPES = ("float32", "float64")
#: defaults every sa_clip command shares (a command's DEFAULTS override them)
BASE_DEFAULTS: dict[str, Any] = dict(device="cpu", dtype="float64", quiet=False, hidden=None,
                                     adaptive_lam=None, samples=None, quick=False, gif=False,
                                     builtin=False, max_nfev=None)
#: options that must be integers >= 1, integers >= 0, and numbers > 0
AT_LEAST_ONE = ("steps", "chains", "batch_size", "record_every", "starts", "tracking_chains",
                "grid", "ode_starts", "n_starts", "frames", "repeats", "noise_steps",
                "checkpoint_every", "samples", "max_nfev", "workers")
AT_LEAST_ZERO = ("noise_chains", "portrait_grid")
POSITIVE = ("horizon", "extent", "ode_time", "max_norm", "lam", "eps", "adaptive_lam")
SEED_MAX = 2 ** 63 - 1
# The parser is built without torch (``sa-clip --help`` and a bad argument answer at once), so
# it names the rules and --clip-per choices from these copies of ``sa_clip.clipping.RULES``
# and ``sa_clip.meanfield.CLIP_PER`` (tests/test_cli_light.py checks they agree); --problem is
# checked against ``sa_clip.problems.PROBLEMS`` itself, after parsing (check_options).
RULE_NAMES = ("adaptive", "layerwise", "none", "norm", "unitwise", "value")
CLIP_PER = ("sample", "batch")


class CliError(Exception):
    """A bad argument found after parsing (one line on stderr, exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports errors on ONE line (no usage block) and exits with 2.

    ``commands`` maps each subcommand name to its own parser (filled by ``build_parser``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def add_common_options(p: argparse.ArgumentParser, d: dict[str, Any],
                       quick: dict[str, Any]) -> None:
    """The options of every sa_clip command (defaults ``d``, ``--quick`` sizes ``quick``); the
    SGD options where ``d`` has ``steps``."""
    g = p.add_argument_group("common options")
    g.add_argument("--problem",
                   help=f"ready-made problem (default {d['problem']}): a 2-parameter toy "
                        "(tanh, logistic2d, ...) or a scikit-learn data set (wine, iris, "
                        "digits, ...) with the paper's sigmoid network; a name that is not "
                        "one is answered with the list")
    g.add_argument("--rule", help=f"clipping rule(s), comma-separated, from {list(RULE_NAMES)} "
                                  f"(default {d['rule']})")
    g.add_argument("--lam", type=float, help=f"clipping threshold lambda (default {d['lam']})")
    g.add_argument("--eps", type=float, help=f"epsilon of the adaptive rules (default "
                                             f"{d['eps']})")
    g.add_argument("--seed", type=int, help=f"random seed, 0 to 2**63-1 (default {d['seed']})")
    g.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    g.add_argument("--dtype", choices=DTYPES, help="float64 (default) or float32")
    g.add_argument("--out", help=f"output folder (default {d.get('out', 'none')})")
    g.add_argument("--config", metavar="FILE.toml",
                   help="read options from a TOML file (keys: long option names); the command "
                        "line wins")
    g.add_argument("--quiet", action="store_true", default=None,
                   help="no progress bars or chatter")
    g.add_argument("--quick", action="store_true", default=None,
                   help="tiny sizes (seconds): " + ", ".join(f"{k}={v}" for k, v in
                                                             quick.items()))
    if "steps" in d:
        g.add_argument("--schedule", help=f"step sizes: constant:A0 | harmonic:A0[,N0] | "
                                          f"power:A0,ALPHA[,N0] (default {d['schedule']})")
        g.add_argument("--steps", type=int, help=f"SGD steps (default {d['steps']})")
        g.add_argument("--batch-size", type=int, help="samples per SGD step (default 1)")
        g.add_argument("--clip-per", choices=list(CLIP_PER),
                       help="clip each sample's gradient (default) or the batch mean")
        g.add_argument("--record-every", type=int,
                       help=f"record every k-th step (default {d['record_every']})")
    if "chains" in d:
        g.add_argument("--chains", type=int, help=f"number of SGD chains (default "
                                                  f"{d['chains']})")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that build a data-set network and may use the adaptive rule."""
    p.add_argument("--hidden", help="hidden layer widths of data-set problems, comma-separated "
                                    "(default 16)")
    p.add_argument("--samples", type=int, help="use only the first N >= 1 samples of the data "
                                               "set")
    p.add_argument("--adaptive-lam", type=float,
                   help="lambda for the adaptive rule (run: default 0.3; else --lam)")


# ---------------------------------------------------------------------------- --config
def read_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Options from a TOML file, keyed by ``dest``. Unknown keys and values of the wrong TOML
    type (``steps = 3.7``, ``quick = "false"``, ``out = 5``) are errors; an integer is
    accepted where a float is expected."""
    try:
        import tomllib
    except ModuleNotFoundError:     # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise CliError(f"`--config` {path!r}: {exc.strerror}.") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"`--config` {path!r} is not UTF-8 text (byte {exc.start}); TOML files "
                       "must be UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"`--config` {path!r} is not valid TOML: {exc}.") from None
    actions = option_actions(parser)
    accepted = sorted(option_name(a)[2:] for d, a in actions.items() if d != "config")
    out = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in actions or dest == "config":
            raise CliError(f"`--config` {path!r}: unknown key {key!r}; accepted keys are "
                           f"{accepted}.")
        if dest in out:                      # batch-size and batch_size: one option
            first = next(k for k in data if k.replace("-", "_") == dest)
            raise CliError(f"`--config` {path!r}: keys {first!r} and {key!r} both set "
                           f"`{option_name(actions[dest])}`; keep one.")
        out[dest] = _config_value(path, key, value, actions[dest])
    return out


def _config_value(path: str, key: str, value: Any, act: argparse.Action) -> Any:
    where = f"`--config` {path!r}: key {key!r} (`{option_name(act)}`)"
    if act.nargs == 0:                                   # a flag such as --quick
        if not isinstance(value, bool):
            raise CliError(f"{where} must be true or false, got {value!r}.")
        return value
    if act.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CliError(f"{where} must be an integer, got {value!r}.")
    elif act.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CliError(f"{where} must be a number, got {value!r}.")
        value = float(value)
    elif not isinstance(value, str):
        raise CliError(f"{where} must be a string, got {value!r}.")
    if act.choices is not None and value not in act.choices:
        raise CliError(f"{where} must be one of {list(act.choices)}, got {value!r}.")
    return value


# ---------------------------------------------------------------------------- resolving
def resolve_options(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    defaults: dict[str, Any], quick: dict[str, Any]) -> argparse.Namespace:
    """Fill unset options (command line > --config > --quick > defaults) and check them all,
    before anything is computed. Raises :class:`CliError` naming the option as typed."""
    cfg = read_config(args.config, parser) if getattr(args, "config", None) else {}
    merged = {**BASE_DEFAULTS, **defaults}
    if "problem" in vars(args):      # a problem's own settings (a CNN: float32, fewer chains)
        from .._run_settings import RUN_SETTINGS
        name = args.problem if args.problem is not None else cfg.get("problem", merged.get(
            "problem"))
        merged.update(RUN_SETTINGS.get(name, {}))
    is_quick = args.quick if getattr(args, "quick", None) is not None else cfg.get("quick",
                                                                                   False)
    from_quick = set()
    for key, value in vars(args).items():
        if value is None:
            if key in cfg:
                value = cfg[key]
            elif is_quick and key in quick:
                value = quick[key]
                from_quick.add(key)
            else:
                value = merged.get(key)
            setattr(args, key, value)
    # --quick's own --tracking-chains follows a smaller --chains the user typed (the user
    # never typed --tracking-chains: no error about it)
    if "tracking_chains" in from_quick and isinstance(getattr(args, "chains", None), int) \
            and args.tracking_chains is not None and args.chains < args.tracking_chains:
        args.tracking_chains = args.chains
    check_options(args, parser)
    # bars on a terminal; elsewhere (a log) only the cost estimates of stages longer than a
    # few seconds (progress=None); --quiet: nothing
    args.progress = False if args.quiet else (True if sys.stderr.isatty() else None)
    return args


def check_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Range checks of the numeric options and the seed (no torch needed), then the schedule,
    the device and the problem (these load torch)."""
    actions = option_actions(parser)

    def name(dest: str) -> str:
        return option_name(actions[dest]) if dest in actions else f"--{dest.replace('_', '-')}"

    for dest in AT_LEAST_ONE + AT_LEAST_ZERO:
        v = getattr(args, dest, None)
        low = 1 if dest in AT_LEAST_ONE else 0
        if v is not None and v < low:
            raise CliError(f"`{name(dest)}` must be an integer >= {low}, got {v}.")
        if v is not None and v > SEED_MAX:
            raise CliError(f"`{name(dest)}` must be an integer from {low} to 2**63-1, got "
                           f"{v} (about {v:.3g}).")
    for dest in POSITIVE:
        v = getattr(args, dest, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise CliError(f"`{name(dest)}` must be a finite number > 0, got {v}.")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise CliError(f"`--seed` must be an integer from 0 to 2**63-1, got {seed}.")
    if getattr(args, "schedule", None) is not None:
        from ..schedules import make_schedule
        try:
            make_schedule(args.schedule)
        except (TypeError, ValueError) as exc:
            raise CliError(f"`--schedule` {args.schedule!r}: "
                           f"{str(exc).replace('`schedule` ', '')}") from None
    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "problem", None) is not None:
        from ..problems import PROBLEMS

        if args.problem not in PROBLEMS:
            raise CliError(f"`--problem` must be one of {sorted(PROBLEMS)}, got "
                           f"{args.problem!r}.")


def check_device(spec: str) -> None:
    """``--device``: cpu, auto, cuda or cuda:N where CUDA is present."""
    if spec in ("cpu", "auto"):
        return
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise CliError(f"`--device` must be cpu, cuda, cuda:N or auto, got {spec!r}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"`--device` {spec!r}: CUDA is not available on this machine (this "
                           "torch build or driver finds no GPU); use --device cpu or auto.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CliError(f"`--device` {spec!r}: there are only "
                           f"{torch.cuda.device_count()} CUDA devices.")
    elif dev.type != "cpu":
        raise CliError(f"`--device` must be cpu, cuda, cuda:N or auto, got {spec!r}.")


def as_typed(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Rewrite ```name``` in a library error to the option as typed (```--name```)."""
    if parser is None:
        return message
    actions = option_actions(parser)
    for dest, act in actions.items():
        message = message.replace(f"`{dest}`", f"`{option_name(act)}`")
    for library, dest in LIBRARY_NAMES.items():    # a library argument under another name
        if dest in actions:
            message = message.replace(f"`{library}`", f"`{option_name(actions[dest])}`")
    return message


#: library argument -> the option that sets it (``--samples`` is the zoo's ``n``)
LIBRARY_NAMES = {"n": "samples"}


def config_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved options, JSON-ready (for summary.json)."""
    skip = ("func", "progress", "command_main")
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in skip}
