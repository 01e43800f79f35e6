"""sa_clip.viz: the functions draw what they are given and label their axes."""

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import sa_clip as sc  # noqa: E402
from sa_clip.plane import Plane, field_on_plane  # noqa: E402
from sa_clip.viz import (  # noqa: E402
    animate_chains,
    noise_figure,
    ode_vs_sgd_figure,
    plot_batch_mean_field,
    plot_clip_fraction,
    plot_ensemble,
    plot_norms,
    plot_ode_vs_sgd,
    plot_tracking,
)


@pytest.fixture(scope="module")
def setup():
    p = sc.problems.logistic2d(n=30)
    rule = sc.NormClip(0.5)
    run = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=30, chains=5, seed=0,
                          record_noise=True)
    sol = sc.solve_ode(sc.MeanField(p, rule), p.theta0, run.tau)
    return p, rule, run, sol


def test_plot_ensemble_draws_median_and_band():
    t = np.arange(5.0)
    v = np.array([[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [1, 2, 3, 4, np.nan]], dtype=float)
    ax = plot_ensemble(t, v, n_faint=0)
    med = ax.get_lines()[-1].get_ydata()
    np.testing.assert_allclose(med, [1, 2, 3, 4, 5])       # NaN (blown-up) ignored
    with pytest.raises(ValueError, match="`values` must have shape"):
        plot_ensemble(t, v[:, :3])
    plt.close("all")


def test_ode_vs_sgd_labels_and_curves(setup):
    p, _, run, sol = setup
    ax = plot_ode_vs_sgd(run, sol, coord=1, problem=p)
    assert ax.get_xlabel() == "ODE time τ" and ax.get_ylabel() == "w[1]"
    ode_line = [line for line in ax.get_lines() if line.get_gid() == "ode"][0]
    assert ode_line.get_label() == "ODE from the chains' start θ0"
    np.testing.assert_allclose(ode_line.get_ydata(), sol.theta[:, 1].numpy())
    assert "median of 5" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    plane = Plane.coordinates(p)
    fig = ode_vs_sgd_figure(run, sol, coords=(0, 1), plane=plane)
    assert [a.get_ylabel() for a in fig.axes] == ["w[0]", "w[1]"]
    with pytest.raises(ValueError, match="`coord` must index"):
        plot_ode_vs_sgd(run, sol, coord=7)
    with pytest.raises(ValueError, match="at least one"):
        ode_vs_sgd_figure(run, sol, coords=())
    plt.close("all")


def test_tracking_clip_noise_norms(setup):
    p, rule, run, _ = setup
    res = sc.tracking_distance(run, sc.MeanField(p, rule), horizon=0.5, starts=[0.0, 1.0])
    ax = plot_tracking(res, label="classic")
    assert ax.get_yscale() == "log" and "ODE time τ" in ax.get_xlabel()
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(),
                               np.quantile(res.distance.numpy(), 0.5, axis=0))
    assert ax.get_legend().get_texts()[0].get_text() == "classic: median of 5 chains, 10%–90% band"
    ax = plot_clip_fraction(run, window=1)
    raw = np.nanmean(run.clip_fraction.numpy()[:, :-1], 0)       # the last record is NaN
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata()[:-1], raw)
    assert ax.get_ylabel() == "fraction of samples clipped\n(mean over chains)"
    assert "mean over 5 chains" in ax.get_legend().get_texts()[0].get_text()
    fig = noise_figure(run)
    assert all(a.get_xlabel() == "ODE time τ" for a in fig.axes)
    assert "quadratic variation" in fig.axes[1].get_ylabel()
    np.testing.assert_allclose(fig.axes[0].get_lines()[-1].get_ydata(),
                               np.quantile(run.xi.norm(dim=-1).numpy(), 0.5, axis=0))
    no_noise = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=3, chains=2, seed=0)
    with pytest.raises(ValueError, match="record_noise=True"):
        noise_figure(no_noise)
    ax = plot_norms(run)
    assert ax.get_ylabel() == "‖θ‖"
    np.testing.assert_allclose(ax.get_lines()[2].get_ydata(), run.theta[2].norm(dim=-1))
    plt.close("all")


