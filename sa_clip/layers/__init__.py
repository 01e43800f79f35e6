r"""The ``"layers"`` engine: clipped sums from each layer's inputs and output gradients.

One forward and one backward per chunk keep, for every layer that owns trainable parameters,
its input ``a`` and its output gradient ``delta = dl/dz`` (forward hooks; one
``torch.autograd.grad`` of the summed losses with respect to all layer outputs: the weight
gradients themselves are not formed). Per-sample gradient norms then come per layer:

* ``Linear`` (any leading dimensions, positions ``s, t``): per-sample weight gradient
  ``G_i = sum_t delta_{it} a_{it}^T``, so

  .. math:: \lVert G_i\rVert_F^2 = \sum_{s,t} (a_{is}\cdot a_{it})(\delta_{is}\cdot\delta_{it})

  (the norm trick ``||a_i|| ||delta_i||`` for one position; Gram matrices over positions, the
  "ghost norm", for sequences), or ``G_i`` itself when that is cheaper for the shapes;
* ``Conv1d/2d/3d`` (stride, dilation, groups, any padding mode) and ``ConvTranspose1d/2d/3d``:
  the same with unfolded input patches as ``a`` (for a transposed convolution the roles of
  input and output gradient swap); per layer, per-sample gradients ``D_i^T A_i`` or ghost norms,
  whichever costs fewer operations (``T (d_a + d_delta)`` against ``d_a d_delta`` per position);
* ``Embedding``: rows hit by each sample, ``||G_i||^2 = sum_{s,t} [x_s = x_t] delta_s . delta_t``;
* ``LayerNorm``/``GroupNorm``/eval-mode ``BatchNorm`` affine parameters and every bias: their
  per-sample gradients are small (``(B, C)``) and formed directly;
* any other module that owns parameters (``MultiheadAttention``, whose projections run inside
  ``F.multi_head_attention_forward``; the recurrent cells of :mod:`sa_clip.recurrent`; user
  modules): per-sample gradients of that module alone, ``vmap`` over its recorded inputs and
  output gradients (:attr:`LayersEngine.reason` names them);
* tied parameters (one tensor used by several layers): per-sample gradients of that tensor,
  summed over its uses.

The rule turns the norms into factors ``c`` (its own :meth:`~sa_clip.ClipRule.factors`:
classic, adaptive, layer-wise, unit-wise), and the clipped sum is one reweighted weight
gradient per layer,

.. math:: \sum_i G_i / c_{i,G} = \sum_{i,t} (w_i \odot \delta_{it})\, a_{it}^\top,
          \qquad w = 1/c,

never a ``(chunk, P)`` tensor. Value clipping needs the coordinates of every per-sample
gradient and stays on the ``"vmap"`` engine; so does ``DH`` (this engine calls autograd, which
``jacfwd`` cannot go through): :class:`~sa_clip.MeanField` hands Jacobians to its
differentiable engine, and SGD minibatches of several chains (one batch per chain) to ``vmap``.

Once per problem the analysis runs the model on 2 and 3 samples to find where the batch
dimension of every recorded tensor is, and checks the engine's per-sample layer norms and
gradient against a per-sample autograd loop on those samples: a model that uses a parameter
outside the module owning it (a custom ``forward`` reading ``self.fc.weight``) fails that check
and is left to ``"vmap"``, with the reason.

Example
-------
>>> import torch, sa_clip as sc
>>> _ = torch.manual_seed(0); X = torch.randn(8, 1, 6, 6, dtype=torch.float64)
>>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
...                         torch.nn.Linear(32, 1)).double()
>>> p = sc.Problem(m, X, X.sum((1, 2, 3)))
>>> f = sc.MeanField(p, sc.NormClip(1.0))
>>> f.method
'layers'
>>> ref = sc.MeanField(p, sc.NormClip(1.0), engine="vmap")
>>> bool(torch.allclose(f(p.theta0), ref(p.theta0), atol=1e-12))
True
"""

from __future__ import annotations

import sys
import types

# the package's modules, each importing only those listed before it: _conv (convolution
# helpers; the settings TIMED, FORCE, PSG_LIMIT) <- _per_sample (the per-layer parts) <-
# _analysis (model analysis, recording, self-check) <- _engine (LayersEngine)
from . import _analysis, _conv, _engine, _per_sample
from ._analysis import LayersPlan, analyse_layers
from ._engine import LayersEngine

#: Names of the package that live in its modules. Reading ``sa_clip.layers.NAME`` reads the
#: module's, and setting it sets the module's, where it is read at run time: so
#: ``sa_clip.layers.TIMED = False`` (or ``monkeypatch.setattr(sa_clip.layers, "FORCE", ...)``)
#: still takes effect, one value and never a stale copy. The private helpers stay importable
#: from ``sa_clip.layers`` as before the split.
_OWNER: dict[str, types.ModuleType] = {
    **dict.fromkeys(("TIMED", "FORCE", "PSG_LIMIT", "_unfold", "_patches", "_ghost",
                     "_fastest", "_conv_psg", "_channels_last"), _conv),
    **dict.fromkeys(("_Part", "_Outer", "_Linear2d", "_Embedding", "_parts",
                     "_module_parts"), _per_sample),
    **dict.fromkeys(("_CONV", "_CONVT", "_BN", "_kind", "_Unit", "_Site", "_units",
                     "_Recorder", "_batch_dims", "_record", "_self_check", "_chunk_parts",
                     "_squares", "_Replan"), _analysis),
    "LOOP_ELEMENTS": _engine,
}


def _forwarded(name: str, owner: types.ModuleType) -> property:
    return property(lambda self: getattr(owner, name),
                    lambda self, value: setattr(owner, name, value),
                    doc=f"``{owner.__name__}.{name}``")


class _Package(types.ModuleType):
    """``sa_clip.layers``, its names of :data:`_OWNER` being properties that read and set them
    in their modules (data descriptors: ``monkeypatch.setattr`` restores them by setting, not
    by deleting)."""

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_OWNER})


for _name, _module in _OWNER.items():
    setattr(_Package, _name, _forwarded(_name, _module))
del _name, _module


sys.modules[__name__].__class__ = _Package

__all__ = ["LayersEngine", "LayersPlan", "analyse_layers"]
