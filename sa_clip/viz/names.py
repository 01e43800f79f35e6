"""Readable names for figures: clipping rules in words and parameters by layer and index.

>>> import sa_clip as sc
>>> describe_rule(sc.NormClip(1.0))
'classic clipping, λ = 1'
>>> describe_rule(sc.AdaptiveClip(0.3, eps=1e-3))
'adaptive clipping, λ = 0.3, ε = 0.001'
"""

from __future__ import annotations

from typing import Any

#: the words for each rule's registry name (``ClipRule.name``)
RULE_WORDS = {"none": "no clipping (plain SGD)", "norm": "classic clipping",
              "adaptive": "adaptive clipping", "layerwise": "layer-wise adaptive clipping",
              "unitwise": "unit-wise clipping (AGC)", "value": "value clipping"}


def describe_rule(rule: Any) -> str:
    """A clipping rule in words with its parameters, for titles and legends:
    ``"classic clipping, λ = 1"``, ``"value clipping at ±0.5"``. A string is taken as a
    rule name (``"norm"`` -> ``"classic clipping"``); an unknown rule gives its class name."""
    if isinstance(rule, str):
        return RULE_WORDS.get(rule, rule)
    name = getattr(rule, "name", None)
    words = RULE_WORDS.get(name, type(rule).__name__)
    if name == "value":
        return f"{words} at ±{rule.v:g}"
    parts = [words]
    if hasattr(rule, "lam"):
        parts.append(f"λ = {rule.lam:g}")
    if hasattr(rule, "eps"):
        parts.append(f"ε = {rule.eps:g}")
    return ", ".join(parts)


__all__ = ["describe_rule", "RULE_WORDS"]