def test_clip_fraction_smoothing_has_no_edge_effect():
    # the smoothed curve is a symmetric moving average whose window shrinks at the ends:
    # against a plain loop; it starts and ends at the raw value
    gen = torch.Generator().manual_seed(0)
    cf = torch.rand(3, 40, generator=gen, dtype=torch.float64)
    cf[1, 7] = float("nan")
    tr = sc.Trajectory(torch.zeros(3, 40, 1, dtype=torch.float64),
                       torch.arange(40, dtype=torch.float64), torch.arange(40),
                       torch.full((3,), -1), cf)
    ax = plot_clip_fraction(tr, window=9)
    raw = np.nanmean(cf.numpy(), 0)
    smooth = [line for line in ax.get_lines() if line.get_gid() == "smoothed"][0].get_ydata()
    ref = [raw[i - min(4, i, 39 - i):i + min(4, i, 39 - i) + 1].mean() for i in range(40)]
    np.testing.assert_allclose(smooth, ref, rtol=1e-12)
    assert smooth[0] == pytest.approx(raw[0]) and smooth[-1] == pytest.approx(raw[-1])
    assert "moving average of 9 records" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="`window` must be an integer >= 1"):
        plot_clip_fraction(tr, window=0)
    plt.close("all")


class _Predicted:
    """A synthetic linear-noise prediction: V(t) = t * A A^T, mean 0.1 t along (1, .., 1)."""

    def __init__(self, p):
        self.tau = torch.linspace(0, 2, 9, dtype=torch.float64)
        a = torch.arange(1.0, 1.0 + p * p, dtype=torch.float64).reshape(p, p) / (p * p)
        self.mean = 0.1 * self.tau[:, None] * torch.ones(p, dtype=torch.float64)
        self.cov = self.tau[:, None, None] * (a @ a.T)


def _band_edges(ax, gid="predicted"):
    """Lower and upper edges of a fill_between, as functions of x (from its vertices)."""
    verts = [c for c in ax.collections if c.get_gid() == gid][0].get_paths()[0].vertices
    return verts


def test_predicted_band_is_the_projected_gaussian_quantile(setup):
    p, _, run, sol = setup
    pred = _Predicted(2)
    ax = plot_ode_vs_sgd(run, sol, coord=1, problem=p, predicted=pred)
    band = [c for c in ax.collections if c.get_gid() == "predicted"][0]
    assert band.get_label() == "predicted 10%–90% (linear noise)"
    # closed form: V_11(t) = t (A A^T)_11, band 0.1 t +- 1.2816 sqrt(V_11)
    t = pred.tau.numpy()
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64) / 4
    sd = np.sqrt(t * float((a @ a.T)[1, 1]))
    lower, upper = 0.1 * t - 1.2816 * sd, 0.1 * t + 1.2816 * sd
    verts = _band_edges(ax)
    for x, y in verts:
        k = int(np.argmin(abs(t - x)))
        assert abs(t[k] - x) < 1e-12
        assert np.isclose(y, lower[k], atol=1e-4) or np.isclose(y, upper[k], atol=1e-4)
    assert np.isclose(verts[:, 1].max(), upper.max(), atol=1e-4)
    assert np.isclose(verts[:, 1].min(), lower.min(), atol=1e-4)
    # on an orthonormal (PCA) plane the variance is d^T V d
    plane = Plane.pca(run.theta.reshape(-1, 2))
    ax = plot_ode_vs_sgd(run, sol, coord=0, plane=plane, predicted=pred)
    verts = _band_edges(ax)
    d = plane.d1.double()
    sd = torch.sqrt(torch.einsum("tij,i,j->t", pred.cov, d, d)).numpy()
    centre = plane.project(pred.mean)[:, 0].numpy()
    assert np.isclose(verts[:, 1].max(), (centre + 1.2816 * sd).max(), atol=1e-4)
    assert np.isclose(verts[:, 1].min(), (centre - 1.2816 * sd).min(), atol=1e-4)
    assert "% of variance)" in ax.get_ylabel()
    with pytest.raises(ValueError, match=r"\.mean \(T, P\)"):
        plot_ode_vs_sgd(run, sol, coord=0, predicted=_Predicted(3))
    with pytest.raises(TypeError, match="lacks cov"):
        plot_ode_vs_sgd(run, sol, coord=0, predicted=type("X", (), {"tau": 1, "mean": 2})())
    fig = ode_vs_sgd_figure(run, sol, coords=(0, 1), problem=p, predicted=pred)
    assert all(any(c.get_gid() == "predicted" for c in a.collections) for a in fig.axes)
    plt.close("all")


