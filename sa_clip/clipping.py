r"""Clipping rules: the update ``u = g / c`` for a gradient ``g`` (docs/theory.md#clipping-rules).

Each rule is a small frozen dataclass that validates itself. A rule with a scalar clipping
factor per group computes

.. math:: c_G = \max\big(\lVert g_G\rVert / \tau_G,\ 1\big), \qquad u_G = g_G / c_G,

where the groups ``G`` and thresholds ``tau_G`` are

=========================  ===========  ======================================  ==========
rule                       groups       threshold ``tau_G``                     paper
=========================  ===========  ======================================  ==========
``NoClip()``               --           (``c = 1``)                             (3)
``NormClip(lam)``          all of theta ``lam``                                 (11)
``AdaptiveClip(lam, eps)`` all of theta ``lam * max(||theta||, eps)``            (17)
``LayerwiseAdaptiveClip``  each tensor  ``lam * max(||theta_l||_F, eps)``        (18)
``UnitwiseAGC(lam, eps)``  each unit    ``lam * max(||theta_unit||, eps)``      NFNets
=========================  ===========  ======================================  ==========

``ValueClip(v)`` clamps coordinates, ``u = clamp(g, -v, v)``: not a scaling.
The ``max(., 1)`` is exact (no ``+1e-6`` in a denominator), so a gradient inside the bound is
left untouched bit for bit.

Example
-------
>>> import torch, sa_clip as sc
>>> g = torch.tensor([3.0, 4.0])
>>> sc.NormClip(1.0).factors(g.norm().reshape(1))
tensor([5.])
"""

from __future__ import annotations

from abc import ABC
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from ._validate import check_positive
from .layout import Layout, group_norms


