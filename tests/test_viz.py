"""sa_clip.viz: the functions draw what they are given and label their axes."""

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
    ode_line = [line for line in ax.get_lines() if line.get_label() == "ODE solution"][0]
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
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), res.median.numpy())
    ax = plot_clip_fraction(run, window=1)
    raw = np.nanmean(run.clip_fraction.numpy()[:, :-1], 0)       # the last record is NaN
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata()[:-1], raw)
    assert ax.get_ylabel() == "fraction of samples clipped"
    fig = noise_figure(run)
    assert all(a.get_xlabel() == "ODE time τ" for a in fig.axes)
    assert "quadratic variation" in fig.axes[1].get_ylabel()
    no_noise = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=3, chains=2, seed=0)
    with pytest.raises(ValueError, match="record_noise=True"):
        noise_figure(no_noise)
    ax = plot_norms(run)
    assert ax.get_ylabel() == "‖θ‖"
    plt.close("all")


def test_batch_mean_field_plot():
    ax = plot_batch_mean_field([1, 2, 4], torch.ones(3, 2), 0.1 * torch.ones(3, 2),
                               coords=(0, 1), reference=torch.zeros(2))
    assert "batch size M" in ax.get_xlabel() and ax.get_xscale() == "log"
    assert len(ax.get_legend().get_texts()) == 4
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