def test_batch_mean_field_plot():
    means = torch.tensor([[1.0, 2.0], [1.5, 2.5], [1.7, 2.9]])
    ax = plot_batch_mean_field([1, 2, 4], means, 0.1 * torch.ones(3, 2), coords=(0, 1),
                               reference=torch.tensor([0.5, -1.0]))
    assert "batch size M" in ax.get_xlabel() and ax.get_xscale() == "log"
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_xdata(), [1, 2, 4])
    np.testing.assert_allclose(lines[0].get_ydata(), means[:, 0].numpy())
    refs = [line for line in lines if line.get_linestyle() == ":"]
    assert [float(r.get_ydata()[0]) for r in refs] == [0.5, -1.0]
    plt.close("all")


def test_animation_frames_follow_the_chains(setup):
    p, rule, run, sol = setup
    pf = field_on_plane(sc.MeanField(p, rule), Plane.coordinates(p), (-2, 2), (-2, 2), n=7)
    anim = animate_chains(pf, run, ode=sol, frames=4)
    cloud = [line for line in anim._fig.axes[0].get_lines()
             if line.get_label().endswith("SGD chains")][0]
    anim._init_draw()
    anim._func(3)                                   # the last frame: the last record
    np.testing.assert_allclose(cloud.get_xdata(), run.theta[:, -1, 0].numpy())
    with pytest.raises(ValueError, match="`frames`"):
        animate_chains(pf, run, frames=0)
    plt.close("all")


def _by_gid(ax, gid):
    return [line for line in ax.get_lines() if line.get_gid() == gid]


@pytest.fixture(scope="module")
def shadow_setup():
    p = sc.problems.logistic2d(n=30)
    rule = sc.NormClip(0.5)
    run = sc.simulate_sgd(p, rule, "power:0.5,0.6", steps=120, chains=4, seed=0)
    res = sc.tracking_distance(run, sc.MeanField(p, rule), horizon=0.5,
                               starts=[0.2, 0.6, 1.2, 2.0, 3.0], keep_paths=[1])
    return p, run, res


def test_step_size_at_reads_the_schedule():
    p = sc.problems.logistic2d(n=10)
    run = sc.simulate_sgd(p, sc.NoClip(), "power:0.5,0.6", steps=30, chains=1, seed=0)
    n = torch.arange(30, dtype=torch.float64)
    a = 0.5 / (n + 1) ** 0.6
    s = run.tau[:-1] + 0.3 * a                                 # inside step n's interval
    np.testing.assert_allclose(sc.viz.step_size_at(run, s), a.numpy(), rtol=1e-12)


def test_step_size_at_uses_the_stored_schedule_between_records():
    """With record_every = 25 a start time between two records gets a(n(s)) of its own step,
    not the mean step of the record interval (35% off early on a power law)."""
    p = sc.problems.logistic2d(n=10)
    sched = sc.PowerLaw(0.5, 0.7)
    run = sc.simulate_sgd(p, sc.NoClip(), sched, steps=200, chains=1, seed=0,
                          record_every=25)
    grid = sched.tau(200)
    n = torch.tensor([0, 1, 3, 7, 30, 111, 199])
    s = grid[n] + 0.5 * sched.rates(200)[n]                 # inside step n
    want = sched.rates(200)[n].numpy()
    np.testing.assert_allclose(sc.viz.step_size_at(run, s), want, rtol=1e-12)
    # a run whose schedule cannot be rebuilt falls back to the records' mean step
    run.meta = {}
    got = sc.viz.step_size_at(run, s)
    # (steps 0, 1 are records of their own since the early records are log-spaced; step 3
    # lies between records 2 and 4, step 30 between 25 and 50)
    assert abs(got[2] / want[2] - 1) > 0.1 and abs(got[4] / want[4] - 1) > 0.1
    rec = run.steps.tolist()
    i = rec.index(25)
    np.testing.assert_allclose(got[4], float(run.tau[i + 1] - run.tau[i]) / 25, rtol=1e-12)


