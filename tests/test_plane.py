import matplotlib.pyplot as plt
import numpy as np
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
    assert {e.kind for e in eq} >= {"saddle"}
    ode = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None] * torch.tensor([1.0, 2.0])
    own = torch.linspace(0, 1, 4, dtype=torch.float64)[:, None] * torch.tensor([-1.0, 0.5])
    chains = 0.5 * torch.randn(3, 6, 2, dtype=torch.float64, generator=torch.Generator()
                               .manual_seed(0))
    ax = plot_phase_portrait(pf, equilibria=eq, ode_paths=ode, chains=chains, start_ode=own)

    def gid(name):
        return [line for line in ax.get_lines() if line.get_gid() == name]
    # the plotted data are the chains, the ODE curves and the equilibria (P = 2: identity)
    for line, c in zip(gid("chain"), chains):
        assert line.get_zorder() > 1                    # above the streamlines
        np.testing.assert_allclose(line.get_xdata(), c[:, 0].numpy())
        np.testing.assert_allclose(line.get_ydata(), c[:, 1].numpy())
    np.testing.assert_allclose(gid("ode")[0].get_ydata(), ode[:, 1].numpy())
    np.testing.assert_allclose(gid("start-ode")[0].get_xdata(), own[:, 0].numpy())
    marks = np.array([[line.get_xdata()[0], line.get_ydata()[0]] for line in gid("equilibrium")])
    np.testing.assert_allclose(marks, torch.stack([e.theta for e in eq]).numpy())
    # axis limits from what is drawn (8% margin), inside the grid
    pts = np.concatenate([chains.reshape(-1, 2).numpy(), ode.numpy(), own.numpy(), marks])
    lo, hi = pts.min(0), pts.max(0)
    mid, half = (lo + hi) / 2, 0.58 * (hi - lo)
    assert ax.get_xlim() == pytest.approx((max(mid[0] - half[0], -3), min(mid[0] + half[0], 3)))
    assert ax.get_ylim() == pytest.approx((max(mid[1] - half[1], -3), min(mid[1] + half[1], 3)))
    # every line style in the legend, the saddle and the grey loss contours included
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for want in ("loss contours L(θ)", "streamlines of −H (colour: speed)", "saddle",
                 "ODE from the chains' start (circle: start)",
                 "ODE solutions from other starts (circle: start)"):
        assert want in labels, (want, labels)
    assert any(s.startswith("nullcline") for s in labels)
    assert not [t for t in ax.texts if t.get_gid() == "section-note"]     # P = 2: the flow
    assert ax.get_xlabel() == "w1"
    with pytest.raises(ValueError, match="`limits` must be 'auto' or 'grid'"):
        plot_phase_portrait(pf, limits="none")
    plt.close("all")


def test_portrait_of_a_pca_plane_says_it_is_a_section():
    p = sc.problems.real_problem("iris", hidden=(3,))
    run = torch.randn(2, 5, p.P, dtype=p.dtype, generator=torch.Generator().manual_seed(0))
    pl = Plane.pca(run)
    pf = field_on_plane(sc.MeanField(p, sc.NormClip(0.5)), pl, (-3, 3), (-3, 3), n=5)
    ax = plot_phase_portrait(pf, chains=run)
    note = [t for t in ax.texts if t.get_gid() == "section-note"]
    assert note and "section" in note[0].get_text() and "not a flow" in note[0].get_text()
    # one ODE path from the chains' common start is labelled as such
    run[:, 0] = run[0, 0]
    ode = run[0, 0] + torch.linspace(0, 1, 4, dtype=p.dtype)[:, None] * pl.d1
    ax = plot_phase_portrait(pf, chains=run, ode_paths=ode)
    line = [ln for ln in ax.get_lines() if ln.get_gid() == "start-ode"][0]
    np.testing.assert_allclose(line.get_xdata(), pl.project(ode)[:, 0].numpy())
    assert "ODE from the chains' start (circle: start)" in [
        t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlabel() == pl.label(0) and "% of variance" in ax.get_xlabel()
    plt.close("all")


def test_pca_plane_reports_explained_variance():
    gen = torch.Generator().manual_seed(1)
    pts = torch.randn(500, 3, generator=gen, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5])
    pl = Plane.pca(pts)
    ev = torch.linalg.eigvalsh(torch.cov(pts.T)).flip(0)          # descending
    assert pl.explained == pytest.approx((float(ev[0] / ev.sum()), float(ev[1] / ev.sum())),
                                         rel=1e-10)
    assert pl.label(0) == f"PC1 ({float(ev[0] / ev.sum()):.0%} of variance)"
    assert Plane.coordinates(sc.problems.tanh_regression(n=8)).label(1) == "w2"
    with pytest.raises(ValueError, match="`i` must be 0 or 1"):
        pl.label(2)


def test_plane_and_grid_arguments_are_named():
    # the attack: a tensor for the problem, NaN / reversed / empty ranges
    import sa_clip as sc
    p = sc.problems.logistic2d(n=9)
    f = sc.MeanField(p, sc.NormClip(1.0))
    with pytest.raises(TypeError, match="`problem` must be a sa_clip.Problem, got Tensor"):
        sc.Plane.coordinates(p.theta0, 0, 1)
    pl = sc.Plane.coordinates(p, 0, 1)
    for bad in ((float("nan"), 1.0), (1.0, -1.0), (1.0, 1.0)):
        with pytest.raises(ValueError, match="`a_range` must be finite numbers with lo < hi"):
            sc.field_on_plane(f, pl, bad, (-1, 1), n=3)
    with pytest.raises(ValueError, match="`b_range`"):
        sc.field_on_plane(f, pl, (-1, 1), (2, float("inf")), n=3)
    with pytest.raises(TypeError, match="`a_range` must be a pair of numbers"):
        sc.field_on_plane(f, pl, (1, 2, 3), (-1, 1), n=3)


def test_projection_and_grid_in_chunks_equal_one_pass(monkeypatch):
    import sa_clip.plane as plane_mod

    g = torch.Generator().manual_seed(3)
    p = sc.problems.tanh_regression()
    pl = Plane(torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, 0.2], dtype=torch.float64),
               torch.tensor([-0.3, 1.0], dtype=torch.float64))
    pts = torch.randn(5, 7, 2, generator=g, dtype=torch.float64)
    pf = field_on_plane(sc.MeanField(p, sc.NormClip(1.0)), pl, (-2, 2), (-1, 3), n=6)
    whole = pl.project(pts)
    monkeypatch.setattr(plane_mod, "PROJECT_ROWS", 4)        # 35 points in 9 chunks
    monkeypatch.setattr(plane_mod, "GRID_ROWS", 5)           # 36 grid points in 8 calls
    assert torch.allclose(pl.project(pts), whole, rtol=1e-14, atol=1e-15)
    # least squares by hand: coordinates c with basis @ c closest to the point
    ref = torch.linalg.lstsq(pl.basis, pts.reshape(-1, 2).T).solution.T.reshape(5, 7, 2)
    assert torch.allclose(whole, ref, rtol=1e-12, atol=1e-13)
    pf2 = field_on_plane(sc.MeanField(p, sc.NormClip(1.0)), pl, (-2, 2), (-1, 3), n=6)
    for a, b in [(pf.flow, pf2.flow), (pf.loss, pf2.loss), (pf.speed, pf2.speed)]:
        assert torch.allclose(a, b, rtol=1e-14, atol=1e-15)
