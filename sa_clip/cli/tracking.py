"""sa-clip tracking: the tracking distance D_T(s) of many chains, per rule."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_common_options, add_model_options
from .output import OutputFolder
from .report import color, label, table

HELP = "tracking distance D_T(s) of many chains"
DESCRIPTION = ("Runs the chains, solves the ODE from every chain's position at each start s "
               "(batched solves) and prints D_T(s); writes tracking.png.")
DEFAULTS: dict[str, Any] = dict(
    problem="logreg", rule="norm", lam=1.0, eps=1e-3, schedule="power:2.0,0.7", steps=400,
    chains=16, batch_size=1, clip_per="sample", seed=0, record_every=2, out="figures/tracking",
    horizon=1.0, starts=6)
QUICK: dict[str, Any] = dict(steps=60, chains=4, starts=3)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p, DEFAULTS, QUICK)
    add_model_options(p)
    p.add_argument("--horizon", type=float, help="T, ODE time (default 1)")
    p.add_argument("--starts", type=int, help="number of start times s (default 6)")


def main(args: argparse.Namespace) -> int:
    """D_T(s) of many chains for each rule: a header, a table and tracking.png."""
    import matplotlib.pyplot as plt
    import torch

    from ..experiment import tracking_in_groups
    from ..viz import plot_tracking
    from .builders import build_problem, build_rules, make_field, run_chains

    problem = build_problem(args)
    rules = build_rules(args)
    with OutputFolder(args.out, "tracking").open() as folder:
        print(f"{problem!r}\nrule(s) {', '.join(str(r) for r in rules.values())}; schedule "
              f"{args.schedule}, {args.steps} steps, {args.chains} chains, horizon T = "
              f"{args.horizon:g}")
        fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        rows = []
        for k, (name, rule) in enumerate(rules.items()):
            field = make_field(problem, rule)
            run = run_chains(problem, rule, args, field=field)
            last = float(run.tau[-1])
            horizon = min(args.horizon, 0.5 * last)
            starts = torch.linspace(0.0, last - horizon, args.starts, dtype=torch.float64)
            res = tracking_in_groups(run, field, horizon=horizon, starts=starts,
                                     progress=args.progress)
            plot_tracking(res, ax, label=label(name), color=color(k))
            rows += [[name, s, m, q] for s, m, q in zip(
                res.start.tolist(), res.median.tolist(), res.quantile(0.9).tolist())]
        print(table(rows, ["rule", "start s", "median D_T", "90% quantile"]))
        print(f"wrote {folder.save_figure(fig, 'tracking.png')}")
    return 0