def test_shadowing_draws_the_tracking_arrays(shadow_setup):
    from sa_clip.viz import plot_shadowing, step_size_at
    p, run, res = shadow_setup
    fig = plot_shadowing(run, res, chain=1, problem=p, n_show=3)
    ax_a, ax_b, ax_c = fig.axes[:3]
    assert (ax_a.get_xlabel(), ax_a.get_ylabel()) == ("w[0]", "w[1]")
    show = [0, 2, 4]
    # (a) the flow segments are the kept paths of chain 1 (P = 2: the coordinate plane)
    segs = _by_gid(ax_a, "segment")
    assert len(segs) == 3
    for line, k in zip(segs, show):
        np.testing.assert_allclose(line.get_xdata(), res.paths[0, k, :, 0].numpy())
        np.testing.assert_allclose(line.get_ydata(), res.paths[0, k, :, 1].numpy())
    np.testing.assert_allclose(_by_gid(ax_a, "path")[0].get_ydata(), run.theta[1, :, 1])
    # (b) one gap curve per shown start: the median over chains at h > 0
    h = res.offsets.numpy()
    for line, k in zip(_by_gid(ax_b, "gap"), show):
        np.testing.assert_allclose(line.get_xdata(), h[h > 0])
        ref = np.median(res.gap[:, k].numpy(), axis=0)[h > 0]
        np.testing.assert_allclose(line.get_ydata(), ref, rtol=1e-12)
    # (c) the median D_T and C sqrt(a(n(s))) with C fitted in log space
    med = np.quantile(res.distance.numpy(), 0.5, axis=0)
    np.testing.assert_allclose(_by_gid(ax_c, "median")[0].get_ydata(), med)
    s = res.start.numpy()
    root_a = np.sqrt(step_size_at(run, s))
    c = np.exp(np.mean(np.log(med) - np.log(root_a)))
    np.testing.assert_allclose(_by_gid(ax_c, "reference")[0].get_ydata(), c * root_a)
    slope = np.polyfit(np.log(s), np.log(med), 1)[0]
    assert f"{slope:.2f}" in " ".join(t.get_text() for t in ax_c.texts)
    assert ax_c.get_xscale() == "log" and ax_c.get_yscale() == "log"
    ratio = med[0] / med[-1]
    assert f"median $D_T$ falls {ratio:.1f}× from s = 0.2 to s = 3" in fig.get_suptitle()
    plt.close("all")


def test_shadowing_pca_plane_and_errors(shadow_setup):
    from sa_clip.viz import plot_shadowing
    p, run, res = shadow_setup
    # P > 2: the PCA plane of the run, axes with their share of the variance
    x = torch.cat([run.theta, run.theta[..., :1] ** 2], -1)         # P = 3
    run3 = sc.Trajectory(x, run.tau, run.steps, run.blowup_step, run.clip_fraction)
    res3 = sc.tracking_distance(run3, lambda th: th, horizon=0.5, starts=[0.2, 1.0],
                                keep_paths=1)
    fig = plot_shadowing(run3, res3)
    plane = Plane.pca(x.reshape(-1, 3))
    assert fig.axes[0].get_xlabel() == f"PC1 ({plane.explained[0]:.0%} of variance)"
    seg = _by_gid(fig.axes[0], "segment")[0]
    np.testing.assert_allclose(seg.get_xdata(), plane.project(res3.paths[0, 0])[:, 0])
    with pytest.raises(ValueError, match=r"`chain` = 0 has no flow segments.*keep_paths=\[0\]"):
        plot_shadowing(run, res, chain=0)
    with pytest.raises(ValueError, match="`chain` must be a chain index in"):
        plot_shadowing(run, res, chain=9)
    with pytest.raises(ValueError, match="`result` is for 2 chains, `trajectory` has 4"):
        plot_shadowing(run3, res3.__class__(res.start, res.distance[:2], 0.5, res.h,
                                            gap=res.gap[:2]))
    with pytest.raises(ValueError, match="`n_show`"):
        plot_shadowing(run, res, chain=1, n_show=0)
    plt.close("all")


@pytest.mark.slow
def test_shadowing_example_runs_at_tiny_size(tmp_path, capsys):
    from helpers import load_example
    path = load_example("shadowing").main(["--steps", "80", "--chains", "3", "--starts", "3",
                                           "--horizon", "0.5", "--record-every", "2",
                                           "--out", str(tmp_path)])
    assert path.endswith("shadowing.png") and os.path.getsize(path) > 1000
    assert "wrote" in capsys.readouterr().out


def test_ellipse_plot_checks_shape():
    from sa_clip.viz.theory import plot_fluctuation_ellipses

    with pytest.raises(ValueError, match="`errors` must have shape"):
        plot_fluctuation_ellipses(np.zeros((5, 3)), np.eye(2))
