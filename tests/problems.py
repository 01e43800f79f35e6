"""Small problems with brute-force references (plain Python loops over samples, float64).

The references deliberately share no code with sa_clip beyond building the model: gradients
come from ``torch.autograd.grad`` on the module itself, clipping from hand-written formulas.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import sa_clip as sc

D = torch.float64


class SharedTied(nn.Module):
    """Not a plain Linear stack: a weight used twice (tied), a 0-d scale, a 3-d tensor."""

    def __init__(self, d_in: int = 3, h: int = 4, d_out: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = nn.Parameter(torch.randn(h, d_in, generator=g, dtype=D) * 0.7)
        self.scale = nn.Parameter(torch.tensor(1.3, dtype=D))           # 0-d
        self.mix = nn.Parameter(torch.randn(2, h, h, generator=g, dtype=D) * 0.3)  # 3-d
        self.out = nn.Linear(h, d_out, dtype=D)
        with torch.no_grad():
            self.out.weight.copy_(torch.randn(d_out, h, generator=g, dtype=D) * 0.5)
            self.out.bias.copy_(torch.randn(d_out, generator=g, dtype=D) * 0.1)

    def forward(self, x):
        h = torch.tanh(self.scale * x @ self.W.T)
        h = torch.tanh(h @ self.mix[0] + (h @ self.W) @ self.W.T @ self.mix[1])  # W reused
        return self.out(h)


def brute_grads(problem: sc.Problem, theta: torch.Tensor) -> torch.Tensor:
    """(N, P) per-sample gradients by a loop over samples with torch.autograd.grad, with
    respect to the trainable parameters only (those with requires_grad=True)."""
    model = copy.deepcopy(problem.model)
    params = [q for q in model.parameters() if q.requires_grad]
    torch.nn.utils.vector_to_parameters(theta.detach().clone(), params)
    rows = []
    for i in range(problem.N):
        out = model(problem.X[i:i + 1])
        yi = problem.y[i:i + 1]
        if problem.loss_name == "mse":
            l = ((out.reshape(-1) - yi.reshape(-1).to(out.dtype)) ** 2).sum()
        elif problem.loss_name == "cross_entropy":
            l = -torch.log_softmax(out, -1)[0, yi[0]]
        else:
            l = problem.loss_spec(out[0], yi[0])
        gs = torch.autograd.grad(l, params)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


def _units(problem):
    """List of (start, stop) ranges of units, per the unit-wise rule, built by hand."""
    out = []
    for b in problem.blocks:
        if len(b.shape) >= 2:
            step = b.numel // b.shape[0]
            out += [(b.start + j * step, b.start + (j + 1) * step) for j in range(b.shape[0])]
        else:
            out.append((b.start, b.stop))
    return out


def brute_clip(rule, g: torch.Tensor, theta: torch.Tensor, problem) -> torch.Tensor:
    """Clip one gradient ``g`` (P,) by hand-written formulas."""
    if isinstance(rule, sc.NoClip):
        return g.clone()
    if isinstance(rule, sc.ValueClip):
        return torch.tensor([min(max(float(v), -rule.v), rule.v) for v in g], dtype=g.dtype)
    if isinstance(rule, sc.NormClip):
        ranges, rel = [(0, problem.P)], False
    elif isinstance(rule, sc.AdaptiveClip):
        ranges, rel = [(0, problem.P)], True
    elif isinstance(rule, sc.LayerwiseAdaptiveClip):
        ranges, rel = [(b.start, b.stop) for b in problem.blocks], True
    else:
        ranges, rel = _units(problem), True
    u = g.clone()
    for a, b in ranges:
        gn = float(g[a:b].norm())
        tau = rule.lam * max(float(theta[a:b].norm()), rule.eps) if rel else rule.lam
        c = max(gn / tau, 1.0)
        u[a:b] = g[a:b] / c
    return u


def brute_H(problem, rule, theta):
    G = brute_grads(problem, theta)
    return torch.stack([brute_clip(rule, G[i], theta, problem) for i in range(problem.N)]).mean(0)


def shared_problem(loss="mse", n=13):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(n, 3, generator=g, dtype=D)
    if loss == "cross_entropy":
        y = torch.randint(0, 2, (n,), generator=g)
    else:
        y = torch.randn(n, 2, generator=g, dtype=D)
    if loss == "callable":
        def loss_fn(o, t):
            return torch.log(torch.cosh(o - t)).sum()
        return sc.Problem(SharedTied(), X, y, loss_fn)
    return sc.Problem(SharedTied(), X, y, loss)


def mlp_problem(n=11, loss="mse"):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, 4, generator=g, dtype=D)
    model = nn.Sequential(nn.Linear(4, 5, dtype=D), nn.Tanh(), nn.Linear(5, 3, dtype=D))
    if loss == "cross_entropy":
        y = torch.randint(0, 3, (n,), generator=g)
    else:
        y = torch.randn(n, 3, generator=g, dtype=D)
    return sc.Problem(model, X, y, loss)


ALL_RULES = [sc.NoClip(), sc.NormClip(0.3), sc.AdaptiveClip(0.05, eps=0.5),
             sc.LayerwiseAdaptiveClip(0.1), sc.UnitwiseAGC(0.2, eps=1e-3), sc.ValueClip(0.05)]
