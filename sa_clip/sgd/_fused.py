r"""In-place clipped-SGD step for a stack of ``Linear`` layers (private kernel of
:func:`sa_clip.sgd.sgd_step`).

For a ``Linear`` layer the update of chain ``k`` is a sum of outer products,

.. math:: \Delta W = \sum_b \tilde\delta_b a_b^\top, \qquad \Delta b = \sum_b \tilde\delta_b,
          \qquad \tilde\delta_b = -\frac{a(n)}{B\, c_b}\, \delta_b

(``c_b`` the factor of sample ``b``, per-sample clipping; one factor ``c`` of the batch-mean
gradient, per-batch clipping), so it is written into ``theta``'s layer views by one in-place
``baddbmm_`` per layer: no ``(K, P)`` gradient, no concatenation, no new ``theta``. The norms
come without per-sample gradients: ``||g_b||^2 = sum_l ||a_b||^2 ||delta_b||^2 (+ ||delta_b||^2
for a bias)`` and, for the batch mean, the Gram form ``sum_{b,b'} (a_b . a_b')(delta_b .
delta_b')``.

Blow-up check without a pass over ``theta``: the new squared norm is predicted,

.. math:: \|\theta + \Delta\|^2 = \|\theta\|^2 + 2 \sum_{l,b} \tilde\delta_{l,b}\cdot z_{l,b}
          + \|\Delta\|^2,

with ``z = W a + b`` the layer's pre-activation (so ``<theta_l, Delta_l> = sum_b delta~_b . z_b``)
and ``||theta||^2`` carried in the state (recomputed exactly every :data:`RESYNC` steps). A row
is updated in place only when the prediction and every term are finite and below
``(R/2)^2`` (``R`` the blow-up radius, capped so the squares cannot overflow); any other live
row takes the exact path: its new iterate is computed on a copy by the same per-layer products,
checked with :func:`~sa_clip.sgd.state.bad_rows` and written back only when good. So a blow-up
is detected at the exact step, as by the general path. Dead rows get zero updates.

Numbers: the same maths as the general path (``theta - a u``) with a different rounding (the
step size is folded into the outer products), agreeing to round-off (tested against it and
against a float64 brute-force loop).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..clipping import ClipRule
from ..fastpath import LinearStackEngine
from ..layout import norm_scale, stable_norm
from ..meanfield import MeanField
from ._blowup import bad_rows

#: Steps between exact recomputations of ``||theta||^2`` (the prediction's drift is bounded by
#: about ``RESYNC`` roundings, far inside the factor-2 margin).
RESYNC = 64


def fused_engine(field: MeanField) -> Any:
    """The field's Linear-stack engine when the fused step applies, else None: fast path with
    no frozen layer, a global or no-clipping rule that is not relative, and ``directions``
    not overridden."""
    eng = field.engine if isinstance(field.engine, LinearStackEngine) else None
    rule = field.rule
    if eng is None or type(field).directions is not MeanField.directions \
            or type(field).directions_stats is not MeanField.directions_stats:
        return None
    if any(ly.weight is None or (ly.bias is None and ly.frozen_b is not None)
           for ly in eng.layers):          # a frozen layer: the engine's own step serves it
        return None
    if rule.granularity not in ("none", "global") or rule.relative:
        return None
    if type(rule).factors is not ClipRule.factors and rule.granularity != "none":
        return None
    return eng


def _forward_backward(eng: Any, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Per layer: inputs ``a (K, B, i)``, pre-activations ``z (K, B, o)``, output gradients
    ``delta (K, B, o)``, and the weight views ``(K, o, i)`` / bias views ``(K, o)`` of theta."""
    k = theta.shape[0]
    a = eng._inputs(x, k, False)
    ins, zs, bps, Ws, bs = [], [], [], [], []
    for ly in eng.layers:
        W = theta[:, ly.weight.slice].view(k, ly.d_out, ly.d_in)
        b = None if ly.bias is None else theta[:, ly.bias.slice]
        Wt = W.transpose(1, 2)
        z = torch.bmm(a, Wt) if b is None else torch.baddbmm(b.unsqueeze(1), a, Wt)
        ins.append(a)
        zs.append(z)
        Ws.append(W)
        bs.append(b)
        a, bp = ly.activate(z)
        bps.append(bp)
    delta = eng._output_grad(a, y, False)
    deltas: list[torch.Tensor] = [delta] * len(ins)
    for l in range(len(ins) - 1, -1, -1):
        if bps[l] is not None:
            delta = bps[l](delta)
        deltas[l] = delta
        if l:
            delta = torch.bmm(delta, Ws[l])
    return ins, zs, deltas, Ws, bs


def _gram(v: torch.Tensor) -> torch.Tensor:
    """``v v^T`` per chain, ``(K, B, B)`` (``(K, 1, 1)`` squared norms at batch 1)."""
    if v.shape[1] == 1:
        return (v * v).sum(-1, keepdim=True)
    return torch.bmm(v, v.transpose(1, 2))


