"""(L0, L1)-smooth x^4: clipped GD beats fixed-step GD from far starts.

The quartic double well l_i = (theta^2 - x_i)^2 / 4 (zoo "quartic") has curvature growing like
3 theta^2, so it is (L0, L1)-smooth but not L-smooth. Full-batch gradient descent with a fixed
step a diverges from |theta| > sqrt(2/a + 1); with a step small enough to be safe from the
farthest start it crawls near the minimum. Clipped GD (clip the full gradient at lam) moves at
most a lam per step from far away and converges at the same step a. The table gives the
iterations to reach |theta - theta*| < tol from each start distance.

    python examples/quartic_l0l1.py   # figures/quartic_l0l1.png, about 11 s CPU
    python examples/quartic_l0l1.py --starts 2 8 32 128 --steps 4000
"""

from __future__ import annotations

import argparse
import warnings

import torch

import sa_clip as sc
from sa_clip.viz import add_figure_options, save_figure, styled, subplots


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=float, nargs="+", default=[1.5, 3, 6, 12, 24, 48])
    ap.add_argument("--step", type=float, default=0.1, help="fixed step a")
    ap.add_argument("--lam", type=float, default=1.0, help="clipping threshold")
    ap.add_argument("--steps", type=int, default=700, help="iteration budget")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--out", default="figures", help="folder for quartic_l0l1.png")
    add_figure_options(ap)
    return ap.parse_args(argv)


def iterations_to_tol(run: sc.Trajectory, theta_star: float, tol: float) -> list[float]:
    """First recorded step with |theta| within tol of theta* (inf: never, or blew up)."""
    err = (run.theta[..., 0].abs() - theta_star).abs()
    hit = err < tol
    first = torch.where(hit.any(1), hit.to(torch.int8).argmax(1).double(),
                        torch.tensor(float("inf"), dtype=torch.float64))
    return run.steps.double()[first.clamp(max=run.records - 1).long()].where(
        torch.isfinite(first), first).tolist()


def main(argv=None):
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace):
    p = sc.problems.quartic()
    theta_star = float(p.y.mean()) ** 0.5            # zero of theta (theta^2 - mean x)
    th0 = torch.tensor(args.starts, dtype=p.dtype)[:, None]
    safe = 1.0 / (3 * max(args.starts) ** 2 + 1)     # below 2 / curvature at the farthest start
    runs = {}
    kw = dict(steps=args.steps, chains=len(args.starts), batch_size=p.N, sampling="epoch",
              clip_per="batch", theta0=th0, seed=0, blowup_radius=1e8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # constant steps: not (A2), on purpose
        runs[f"clipped GD, a = {args.step:g}, λ = {args.lam:g}"] = sc.simulate_sgd(
            p, sc.NormClip(args.lam), sc.Constant(args.step), **kw)
        runs[f"GD, a = {args.step:g}"] = sc.simulate_sgd(p, sc.NoClip(), sc.Constant(args.step),
                                                          **kw)
        runs[f"GD, safe a = {safe:.2g}"] = sc.simulate_sgd(p, sc.NoClip(), sc.Constant(safe), **kw)
    iters = {k: iterations_to_tol(r, theta_star, args.tol) for k, r in runs.items()}
    names = list(runs)
    print(f"quartic double well, theta* = +-{theta_star:.4f}, tol {args.tol:g}, "
          f"budget {args.steps} iterations")
    print(f"{'start':>7} " + " ".join(f"{n:>28}" for n in names))
    for j, s in enumerate(args.starts):
        cells = []
        for n in names:
            it, blew = iters[n][j], bool(runs[n].blown_up[j])
            cells.append("diverged" if blew else ("not reached" if it == float("inf")
                                                  else f"{it:.0f}"))
        print(f"{s:7g} " + " ".join(f"{c:>28}" for c in cells))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.ticker

    fig, (ax,) = subplots(1, (6.4, 4.4))
    top = args.steps * 1.6
    for n, mk in zip(names, "osD"):
        y = [top if (bool(runs[n].blown_up[j]) or it == float("inf")) else it
             for j, it in enumerate(iters[n])]
        ax.plot(args.starts, y, marker=mk, label=n)
    ax.axhline(args.steps, color="0.5", ls=":", lw=1)
    ax.text(args.starts[0], args.steps * 1.7, "diverged or budget exhausted", fontsize=8,
            color="0.3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(args.starts, labels=[f"{s:g}" for s in args.starts])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(r"start $\theta_0$")
    ax.set_ylabel(f"iterations to ||θ| − θ*| < {args.tol:g}")
    ax.set_title(r"$(L_0, L_1)$-smooth quartic: clipped vs fixed-step GD")
    ax.legend(fontsize=8)
    path = save_figure(fig, args.out, "quartic_l0l1.png", dpi=args.dpi)
    print(f"wrote {path}")
    return {"iterations": iters, "runs": runs, "figure": path}


if __name__ == "__main__":
    main()
