"""From checked options to library objects: the problem, the rules, the fields, the chains."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from .. import problems as zoo
from ..clipping import RULES, ClipRule, make_rule
from ..meanfield import MeanField
from ..problem import Problem
from ..sgd import simulate_sgd
from ..trajectory import Trajectory
from .options import CliError

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def build_problem(args: argparse.Namespace, *, min_params: int = 1) -> Problem:
    """The problem named by ``--problem``, in ``--dtype`` on ``--device``; a problem with fewer
    than ``min_params`` parameters is refused before any compute."""
    dtype = DTYPES[args.dtype]
    kwargs: dict[str, Any] = {"dtype": dtype}
    name = args.problem
    hidden = getattr(args, "hidden", None)
    if name in zoo.DATASETS:
        kwargs["hidden"] = hidden_sizes(hidden or "16")
        kwargs["seed"] = args.seed
    elif hidden is not None:
        raise CliError(f"`--hidden` sets the network of the data-set problems "
                       f"({', '.join(sorted(zoo.DATASETS))}); `--problem` {name!r} has its "
                       "own fixed model.")
    if getattr(args, "samples", None):
        # every zoo problem with a sample count takes it (toys too: they generate their data)
        if name not in zoo.DATASETS and "n" not in inspect.signature(
                zoo.PROBLEMS[name]).parameters:
            raise CliError(f"`--samples` does not apply to `--problem` {name!r} (its data are "
                           "fixed).")
        kwargs["n"] = args.samples
    problem = zoo.make_problem(name, **kwargs)
    if problem.P < min_params:
        raise CliError(f"`--problem` {name!r} has P = {problem.P} parameter(s); `{args.command}` "
                       f"needs at least {min_params} (its figures use a plane of parameters).")
    if args.device not in (None, "cpu"):
        problem = problem.to(args.device, dtype)
    return problem


def hidden_sizes(spec: str) -> tuple[int, ...]:
    """``--hidden 32,16`` as ``(32, 16)``."""
    try:
        sizes = tuple(int(s) for s in str(spec).split(",") if s.strip())
    except ValueError:
        raise CliError(f"`--hidden` must be comma-separated layer widths such as 16 or 32,16, "
                       f"got {spec!r}.") from None
    if not sizes or min(sizes) < 1:
        raise CliError(f"`--hidden` must hold widths >= 1, got {spec!r}.")
    return sizes


def rule_names(spec: str) -> list[str]:
    """``--rule norm,adaptive`` as a list of registry names."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    bad = [n for n in names if n not in RULES]
    if not names or bad:
        raise CliError(f"`--rule` must be one or more of {sorted(RULES)} separated by commas, "
                       f"got {spec!r}.")
    return names


def build_rule(name: str, args: argparse.Namespace) -> ClipRule:
    """A clipping rule from its registry name and ``--lam`` / ``--adaptive-lam`` / ``--eps``."""
    lam = args.lam
    if name == "adaptive" and getattr(args, "adaptive_lam", None) is not None:
        lam = args.adaptive_lam
    return make_rule(name, lam=lam, eps=args.eps)


def build_rules(args: argparse.Namespace) -> dict[str, ClipRule]:
    """``{name: rule}`` for every rule of ``--rule``."""
    return {name: build_rule(name, args) for name in rule_names(args.rule)}


def make_field(problem: Problem, rule: ClipRule) -> MeanField:
    """The mean field, sharded over the process group when launched by ``torchrun``."""
    return MeanField(problem, rule, distributed=distributed.is_active())


def checkpoint_dir(args: argparse.Namespace) -> Path | None:
    """``--checkpoint DIR``, or ``OUT/checkpoints`` with ``--resume`` alone, else None."""
    ckpt = getattr(args, "checkpoint", None)
    if ckpt is None and getattr(args, "resume", False):
        ckpt = Path(args.out) / "checkpoints"
    return None if ckpt is None else Path(ckpt)


def run_chains(problem: Problem, rule: ClipRule, args: argparse.Namespace, *,
               chains: int | None = None, steps: int | None = None,
               record_noise: bool = False, field: MeanField | None = None) -> Trajectory:
    """The CLI's clipped-SGD run with the options of ``args`` (one place for all commands)."""
    return simulate_sgd(problem, rule, args.schedule, steps=steps or args.steps,
                        chains=chains or args.chains, batch_size=args.batch_size,
                        clip_per=args.clip_per, seed=args.seed,
                        record_every=args.record_every, record_noise=record_noise,
                        field=field or make_field(problem, rule), progress=args.progress)
