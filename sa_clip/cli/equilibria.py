"""sa-clip equilibria: the zeros of H, their stability and the clipping bias."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_common_options, add_model_options
from .report import table

HELP = "equilibria of H, their stability and clipping bias"
DESCRIPTION = ("Finds zeros of H by root finding from random starts, classifies them by the "
               "eigenvalues of DH (flow -H) and, at stable ones, measures the clipping bias "
               "(the unclipped gradient there and the distance to the unclipped minimiser).")
DEFAULTS: dict[str, Any] = dict(problem="tanh", rule="norm", lam=1.0, eps=1e-3, seed=0,
                                n_starts=24, extent=1.5, max_norm=100.0)
QUICK: dict[str, Any] = dict(n_starts=6)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p, DEFAULTS, QUICK)
    add_model_options(p)
    p.add_argument("--n-starts", type=int, help="root-finding starts (default 24)")
    p.add_argument("--extent", type=float, help="spread of the random starts (default 1.5)")
    p.add_argument("--max-norm", type=float,
                   help="hide equilibria with ||theta|| above this (default 100)")


def main(args: argparse.Namespace) -> int:
    """Table of the zeros of H: position, eigenvalues of DH, kind, and the clipping bias."""
    from ..equilibria import clipping_bias, find_equilibria
    from .builders import build_problem, build_rule, make_field, rule_names

    problem = build_problem(args)
    rule = build_rule(rule_names(args.rule)[0], args)
    field = make_field(problem, rule)
    found = find_equilibria(field, n_starts=args.n_starts, scale=args.extent, seed=args.seed,
                            max_norm=args.max_norm)
    sets = sum(e.is_set for e in found)
    print(f"{problem!r}, {rule}: {len(found)} equilibria from {found.n_starts} starts"
          + (f" ({sets} of them continua of zeros, each reported once)" if sets else ""))
    for line in accounting(found, args):
        print(line)
    rows = []
    for e in found:
        theta = ", ".join(f"{v:.4g}" for v in e.theta.tolist()[:4])
        theta = f"[{theta}{', ...' if problem.P > 4 else ''}]"
        if e.is_set:                                  # a continuum of zeros, reported once
            theta = (f"[{float(e.lower):.4g}, {float(e.upper):.4g}] (interval)" if problem.P == 1
                     else f"set around {theta}, extent {e.extent:.3g}")
        ev = ", ".join(_fmt_complex(v) for v in sorted(e.eigenvalues, key=lambda z: z.real)[:4])
        bias = clipping_bias(field, e.theta) if e.kind == "stable" else None
        rows.append([theta, f"{e.kind} {e.shape}", ev, e.residual, e.switch_margin,
                     e.count, bias.grad_norm if bias else "-", bias.distance if bias else "-"])
    if rows:
        print(table(rows, ["theta*", "kind", "eigenvalues of DH", "||H||", "switch margin",
                           "starts", "||grad L(θ*)||", "dist to unclipped min"]))
    return 0


def accounting(found: Any, args: argparse.Namespace) -> list[str]:
    """Lines saying where the starts went (``found``: the :class:`~sa_clip.Equilibria` of
    :func:`~sa_clip.find_equilibria`): far-out zeros it left out, starts that found none."""
    lines = []
    far = len(found.beyond_max_norm)
    if far:
        lines.append(f"({far} start(s) reached zeros with ||theta|| > {args.max_norm:g}, not "
                     "shown: zeros far out are usually numerical, where saturated activations "
                     "make H vanish; a larger --max-norm shows them)")
    if found.not_converged:
        lines.append(f"({found.not_converged} of {found.n_starts} start(s) converged to no zero "
                     "of H within the root finder's tolerance and iteration limit)")
    if not len(found):
        lines.append(f"0 found: no start converged to a zero with ||theta|| <= "
                     f"{args.max_norm:g}. Try more starts (--n-starts), a wider spread "
                     "(--extent) or a larger --max-norm; a problem whose H has no zero (for "
                     "example a loss without a minimiser) has none to find.")
    return lines


def _fmt_complex(z: complex) -> str:
    return f"{z.real:.3g}" if abs(z.imag) < 1e-12 else f"{z.real:.3g}{z.imag:+.3g}j"
