"""Theta geometry (sa_clip.layout): blocks, groups, norms and coordinate names, against loops."""

import math

import pytest
import torch

import sa_clip as sc
from problems import _units
from sa_clip.layout import Block, Layout, group_norms

LAY = Layout((Block("w", (3, 2), 0, 6), Block("s", (), 6, 7), Block("b", (3,), 7, 10),
              Block("t", (2, 1, 2), 10, 14)))


def _brute_groups(granularity):
    """(start, stop) of each group, by hand."""
    if granularity == "global":
        return [(0, LAY.size)]
    if granularity == "layer":
        return [(b.start, b.stop) for b in LAY.blocks]
    return _units(LAY)                          # the unit-wise ranges, built by hand


@pytest.mark.parametrize("granularity", ["global", "layer", "unit"])
def test_group_norms_equal_a_loop_over_groups(granularity):
    x = torch.randn(4, 5, LAY.size, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    x[0, 0, :6] = 0.0                                     # a zero group: norm 0, gradient 0
    got = group_norms(x, LAY, granularity)
    groups = _brute_groups(granularity)
    assert LAY.group_sizes(granularity) == [b - a for a, b in groups]
    ref = torch.tensor([[[math.sqrt(sum(float(v) ** 2 for v in x[i, j, a:b])) for a, b in groups]
                         for j in range(5)] for i in range(4)], dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=1e-14, atol=0)
    index, n = LAY.groups(granularity)
    assert n == len(groups) and index.shape == (LAY.size,)
    assert all(bool((index[a:b] == g).all()) for g, (a, b) in enumerate(groups))
    z = torch.zeros(LAY.size, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(group_norms(z, LAY, granularity).sum(), z)
    assert torch.equal(g, torch.zeros_like(g))             # finite at zero


def test_coordinate_names_and_unflatten():
    names = LAY.coordinate_names()
    assert len(names) == LAY.size and names[:2] == ["w[0]", "w[1]"]
    assert names[6] == "s" and names[9] == "b[2]" and names[13] == "t[3]"
    assert [LAY.coordinate_name(k) for k in range(LAY.size)] == names
    assert LAY.coordinate_name(99) == "theta[99]"
    with pytest.raises(TypeError, match="`k` must be an integer coordinate index"):
        LAY.coordinate_name(1.0)
    theta = torch.arange(LAY.size, dtype=torch.float64)
    parts = LAY.unflatten(theta)
    assert parts["w"].shape == (3, 2) and float(parts["s"]) == 6 and parts["t"][1, 0, 1] == 13
    with pytest.raises(ValueError, match=r"`granularity` must be one of \['global', 'layer', "
                                         r"'unit'\]"):
        LAY.group_sizes("row")


def test_problem_layout_names_match_the_model():
    p = sc.problems.logistic2d()
    assert p.layout.coordinate_names() == ["w[0]", "w[1]"]
    assert sc.problems.tanh_regression().layout.coordinate_names() == ["w1", "w2"]
