"""Clipping bias: the zero of H under per-sample clipping is not the unclipped minimiser.

Linear regression on the diabetes data set (bundled with scikit-learn; zoo "diabetes" with no
hidden layer, mse), per-sample norm clipping at several lam: for each, the clipped equilibrium
theta*, the unclipped gradient norm there (zero if the paper's conclusion held), the distance
to the unclipped minimiser and the loss gap. The Huber toy {-3, -3, 9} shows the closed form:
theta*(lam) moves from the median (-3) to the mean (1) as lam grows.

    python examples/clipping_bias.py   # figures/clipping_bias.png, about 16 s CPU
    python examples/clipping_bias.py --lams 0.1 0.3 1 3 10 30
"""

from __future__ import annotations

import argparse

import torch

import sa_clip as sc
from sa_clip.viz import add_figure_options, save_figure, styled, subplots


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="diabetes")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.1, 0.3, 1, 3, 6])
    ap.add_argument("--out", default="figures", help="folder for clipping_bias.png")
    add_figure_options(ap)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    with styled(args.style):
        return _main(args)


def _main(args: argparse.Namespace):
    p = sc.problems.real_problem(args.dataset, hidden=())
    plain = sc.clipping_bias(sc.MeanField(p, sc.NoClip()), p.theta0)   # finds the minimiser
    theta_u = plain.theta_unclipped
    rows = []
    start = theta_u.clone()
    for lam in sorted(args.lams, reverse=True):             # continuation from large lam down
        field = sc.MeanField(p, sc.NormClip(lam))
        eq = sc.find_equilibria(field, starts=start[None], tol=1e-9)
        if not eq:
            print(f"lam = {lam:g}: no zero of H found from the continuation start")
            continue
        e = eq[0]
        start = e.theta
        b = sc.clipping_bias(field, e.theta, theta_unclipped=theta_u)
        frac = float(field.clip_stats(e.theta).fraction)
        rows.append((lam, frac, b.grad_norm, b.distance, b.loss_gap, e.kind))
    rows.sort()
    print(f"{p!r}: unclipped minimiser loss {float(p.loss(theta_u)):.5f}")
    print(f"{'lam':>7} {'clipped':>8} {'|grad L(theta*)|':>17} {'|theta*-theta_u|':>17} "
          f"{'loss gap':>10}  kind")
    for lam, frac, g, d, gap, kind in rows:
        print(f"{lam:7g} {frac:8.1%} {g:17.3e} {d:17.3e} {gap:10.3e}  {kind}")
    huber_lams = torch.logspace(-1, 1.2, 16, dtype=torch.float64)
    ploc = sc.problems.location_problem([-3.0, -3.0, 9.0])
    huber = []
    for lam in huber_lams.tolist():
        eq = sc.find_equilibria(sc.MeanField(ploc, sc.NormClip(lam)),
                                starts=torch.tensor([[-3.0], [1.0]], dtype=torch.float64))
        huber.append(float(eq[0].theta))
    print("Huber toy {-3, -3, 9}: theta*(lam) = " + ", ".join(
        f"{lam:g}: {t:.3f}" for lam, t in zip(huber_lams.tolist()[::3], huber[::3])))

    import matplotlib
    matplotlib.use("Agg")

    fig, (a1, a2) = subplots(2, (11, 4.2))
    rows_pos = [r for r in rows if r[4] > 0]          # log axes: drop exact zeros (no bias)
    lam = [r[0] for r in rows_pos]
    a1.loglog(lam, [r[2] for r in rows_pos], "o-", label=r"$\|\nabla L(\theta^*)\|$")
    a1.loglog(lam, [r[3] for r in rows_pos], "s-", label=r"$\|\theta^* - \theta_{unclipped}\|$")
    a1.loglog(lam, [r[4] for r in rows_pos], "^-",
              label=r"$L(\theta^*) - L(\theta_{unclipped})$")
    a1.set_xlabel(r"clipping threshold $\lambda$")
    a1.set_ylabel("bias")
    a1.set_title(f"clipping bias, linear regression on {args.dataset}")
    a1.legend(fontsize=8)
    a2.semilogx(huber_lams, huber, "-", lw=2, label=r"clipped equilibrium $\theta^*(\lambda)$")
    a2.axhline(1.0, color="k", ls="--", lw=1, label="mean = unclipped minimiser")
    a2.axhline(-3.0, color="0.5", ls=":", lw=1, label="median")
    a2.set_xlabel(r"clipping threshold $\lambda$")
    a2.set_ylabel(r"$\theta^*$")
    a2.set_title("Huber toy, data {-3, -3, 9}")
    a2.legend(fontsize=8)
    path = save_figure(fig, args.out, "clipping_bias.png", dpi=args.dpi)
    print(f"wrote {path}")
    return {"rows": rows, "huber": (huber_lams, huber), "figure": path}


if __name__ == "__main__":
    main()
