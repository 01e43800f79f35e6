"""Cost of ``sa_clip.linear_noise`` against the ODE solve alone, and the accuracy of the two
ways of integrating the continuous form, measured in the same run.

    python benchmarks/bench_linear_noise.py [--quick] [--problem tanh|logistic2d|wine|outliers]
                                            [--steps 600] [--no-joint] [--threads 2]

For one problem and schedule it times (median of repeats after a warm-up):

* ``solve_ode`` alone on the same output times (the baseline of the ratios);
* ``form="discrete"``: the ODE solve plus ``DH`` and ``S`` at every SGD step (batched) and the
  recursion;
* ``form="continuous", integrator="grid"`` (default): the ODE solve on a grid, ``DH`` and ``S``
  batched on it, RK4 for ``V``;
* ``form="continuous", integrator="joint"``: torchdiffeq on the pair ``(theta, V)``, ``DH`` and
  ``S`` one point at a time (slow: ``--no-joint`` skips it);
* ``form="gaussian"`` and ``"gaussian-continuous"``: the Gaussian moment closure, ``H`` and
  ``S`` at every quadrature node per step (or RK4 stage); its lines print the cost against the
  ODE alone and against the first-order discrete form, measured in the same run.

``--problem outliers`` is the case where the first order fails (``examples/linear_noise.py``: a
neuron ``2 tanh(w . x)``, six outliers among 60 samples, the limit beside four clipping
switches, classic clipping lam = 1, constant steps 0.01).

Accuracy of the continuous integrators: relative Frobenius distance, worst over the output
times, to a reference computed with the grid integrator at an eighth of its step (and, as a
check of that reference, the joint integrator at ``rtol=1e-9``). The discrete form is exact
for the linearised recursion up to the ODE tolerance, so it has no discretisation error to
report; its distance to the continuous form (the ``O(a ||J||)`` terms) is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch
from _timing import median_time

import sa_clip as sc


def _outliers():
    spec = importlib.util.spec_from_file_location(
        "linear_noise_example", os.path.join(os.path.dirname(__file__), "..", "examples",
                                             "linear_noise.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.outlier_problem()[0]


PROBLEMS = {
    "tanh": (lambda: sc.problems.tanh_regression(), sc.NormClip(1.0), "power:0.1,0.7"),
    "logistic2d": (lambda: sc.problems.logistic2d(), sc.NormClip(0.5), "power:0.5,0.7"),
    "wine": (lambda: sc.problems.real_problem("wine", hidden=(16,)), sc.NormClip(1.0),
             "power:0.5,0.7"),
    "outliers": (_outliers, sc.NormClip(1.0), "constant:0.01"),
}


def worst_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Worst relative Frobenius distance over times (the first, V = 0, skipped)."""
    num = torch.linalg.matrix_norm(a[1:] - b[1:])
    return float((num / torch.linalg.matrix_norm(b[1:])).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", choices=sorted(PROBLEMS), default="tanh")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--outputs", type=int, default=7, help="output times (incl. tau = 0)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-joint", action="store_true", help="skip the joint integrator")
    ap.add_argument("--quick", action="store_true", help="150 steps, one repeat, no joint")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.outputs, args.no_joint = 150, 1, 4, True
    torch.set_num_threads(args.threads)
    make, rule, spec = PROBLEMS[args.problem]
    p = make()
    field = sc.MeanField(p, rule)
    sched = sc.make_schedule(spec)
    grid = sched.tau(args.steps)
    idx = torch.linspace(0, args.steps, args.outputs).round().long()
    t = grid[idx]
    res: dict[str, sc.LinearNoiseResult] = {}

    def ode():
        res["ode"] = sc.solve_ode(field, p.theta0, t)

    def run(key, **kw):
        def go():
            res[key] = sc.linear_noise(field, sched, p.theta0, t, **kw)
        return go

    cases = {"discrete": {}, "continuous grid": {"form": "continuous"}}
    if not args.no_joint:
        cases["continuous joint"] = {"form": "continuous", "integrator": "joint"}
    cases["gaussian"] = {"form": "gaussian"}
    cases["gaussian-continuous"] = {"form": "gaussian-continuous"}
    t_ode = median_time(ode, args.repeats)
    times = {k: median_time(run(k, **kw), args.repeats) for k, kw in cases.items()}
    step = res["continuous grid"].config["grid_step"]
    t0 = time.perf_counter()
    ref = sc.linear_noise(field, sched, p.theta0, t, form="continuous", grid_step=step / 8)
    t_ref = time.perf_counter() - t0

    print(f"{p!r}, {rule!r}, schedule {spec}, {args.steps} steps (tau in [0, "
          f"{float(t[-1]):.3f}]), {args.outputs} output times, {args.threads} threads")
    print(f"{'':<34} {'time (s)':>9} {'x ODE':>7} {'nfev':>6}  accuracy (worst rel. Frobenius)")
    print(f"{'solve_ode alone':<34} {t_ode:9.3f} {1.0:7.1f} {res['ode'].nfev:6d}")
    for k in cases:
        r = res[k]
        if k == "discrete":
            acc = (f"exact recursion; vs continuous: "
                   f"{worst_rel(r.cov, ref.cov):.2e} (the O(a J) terms)")
        elif k == "continuous grid":
            acc = f"{worst_rel(r.cov, ref.cov):.2e} (grid step {step:.3g} vs {step / 8:.3g})"
        elif k.startswith("gaussian"):
            acc = (f"{times[k] / times['discrete']:.1f}x first order; vs first order "
                   f"{worst_rel(r.cov, res['discrete'].cov):.2e} ({r.config['quadrature']})")
        else:
            acc = f"{worst_rel(r.cov, ref.cov):.2e} (rtol {r.config['rtol']:g})"
        print(f"{'linear_noise ' + k:<34} {times[k]:9.3f} {times[k] / t_ode:7.1f} {r.nfev:6d}"
              f"  {acc}")
    print(f"{'reference (grid/8)':<34} {t_ref:9.3f} {t_ref / t_ode:7.1f} {ref.nfev:6d}")
    if not args.no_joint and not args.quick:
        tight = sc.linear_noise(field, sched, p.theta0, t, form="continuous",
                                integrator="joint", rtol=1e-9, atol=1e-12)
        print(f"check of the reference: joint at rtol 1e-9 ({tight.nfev} evaluations) differs "
              f"by {worst_rel(tight.cov, ref.cov):.2e}")


if __name__ == "__main__":
    main()
