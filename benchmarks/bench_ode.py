"""One ODE solve of d theta/d tau = -H(theta): ``sa_clip.solve_ode`` (torchdiffeq dopri5)
against ``scipy.integrate.solve_ivp`` (RK45) wrapping the same field, same tolerances.

    python benchmarks/bench_ode.py [--quick] [--threads 2]

Prints wall time (median of repeats after a warm-up), field evaluations, and the difference of
the two end points.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import median_time
from scipy.integrate import solve_ivp

import sa_clip as sc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--t-end", type=float, default=10.0)
    ap.add_argument("--rtol", type=float, default=1e-7)
    ap.add_argument("--atol", type=float, default=1e-9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.t_end, args.repeats = 1.0, 1
    torch.set_num_threads(args.threads)
    p = sc.problems.real_problem("wine", hidden=(16,))          # the paper's sigmoid network
    field = sc.MeanField(p, sc.NormClip(1.0))
    t = torch.linspace(0.0, args.t_end, 11, dtype=torch.float64)
    out = {}

    def ours():
        out["ours"] = sc.solve_ode(field, p.theta0, t, rtol=args.rtol, atol=args.atol)

    def theirs():
        calls = [0]

        def fun(_tau, y):
            calls[0] += 1
            return -field(torch.from_numpy(y)).numpy()

        sol = solve_ivp(fun, (0.0, args.t_end), p.theta0.numpy(), method="RK45",
                        t_eval=t.numpy(), rtol=args.rtol, atol=args.atol)
        out["scipy"] = (sol, calls[0])

    t_h = median_time(lambda: field(p.theta0), max(args.repeats, 20))
    t_ours = median_time(ours, args.repeats)
    t_scipy = median_time(theirs, args.repeats)
    sol, nfev_scipy = out["scipy"]
    diff = float(np.abs(out["ours"].theta[-1].numpy() - sol.y[:, -1]).max())
    print(f"{p!r}, NormClip(1.0), tau in [0, {args.t_end}], rtol={args.rtol}, atol={args.atol},"
          f" {args.threads} threads")
    print(f"{'solver':<28} {'time (s)':>9} {'nfev':>7}")
    print(f"{'sa_clip.solve_ode dopri5':<28} {t_ours:9.3f} {out['ours'].nfev:7d}")
    print(f"{'scipy solve_ivp RK45':<28} {t_scipy:9.3f} {nfev_scipy:7d}")
    print(f"ratio scipy/ours {t_scipy / t_ours:.2f}x; max |end-point difference| {diff:.2e}")
    per_eval = t_ours / out["ours"].nfev
    print(f"one H(theta0) alone {1e3 * t_h:.3f} ms; solve_ode per evaluation "
          f"{1e3 * per_eval:.3f} ms = {per_eval / t_h:.2f}x one H (the rest is the solver)")


if __name__ == "__main__":
    main()