def _coefficients(rule: ClipRule, ins, deltas, bs, clip_per: str, a: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coef (K, B), clipped (K, B) or (K,))``: delta~_b = coef_b delta_b, and which norms
    were clipped (samples, or the batch mean)."""
    k, bsz = deltas[0].shape[:2]
    if clip_per == "sample":
        sq = sum((x * x).sum(-1) * (d * d).sum(-1) + ((d * d).sum(-1) if b is not None else 0)
                 for x, d, b in zip(ins, deltas, bs))
        norm = torch.sqrt(sq)
        if not bool(torch.isfinite(norm).all()):     # squares overflowed: scale (exact)
            norm = _sample_norms_scaled(ins, deltas, bs)
        c = rule.factors(norm.unsqueeze(-1))[..., 0]          # (K, B)
        return (-a / bsz) / c, c > 1
    sq = sum((_gram(x) * _gram(d)).sum((1, 2))
             + ((d.sum(1) ** 2).sum(-1) if b is not None else 0)
             for x, d, b in zip(ins, deltas, bs))
    norm = torch.sqrt(sq)
    if not bool(torch.isfinite(norm).all()):
        norm = _batch_norms_scaled(ins, deltas, bs)
    c = rule.factors((norm / bsz).unsqueeze(-1))[:, 0]        # (K,)
    return ((-a / bsz) / c).unsqueeze(1).expand(k, bsz), c > 1


def _sample_norms_scaled(ins, deltas, bs) -> torch.Tensor:
    """Per-sample gradient norms ``(K, B)`` when the plain squares overflowed: the norm of
    the blocks' norms ``||x|| ||d||`` and ``||d||``, each scaled (:func:`stable_norm`)."""
    terms = []
    for x, d, b in zip(ins, deltas, bs):
        dn = stable_norm([d])
        terms.append(stable_norm([x]).expand_as(dn) * dn)
        if b is not None:
            terms.append(dn)
    return stable_norm([torch.stack(terms, -1)])


def _batch_norms_scaled(ins, deltas, bs) -> torch.Tensor:
    """Norms ``(K,)`` of the batch-summed gradient ``sum_b d_b x_b^T`` (and ``sum_b d_b``)
    when the plain squares overflowed: x and d divided by powers of two first."""
    terms = []
    for x, d, b in zip(ins, deltas, bs):
        k = d.shape[0]
        sx = norm_scale(x.abs().amax((1, 2))).expand(k).reshape(k, 1, 1)
        sd = norm_scale(d.abs().amax((1, 2))).reshape(k, 1, 1)
        xs, ds = x / sx, d / sd
        w = (_gram(xs) * _gram(ds)).sum((1, 2)).clamp_min(0).sqrt()
        terms.append(w * sx.reshape(k) * sd.reshape(k))
        if b is not None:
            terms.append(stable_norm([ds.sum(1)]) * sd.reshape(k))
    return stable_norm([torch.stack(terms, -1)])


def _apply(Ws, bs, ins, dts) -> None:
    """``W += sum_b delta~_b a_b^T``, ``b += sum_b delta~_b``, in place, layer by layer."""
    for W, b, x, d in zip(Ws, bs, ins, dts):
        dt = d.transpose(1, 2).contiguous()     # a strided left factor is several times slower
        if x.shape[1] == 1:   # rank one: one element-wise pass over W (baddbmm_ on the
            W.addcmul_(dt, x)  # strided view W loops over chains)
        else:
            W.baddbmm_(dt, x)
        if b is not None:
            b.add_(d.sum(1))


def fused_step(eng: Any, rule: ClipRule, theta: torch.Tensor, alive: torch.Tensor,
               sq_norm: torch.Tensor | None, batch: torch.Tensor, a: float, *, step: int,
               clip_per: str, blowup_radius: float, stats: bool):
    """One step, ``theta`` updated in place. Returns ``(bad (K,), sq_norm (K,) float64,
    clip fraction (K,) or None)``; ``bad`` marks live rows whose new iterate was refused."""
    x, y = eng.problem.take(batch)
    ins, zs, deltas, Ws, bs = _forward_backward(eng, theta, x, y)
    coef, clipped = _coefficients(rule, ins, deltas, bs, clip_per, a)
    dts = [d * coef.unsqueeze(-1) for d in deltas]
    if sq_norm is None or step % RESYNC == 0:
        sq_norm = torch.linalg.vector_norm(theta, dim=1).double() ** 2
    cross = sum((d * z).sum((1, 2)) for d, z in zip(dts, zs)).double()
    upd = sum((_gram(x) * _gram(d)).sum((1, 2)) + ((d.sum(1) ** 2).sum(-1) if b is not None
                                                    else 0)
              for x, d, b in zip(ins, dts, bs)).double()
    pred = sq_norm + 2 * cross + upd
    big = math.sqrt(torch.finfo(theta.dtype).max) / 4
    thr = min(blowup_radius, big) / 2
    thr2 = thr * thr
    safe = alive & torch.isfinite(pred) & (pred <= thr2) & (sq_norm <= thr2) & (upd <= thr2)
    exact = alive & ~safe
    if bool(safe.all()):
        _apply(Ws, bs, ins, dts)
    else:   # zero updates (and inputs: 0 * inf is NaN) of the rows not stepped here
        keep = safe.view(-1, 1, 1)
        _apply(Ws, bs, [torch.where(keep, x, 0.0) for x in ins],
               [torch.where(keep, d, 0.0) for d in dts])
    new_sq = torch.where(safe, pred, sq_norm)
    bad = torch.zeros_like(alive)
    if bool(exact.any()):
        rows = exact.nonzero()[:, 0]
        th = theta[rows].clone()
        sub = [th[:, ly.weight.slice].view(len(rows), ly.d_out, ly.d_in) for ly in eng.layers]
        subb = [None if ly.bias is None else th[:, ly.bias.slice] for ly in eng.layers]
        _apply(sub, subb, [x[rows] for x in ins], [d[rows] for d in dts])
        refused = bad_rows(th, blowup_radius)
        good = rows[~refused]
        theta[good] = th[~refused]
        new_sq[good] = torch.linalg.vector_norm(th[~refused], dim=1).double() ** 2
        bad[rows[refused]] = True
    frac = None
    if stats:
        frac = clipped.to(theta.dtype)
        frac = frac.mean(-1) if frac.dim() == 2 else frac
    return bad, new_sq, frac


__all__ = ["fused_engine", "fused_step", "RESYNC"]
