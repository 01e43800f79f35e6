"""Model analysis of the ``"layers"`` engine (:mod:`sa_clip.layers`): which modules are
layers it knows, forward hooks that record every call, where the batch dimension of every
recorded tensor is, the per-layer parts of a chunk, and the self-check against a per-sample
autograd loop (:func:`analyse_layers`, once per problem)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..layout import Block
from ..problem import Problem
from ._per_sample import _module_parts, _Part, _parts

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _kind(m: nn.Module) -> str:
    """How the engine treats module ``m``: a layer it knows, or ``"module"`` (per-sample
    gradients of the module alone)."""
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, _CONV):
        return "conv"
    if isinstance(m, _CONVT):
        return "convT"
    if isinstance(m, nn.Embedding) and m.max_norm is None and not m.scale_grad_by_freq \
            and not m.sparse:
        return "embedding"
    if isinstance(m, nn.LayerNorm):
        return "layernorm"
    if isinstance(m, nn.GroupNorm):
        return "groupnorm"
    if isinstance(m, _BN) and m.running_mean is not None:
        return "batchnorm"
    return "module"


@dataclass
class _Unit:
    module: nn.Module
    path: str
    kind: str
    blocks: dict[str, Block]          # local parameter name -> its block of theta


@dataclass
class _Site:
    """One call of a unit in the forward pass, with the batch dimension of each tensor."""

    unit: int
    arg_dims: list[int | None]        # flattened (args, kwargs) leaves; None: not a tensor
    out_dims: list[int | None]        # flattened output leaves


@dataclass
class LayersPlan:
    units: list[_Unit]
    sites: list[_Site]
    clone_outputs: bool
    per_sample: int                   # numbers per sample (activations, gradients, psg)
    notes: list[str] = field(default_factory=list)
    tune: dict[Any, str] = field(default_factory=dict)   # conv layer and shape -> method


def _units(problem: Problem) -> list[_Unit]:
    by_id = {}
    for b in problem.blocks:           # named_parameters order: a tied tensor has one name
        by_id[b.name] = b
    pid = {id(p): by_id[n] for n, p in problem.model.named_parameters() if n in by_id}
    units: list[_Unit] = []

    def visit(m: nn.Module, path: str) -> None:
        kind = _kind(m)
        own = list(m.named_parameters(recurse=False))
        if kind != "module" or own:
            params = m.named_parameters() if kind == "module" else own
            blocks = {n: pid[id(p)] for n, p in params if id(p) in pid}
            if blocks:
                units.append(_Unit(m, path, kind, blocks))
            return
        for n, c in m.named_children():
            visit(c, f"{path}.{n}" if path else n)

    visit(problem.model, "")
    return units


class _Recorder:
    """Forward hooks on the units: every call's inputs and outputs, in call order."""

    def __init__(self, units: list[_Unit], clone: bool):
        self.units, self.clone = units, clone
        self.calls: list[tuple[int, list[Any], Any, list[Any], Any]] = []

    def __enter__(self) -> _Recorder:
        self.handles = []
        for i, u in enumerate(self.units):
            self.handles.append(u.module.register_forward_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            leaves, spec = tree_flatten((args, kwargs))
            oleaves, ospec = tree_flatten(out)
            self.calls.append((i, leaves, spec, oleaves, ospec))
            if self.clone:     # an in-place op after the layer must not change what we keep
                return tree_unflatten([o.clone() if isinstance(o, torch.Tensor) else o
                                       for o in oleaves], ospec)
            return None
        return hook


def _batch_dims(t2: Any, t3: Any) -> int | None | str:
    """The dimension that grew from 2 to 3 samples; None when none did; "?" if ambiguous."""
    if not isinstance(t2, torch.Tensor):
        return None
    if not isinstance(t3, torch.Tensor) or t2.dim() != t3.dim():
        return "?"
    d = [k for k in range(t2.dim()) if t2.shape[k] != t3.shape[k]]
    if not d:
        return None
    if len(d) > 1 or (t2.shape[d[0]], t3.shape[d[0]]) != (2, 3):
        return "?"
    return d[0]


# ---------------------------------------------------------------------- analysis
def analyse_layers(problem: Problem) -> tuple[LayersPlan | None, str | None]:
    """``(plan, None)`` when the layer engine serves ``problem``'s model, else
    ``(None, why not)`` (rule-independent; once per problem)."""
    units = _units(problem)
    if not units:
        return None, "the model has no layer with trainable parameters"
    if all(u.kind == "module" for u in units):
        names = ", ".join(f"{type(u.module).__name__} at {u.path or 'the root'!r}"
                          for u in units)
        return None, (f"no layer it knows owns parameters ({names}): the per-layer engine would "
                      "only add overhead to per-sample gradients of the whole model")
    clone = any(getattr(m, "inplace", False) for m in problem.model.modules())
    shapes = []
    for n in (2, 3):
        x, y = problem.take(torch.arange(n) % problem.N)
        try:
            calls = _record(problem, units, clone, problem.theta0, x, y)[0]
        except Exception as exc:      # noqa: BLE001 - any failure means: not this engine
            return None, f"recording the layers failed ({type(exc).__name__}: {exc})"
        shapes.append(calls)
    c2, c3 = shapes
    if [c[0] for c in c2] != [c[0] for c in c3]:
        return None, "the layers are called in an order that depends on the batch size"
    sites, per = [], 0
    for (i, l2, _, o2, _), (_, l3, _, o3, _) in zip(c2, c3):
        ad = [_batch_dims(p, q) for p, q in zip(l2, l3)]
        od = [_batch_dims(p, q) for p, q in zip(o2, o3)]
        u = units[i]
        if "?" in ad or "?" in od:
            return None, (f"the batch dimension of the inputs or outputs of {u.path!r} is "
                          "ambiguous")
        if u.kind != "module":
            if ad[0] is None or od[0] is None or (u.kind not in ("linear", "layernorm")
                                                  and (ad[0], od[0]) != (0, 0)):
                return None, f"{u.path!r} is called without its batch dimension first"
        sites.append(_Site(i, ad, od))  # type: ignore[arg-type]
        per += 2 * sum(t.numel() // 3 for t in (*l3, *o3) if isinstance(t, torch.Tensor))
        if u.kind in ("conv", "convT", "module") or (u.kind == "linear" and l3[0].dim() > 2):
            # per-sample gradients of the layer (the way chosen for convolutions and Linear
            # layers on positions, always for modules served by per-sample gradients)
            per += sum(b.numel for b in u.blocks.values())
    notes = sorted({f"{type(units[s.unit].module).__name__} at {units[s.unit].path!r}"
                    for s in sites if units[s.unit].kind == "module"})
    plan = LayersPlan(units, sites, clone, max(1, per), notes)
    bad = _self_check(problem, plan)
    if bad is not None:
        return None, bad
    return plan, None


def _record(problem: Problem, units: list[_Unit], clone: bool, theta: torch.Tensor,
            x: torch.Tensor, y: torch.Tensor):
    """Forward the chunk with the hooks on: ``(calls, losses, params, theta leaf)``."""
    th = theta.detach().requires_grad_(True)
    params = problem.unflatten(th)
    with torch.enable_grad(), _Recorder(units, clone) as rec:
        out = functional_call(problem.model, {**params, **problem._fixed}, (x,))
        losses = problem.batch_losses(out, y)
    return rec.calls, losses, params, th


def _self_check(problem: Problem, plan: LayersPlan) -> str | None:
    """Per-sample layer norms of 3 samples against a per-sample autograd loop (both on the
    loss times a power of two that brings the largest gradient entry near 1, so huge targets
    do not overflow the squares)."""
    n = min(3, problem.N)
    x, y = problem.take(torch.arange(n))
    th = problem.theta0
    gs = []
    for i in range(n):
        t = th.detach().requires_grad_(True)
        with torch.enable_grad():
            gs.append(torch.autograd.grad(
                problem.sample_losses(t, x[i:i + 1], y[i:i + 1]).sum(), t)[0])
    m = float(torch.stack(gs).abs().max()) if gs else 0.0
    scale = 2.0 ** -math.ceil(math.log2(m)) if math.isfinite(m) and m > 0 else 1.0
    try:
        sq = _squares(problem, plan, th, x, y, scale=scale)[0]
    except Exception as exc:      # noqa: BLE001
        return f"its per-layer gradients failed ({type(exc).__name__}: {exc})"
    r = torch.stack([torch.stack([(g[b.slice] * scale).square().sum() for b in problem.blocks])
                     for g in gs])
    got = torch.cat([s for s in sq], 1)
    tol = 1e3 * torch.finfo(problem.dtype).eps
    err = float((got - r).abs().max() / r.abs().max().clamp_min(1e-300))
    if not err <= tol:
        return ("its per-layer gradient norms do not match a per-sample autograd loop on the "
                f"first samples (relative error {err:.1e}): a parameter is used outside the "
                "module that owns it, or a layer's output is changed in place")
    return None


# ---------------------------------------------------------------------- one chunk
def _chunk_parts(problem: Problem, plan: LayersPlan, theta: torch.Tensor,
                 x: torch.Tensor, y: torch.Tensor, scale: float = 1.0
                 ) -> tuple[dict[str, list[_Part]], torch.Tensor]:
    """Every block's parts for one ``theta (P,)`` on a chunk, and the leaf theta; with
    ``scale``, of the loss times ``scale`` (a power of two: exact)."""
    calls, losses, params, th = _record(problem, plan.units, plan.clone_outputs, theta,
                                        x, y)
    if len(calls) != len(plan.sites) or any(c[0] != s.unit
                                            for c, s in zip(calls, plan.sites)):
        raise _Replan()
    outs = [(k, j, o) for k, c in enumerate(calls) for j, o in enumerate(c[3])
            if isinstance(o, torch.Tensor) and o.requires_grad
            and plan.sites[k].out_dims[j] is not None]
    with torch.enable_grad():
        total = losses.sum()
        gs = torch.autograd.grad(total, [o for _, _, o in outs], allow_unused=True,
                                 grad_outputs=None if scale == 1.0 else
                                 torch.full_like(total, scale))
    deltas: list[list[torch.Tensor | None]] = [[None] * len(c[3]) for c in calls]
    for (k, j, _), g in zip(outs, gs):
        if g is not None:
            deltas[k][j] = g.movedim(plan.sites[k].out_dims[j], 0)
    parts: dict[str, list[_Part]] = {}
    for (i, leaves, spec, _, _), site, dl in zip(calls, plan.sites, deltas):
        unit = plan.units[i]
        if unit.kind == "module":
            if not any(d is not None for d in dl):
                continue
            got = _module_parts(unit, site, leaves, spec, dl, params)
        else:
            if dl[0] is None:
                continue
            args = [leaves[0].movedim(site.arg_dims[0], 0)]
            got = _parts(unit, args, dl, plan.tune)
        for part in got.values():
            parts.setdefault(part.block.name, []).append(part)
    return parts, th


def _squares(problem: Problem, plan: LayersPlan, theta: torch.Tensor, x: torch.Tensor,
             y: torch.Tensor, units: dict[str, int] | None = None,
             scale: float = 1.0) -> tuple[list[torch.Tensor], dict[str, _Part]]:
    """Per-sample squared norms, one ``(B, units)`` tensor per block in Layout order
    (zeros for a block no sample reaches), and each block's single part (of the loss
    times ``scale``)."""
    parts, _ = _chunk_parts(problem, plan, theta, x, y, scale)
    b = x.shape[0]
    sq, single = [], {}
    for blk in problem.blocks:
        u = 1 if units is None else units[blk.name]
        ps = parts.get(blk.name, [])
        if not ps:
            sq.append(theta.new_zeros(b, u))
            single[blk.name] = _Part(blk, theta.new_zeros(b, blk.numel))
            continue
        part = ps[0] if len(ps) == 1 else _Part(blk, sum(p.psg() for p in ps))
        single[blk.name] = part
        sq.append(part.sq(u))
    return sq, single


class _Replan(Exception):
    """A forward pass called the layers in another order than the analysis saw."""
