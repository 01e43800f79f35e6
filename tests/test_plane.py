import matplotlib.pyplot as plt
import pytest
import torch

import sa_clip as sc
from sa_clip.plane import Plane, field_on_plane
from sa_clip.viz import plot_phase_portrait


def test_coordinates_plane_is_the_parameter_plane():
    p = sc.problems.tanh_regression(n=16)
    field = sc.MeanField(p, sc.NormClip(1.0))
    pf = field_on_plane(field, Plane.coordinates(p), (-2, 2), (-1, 3), n=7)
    # against a plain loop over grid points
    for i in (0, 3, 6):
        for j in (0, 5):
            th = torch.stack([pf.a[j], pf.b[i]])
            assert torch.allclose(pf.flow[i, j], -field(th), rtol=1e-12, atol=1e-14)
            assert float(pf.loss[i, j]) == pytest.approx(float(p.loss(th)), rel=1e-12)
    assert float(pf.residual.max()) < 1e-12
    assert Plane.coordinates(p).names == ("w1", "w2")


def test_projection_round_trip_and_residual():
    p = sc.problems.real_problem("iris", hidden=(3,))
    pl = Plane.random(p, seed=3)
    ab = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=p.dtype)
    pts = pl.center + ab[:, :1] * pl.d1 + ab[:, 1:] * pl.d2
    assert torch.allclose(pl.project(pts), ab, atol=1e-10)
    pf = field_on_plane(sc.MeanField(p, sc.NormClip(0.5)), pl, (-1, 1), (-1, 1), n=3)
    assert float(pf.residual.min()) > 0          # P > 2: the field leaves the plane
    # filter normalisation: each unit of d1 has the norm of the same unit of the weights
    from sa_clip.problem import group_norms
    assert torch.allclose(group_norms(pl.d1, p.layout, "unit"),
                          group_norms(p.theta0, p.layout, "unit"), rtol=1e-10)


def test_pca_plane_spans_trajectory():
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(200, 2, generator=gen, dtype=torch.float64) @ torch.tensor(
        [[3.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
    pl = Plane.pca(pts)
    assert abs(float(pl.d1[0])) == pytest.approx(1.0, abs=1e-2)
    assert abs(float(pl.d2[1])) == pytest.approx(1.0, abs=1e-2)


def test_plane_errors():
    p = sc.problems.tanh_regression(n=8)
    with pytest.raises(ValueError, match="`i` must index"):
        Plane.coordinates(p, 2, 1)
    with pytest.raises(ValueError, match="linearly independent"):
        Plane(torch.zeros(2), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="`n` must be an integer >= 2"):
        field_on_plane(sc.MeanField(p, sc.NoClip()), Plane.coordinates(p), (0, 1), (0, 1), n=1)
    with pytest.raises(ValueError, match="at least 3 finite points"):
        Plane.pca(torch.zeros(2, 4))


def test_phase_portrait_draws_everything():
    p = sc.problems.tanh_regression(n=16)
    field = sc.MeanField(p, sc.NormClip(1.0))
    pf = field_on_plane(field, Plane.coordinates(p), (-3, 3), (-3, 3), n=15)
    eq = sc.find_equilibria(field, starts=torch.tensor([[1.0, 1.0], [0.1, -0.1]],
                                                       dtype=torch.float64))
    ode = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None] * torch.tensor([1.0, 2.0])
    chains = torch.randn(3, 6, 2, dtype=torch.float64)
    ax = plot_phase_portrait(pf, equilibria=eq, ode_paths=ode, chains=chains)
    labels = ax.get_legend_handles_labels()[1]
    assert "ODE solution" in labels and "SGD chains" in labels
    assert any("equilibrium" in s or s == "saddle" for s in labels)
    assert ax.get_xlabel() == "w1"
    plt.close("all")
