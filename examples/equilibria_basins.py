"""Equilibria of a 2-D toy and their basins of attraction, over the phase portrait.

The tanh regression toy (zoo "tanh") under per-sample norm clipping: zeros of H from many
starts, classified by the eigenvalues of DH (two stable minima, a saddle at the origin). Every
point of a grid is integrated by the ODE d theta/d tau = -H(theta) in ONE batched solve and
coloured by the equilibrium it reaches.

    python examples/equilibria_basins.py   # figures/equilibria_basins.png, about 35 s CPU
    python examples/equilibria_basins.py --grid 61 --horizon 60
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import sa_clip as sc
from sa_clip.plane import Plane, field_on_plane
from sa_clip.viz import add_figure_options, save_figure, styled, subplots


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--grid", type=int, default=21, help="grid points per axis for the basins")
    ap.add_argument("--extent", type=float, default=3.0, help="plot [-extent, extent]^2")
    ap.add_argument("--horizon", type=float, default=40.0, help="ODE time to integrate")
    ap.add_argument("--starts", type=int, default=24, help="root-finding starts")
    ap.add_argument("--out", default="figures", help="folder for equilibria_basins.png")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace):
    p = sc.problems.tanh_regression()
    field = sc.MeanField(p, sc.NormClip(args.lam))
    eqs = sc.find_equilibria(field, n_starts=args.starts, scale=args.extent / 2, seed=0)
    eqs = sorted(eqs, key=lambda e: (e.kind != "stable", float(e.theta[0])))
    print(f"{p!r}, NormClip(lam={args.lam:g}): {len(eqs)} equilibria")
    print(f"{'#':>2} {'theta':>22} {'kind':>10} {'shape':>6} {'eigenvalues of DH':>24} "
          f"{'switch margin':>14} {'starts':>6}")
    for k, e in enumerate(eqs):
        th = ", ".join(f"{v:.4f}" for v in e.theta.tolist())
        ev = ", ".join(f"{v:.4f}" for v in e.eigenvalues.real)
        print(f"{k:>2} {th:>22} {e.kind:>10} {e.shape:>6} {ev:>24} {e.switch_margin:14.3g} "
              f"{e.count:6d}")
    ax_pts = torch.linspace(-args.extent, args.extent, args.grid, dtype=p.dtype)
    plane = Plane.coordinates(p)
    grid = plane.points(ax_pts, ax_pts).reshape(-1, p.P)
    sol = sc.solve_ode(field, grid, torch.tensor([0.0, args.horizon]), rtol=1e-5, atol=1e-7)
    end = sol.theta[-1]
    stable = [k for k, e in enumerate(eqs) if e.stable]
    labels = torch.full((len(grid),), -1, dtype=torch.long)
    if stable:
        centers = torch.stack([eqs[k].theta for k in stable])
        d = torch.cdist(end, centers)
        near = d.min(1)
        ok = near.values < 0.05
        labels[ok] = torch.tensor(stable)[near.indices[ok]]
    labels = labels.reshape(args.grid, args.grid)
    print(f"ODE from {len(grid)} grid points, one batched solve to tau = {args.horizon:g} "
          f"({sol.nfev} field evaluations): " + ", ".join(
              f"basin {k}: {int((labels == k).sum())}" for k in stable) +
          f", none: {int((labels < 0).sum())}")

    import matplotlib
    matplotlib.use("Agg")

    from sa_clip.viz import plot_phase_portrait
    from sa_clip.viz.theory import plot_basins

    pf = field_on_plane(field, plane, (-args.extent, args.extent), (-args.extent, args.extent),
                        n=41)
    shown = [e if float(e.theta.abs().max()) <= args.extent else None for e in eqs]
    fig, (ax,) = subplots(1, (7.0, 6.0))
    plot_phase_portrait(pf, ax=ax, equilibria=[e for e in shown if e is not None], density=1.0)
    plot_basins(ax_pts, ax_pts, labels.numpy(), ax=ax, equilibria=shown, names=plane.names,
                title=f"tanh toy, classic clipping, λ = {args.lam:g}: equilibria and basins")
    path = save_figure(fig, args.out, "equilibria_basins.png", dpi=args.dpi)
    print(f"wrote {path}")
    return {"equilibria": eqs, "labels": np.asarray(labels), "figure": path}


if __name__ == "__main__":
    main()
