"""sa-clip bench: the benchmark scripts of a source checkout, or a built-in timing."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .options import CliError, add_common_options, add_model_options
from .report import log, table

HELP = "run the benchmarks of a source checkout (or a built-in timing)"
DESCRIPTION = ("Runs benchmarks/bench_*.py --quick, but only from a verified source checkout "
               "of sa-clip (benchmarks/ next to a pyproject.toml naming the project sa-clip and "
               "next to the sa_clip package being run). With --builtin it times the clipped H "
               "against the unclipped one and a plain full-data gradient instead.")
DEFAULTS: dict[str, Any] = dict(problem="wine", rule="norm", lam=1.0, eps=1e-3, chains=64,
                                seed=0, repeats=5)
QUICK: dict[str, Any] = dict(chains=8, repeats=2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p, DEFAULTS, QUICK)
    add_model_options(p)
    p.add_argument("--builtin", action="store_true", default=None,
                   help="the built-in timing (the only choice outside a source checkout)")
    p.add_argument("--repeats", type=int, help="timing repeats (default 5)")


def source_checkout(package_dir: Path | None = None) -> Path:
    """The root of the source checkout that holds the running ``sa_clip`` package.

    Verified: ``ROOT/sa_clip`` is the imported package, ``ROOT/pyproject.toml`` names the
    project ``sa-clip``, and ``ROOT/benchmarks`` is a folder. Raises :class:`CliError`
    otherwise, e.g. for an installed package whose site-packages holds another project's
    ``benchmarks/``.
    """
    pkg = (package_dir or Path(__file__).resolve().parents[1]).resolve()
    root = pkg.parent
    pyproject = root / "pyproject.toml"
    why = None
    if pkg.name != "sa_clip":
        why = f"the package folder {str(pkg)!r} is not named sa_clip"
    elif not pyproject.is_file():
        why = f"there is no pyproject.toml in {str(root)!r} (an installed package?)"
    elif _project_name(pyproject) != "sa-clip":
        why = f"{str(pyproject)!r} does not describe the project sa-clip"
    elif not (root / "benchmarks").is_dir():
        why = f"there is no benchmarks/ folder in {str(root)!r}"
    if why:
        raise CliError(f"`sa-clip bench` runs benchmarks only from a source checkout of sa-clip, "
                       f"and {why}. Use `sa-clip bench --builtin`, or run it from a git "
                       "clone.")
    return root


def _project_name(pyproject: Path) -> str | None:
    try:
        import tomllib
    except ModuleNotFoundError:     # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("project", {}).get("name")
    return re.sub(r"[-_.]+", "-", name).lower() if isinstance(name, str) else None


def main(args: argparse.Namespace) -> int:
    """Run benchmarks/bench_*.py (with --quick) from a verified checkout, else refuse."""
    if args.builtin:
        return builtin(args)
    root = source_checkout()
    for script in sorted((root / "benchmarks").glob("bench_*.py")):
        log(args, f"== {script.name} --quick")
        cmd = [sys.executable, str(script)]
        if "--quick" in script.read_text(encoding="utf-8"):
            cmd.append("--quick")
        proc = subprocess.run(cmd, cwd=root)
        if proc.returncode:
            raise CliError(f"{script.name} failed with exit code {proc.returncode}.")
    return 0


def builtin(args: argparse.Namespace) -> int:
    """Median times of the clipped H, the unclipped H and a plain gradient."""
    import torch

    from ..clipping import make_rule
    from ..meanfield import MeanField
    from .builders import build_problem, build_rule, make_field, rule_names

    problem = build_problem(args)
    rule = build_rule(rule_names(args.rule)[0], args)
    field = make_field(problem, rule)
    plain = MeanField(problem, make_rule("none"))
    thetas = problem.theta0 + 0.01 * torch.randn(
        args.chains, problem.P, generator=torch.Generator().manual_seed(args.seed),
        dtype=torch.float64).to(problem.theta0)
    rows = []
    for what, fn in ((f"H, clipped ({rule})", lambda: field(thetas)),
                     ("H, unclipped (NoClip)", lambda: plain(thetas)),
                     ("gradient, unclipped (Problem.gradient)",
                      lambda: problem.gradient(thetas))):
        rows.append([what, median_time(fn, args.repeats) * 1e3])
    print(f"{problem!r}, K = {args.chains} parameter vectors, median of {args.repeats}")
    print(table(rows, ["computation", "ms"]))
    return 0


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