class ClipRule(ABC):  # noqa: B024 - abstract by intent, concrete rules are dataclasses
    """Base of all rules. Subclasses set ``name``, ``granularity`` and ``relative``."""

    name: ClassVar[str]
    granularity: ClassVar[str]          # "none" | "global" | "layer" | "unit" | "coordinate"
    relative: ClassVar[bool] = False    # threshold scales with the weights' norm

    def thresholds(self, theta_norms: torch.Tensor | None) -> torch.Tensor | float:
        """``tau_G`` for each group (``lam`` or ``lam * max(||theta_G||, eps)``)."""
        lam = self.lam  # type: ignore[attr-defined]
        if not self.relative:
            return lam
        return lam * torch.clamp(theta_norms, min=self.eps)  # type: ignore[attr-defined]

    def factors(self, grad_norms: torch.Tensor, theta_norms: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Clipping factors ``c = max(||g_G|| / tau_G, 1) >= 1``, same shape as ``grad_norms``.

        ``theta_norms`` (the weights' group norms) must broadcast against ``grad_norms`` for
        relative rules and is ignored otherwise.
        """
        if self.granularity == "none":
            return torch.ones_like(grad_norms)
        if self.relative and theta_norms is None:
            raise ValueError(f"`theta_norms` is required by the relative rule {self!r}.")
        tau = self.thresholds(theta_norms)
        # not clamp(g / tau, 1): a threshold that underflows to 0 (tiny lam * eps) would give
        # 0 / 0 = NaN for a zero gradient; here that factor is 1 (and inf, u = 0, otherwise).
        # At ||g|| = tau the clipped branch is taken, as clamp did (the Jacobian at a kink).
        clipped = (grad_norms >= tau) & (grad_norms > 0)
        return torch.where(clipped, grad_norms / tau, torch.ones_like(grad_norms))

    def clip(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Clipped directions ``u`` for gradients ``g`` of shape ``(..., P)``.

        ``theta`` (shape broadcastable to ``g``) gives the weights for relative rules.
        """
        return g / self.expanded_factors(g, theta, layout)

    def clip_and_factors(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout,
                         scale: float = 1.0, *, overwrite: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clip(scale * g), group factors of scale * g)`` with one pass over ``g``.

        The factors are computed once and ``scale`` (e.g. ``1/B`` for a batch mean) is folded
        into the division, so a ``(K, P)`` batch of gradients is read and written once.
        ``overwrite=True`` lets a caller that owns ``g`` (a temporary) have it scaled in place
        when autograd does not track it, saving one allocation of its size.
        """
        if self.granularity == "none":
            return (g * scale if scale != 1.0 else g), g.new_ones(*g.shape[:-1], 1)
        gn = group_norms(g, layout, self.granularity) * scale
        tn = group_norms(theta, layout, self.granularity) if self.relative else None
        c = self.factors(gn, tn)
        s = scale / c
        if self.granularity != "global":
            index, _ = layout.groups(self.granularity, g.device)
            s = s[..., index]
        if overwrite and not (g.requires_grad or s.requires_grad):
            return g.mul_(s), c
        return g * s, c

    def group_factors(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout
                      ) -> torch.Tensor:
        """Clipping factors per group, shape ``(..., G)`` (``G = 1`` for global rules)."""
        if self.granularity == "none":
            return g.new_ones(*g.shape[:-1], 1)
        gn = group_norms(g, layout, self.granularity)
        tn = group_norms(theta, layout, self.granularity) if self.relative else None
        return self.factors(gn, tn)

    def expanded_factors(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout
                         ) -> torch.Tensor:
        """Clipping factor of every coordinate, shape ``(..., P)`` (or ``(..., 1)``)."""
        c = self.group_factors(g, theta, layout)
        if self.granularity in ("none", "global"):
            return c
        index, _ = layout.groups(self.granularity, g.device)
        return c[..., index]

    def to_dict(self) -> dict[str, Any]:
        """``{"rule": name, **parameters}``, the inverse of :func:`make_rule`."""
        return {"rule": self.name, **asdict(self)}  # type: ignore[call-overload]


def _check_lam_eps(rule: Any, with_eps: bool) -> None:
    object.__setattr__(rule, "lam", check_positive("lam", rule.lam))
    if with_eps:
        object.__setattr__(rule, "eps", check_positive("eps", rule.eps))


@dataclass(frozen=True)
class NoClip(ClipRule):
    """Plain SGD, ``u = g`` (the paper's (3)).

    >>> NoClip().to_dict()
    {'rule': 'none'}
    """

    name: ClassVar[str] = "none"
    granularity: ClassVar[str] = "none"

    def clip(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout) -> torch.Tensor:
        return g


@dataclass(frozen=True)
class NormClip(ClipRule):
    """Classic norm clipping (11): ``c = max(||g|| / lam, 1)``, so ``||u|| <= lam``.

    >>> NormClip(2.0).factors(torch.tensor([1.0, 4.0]))
    tensor([1., 2.])
    """

    lam: float
    name: ClassVar[str] = "norm"
    granularity: ClassVar[str] = "global"

    def __post_init__(self) -> None:
        _check_lam_eps(self, False)


@dataclass(frozen=True)
class _RelativeClip(ClipRule):
    """Base of the relative rules: threshold ``tau_G = lam * max(||theta_G||, eps)`` over the
    groups of ``granularity``; subclasses set only ``name`` and ``granularity``."""

    lam: float
    eps: float = 1e-3
    relative: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_lam_eps(self, True)


@dataclass(frozen=True)
class AdaptiveClip(_RelativeClip):
    """Adaptive clipping (17): ``c = max(||g|| / (lam max(||theta||, eps)), 1)``.

    >>> AdaptiveClip(0.5).factors(torch.tensor([4.0]), torch.tensor([2.0]))
    tensor([4.])
    """

    name: ClassVar[str] = "adaptive"
    granularity: ClassVar[str] = "global"


@dataclass(frozen=True)
class LayerwiseAdaptiveClip(_RelativeClip):
    """Layer-wise adaptive clipping (18): one factor per parameter tensor ``l``,
    ``c_l = max(||g_l|| / (lam max(||theta_l||_F, eps)), 1)``; block ``l`` moves by ``g_l/c_l``.

    >>> LayerwiseAdaptiveClip(0.5, eps=0.1).thresholds(torch.tensor([0.0, 4.0]))
    tensor([0.0500, 2.0000])
    """

    name: ClassVar[str] = "layerwise"
    granularity: ClassVar[str] = "layer"


@dataclass(frozen=True)
class UnitwiseAGC(_RelativeClip):
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets): one factor per output
    unit (row along dim 0 of tensors with 2+ dims; 0-d and 1-d tensors whole), same form as
    :class:`LayerwiseAdaptiveClip`.

    >>> UnitwiseAGC(0.01)
    UnitwiseAGC(lam=0.01, eps=0.001)
    """

    name: ClassVar[str] = "unitwise"
    granularity: ClassVar[str] = "unit"


@dataclass(frozen=True)
class ValueClip(ClipRule):
    """Coordinate value clipping (``torch.nn.utils.clip_grad_value_``): ``u = clamp(g, -v, v)``.

    Not a scalar scaling, so ``factors`` does not apply; its mean field is ``E[clamp(g)]``.

    >>> ValueClip(1.0).clip(torch.tensor([-3.0, 0.5]), None, None)
    tensor([-1.0000,  0.5000])
    """

    v: float
    name: ClassVar[str] = "value"
    granularity: ClassVar[str] = "coordinate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "v", check_positive("v", self.v))

    def clip(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout) -> torch.Tensor:
        return torch.clamp(g, -self.v, self.v)

    def clip_and_factors(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout,
                         scale: float = 1.0, *, overwrite: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        g = g * scale if scale != 1.0 else g
        return self.clip(g, theta, layout), self.group_factors(g, theta, layout)

    def group_factors(self, g: torch.Tensor, theta: torch.Tensor, layout: Layout
                      ) -> torch.Tensor:
        # "clipped" means some coordinate was clamped; report max |g| / v (>= 1 when clipped)
        return torch.clamp(g.abs().amax(-1, keepdim=True) / self.v, min=1.0)


RULES: dict[str, type[ClipRule]] = {
    cls.name: cls for cls in (NoClip, NormClip, AdaptiveClip, LayerwiseAdaptiveClip,
                              UnitwiseAGC, ValueClip)
}


def make_rule(name: str, lam: float | None = None, eps: float | None = None,
              **kwargs: Any) -> ClipRule:
    """Build a rule from its registry name (``"none"``, ``"norm"``, ``"adaptive"``,
    ``"layerwise"``, ``"unitwise"``, ``"value"``), as the CLI does.

    >>> make_rule("adaptive", lam=0.1)
    AdaptiveClip(lam=0.1, eps=0.001)
    """
    if isinstance(name, ClipRule):
        return name
    if name not in RULES:
        raise ValueError(f"`rule` must be one of {sorted(RULES)}, got {name!r}.")
    cls = RULES[name]
    args: dict[str, Any] = dict(kwargs)
    if cls is ValueClip:
        if lam is None and "v" not in args:
            raise ValueError("`lam` (the value bound v) is required for rule 'value'.")
        args.setdefault("v", lam)
    elif cls is not NoClip:
        if lam is None:
            raise ValueError(f"`lam` is required for rule {name!r} (a number > 0).")
        args["lam"] = lam
        if cls.relative and eps is not None:
            args["eps"] = eps
    return cls(**args)


def rule_from_dict(d: dict[str, Any]) -> ClipRule:
    """Inverse of :meth:`ClipRule.to_dict`."""
    d = dict(d)
    name = d.pop("rule", None)
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r} in a saved configuration; known: {sorted(RULES)}")
    return RULES[name](**d)


__all__ = ["ClipRule", "NoClip", "NormClip", "AdaptiveClip", "LayerwiseAdaptiveClip",
           "UnitwiseAGC", "ValueClip", "RULES", "make_rule", "rule_from_dict"]
