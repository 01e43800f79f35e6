"""Figures for slides and papers: dpi and style on every figure function, titles and axes in
words, log-spaced early records, optional captions, the gallery's resolution."""

from __future__ import annotations

import glob
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import load_example  # noqa: E402

import sa_clip as sc  # noqa: E402
from sa_clip import viz  # noqa: E402
from sa_clip.plane import _param_name  # noqa: E402
from sa_clip.sgd.recorder import early_steps, record_count, record_steps  # noqa: E402
from sa_clip.viz import _style  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")

#: every public figure function of sa_clip.viz (all take dpi and style)
FIGURE_FUNCTIONS = ["plot_phase_portrait", "plot_ensemble", "plot_ode_vs_sgd",
                    "ode_vs_sgd_figure", "plot_tracking", "plot_clip_fraction", "noise_figure",
                    "plot_norms", "plot_batch_mean_field", "animate_chains",
                    "plot_fluctuation_ellipses", "plot_azuma", "plot_blowup", "plot_basins",
                    "plot_shadowing"]


@pytest.fixture(scope="module")
def small():
    p = sc.problems.logistic2d(n=20)
    r = sc.NormClip(1.0)
    run = sc.simulate_sgd(p, r, "harmonic:0.5", steps=40, chains=4, seed=0, record_every=5,
                          record_noise=True)
    sol = sc.solve_ode(sc.MeanField(p, r), p.theta0, run.tau)
    res = sc.tracking_distance(run, sc.MeanField(p, r), horizon=0.5, keep_paths=[0],
                               starts=[0.2, 0.5, 1.0])
    return p, r, run, sol, res


def test_every_figure_function_takes_dpi_and_style():
    assert set(FIGURE_FUNCTIONS) <= set(viz.__all__)
    for name in FIGURE_FUNCTIONS:
        fn = getattr(viz, name)
        assert hasattr(fn, "__wrapped__"), name          # the figure_function decorator
        assert "``style``" in fn.__doc__, name


@pytest.mark.parametrize("kw, words", [
    (dict(style="poster"), ("`style`", "poster", "talk")),
    (dict(dpi=0), ("`dpi`", "0")),
    (dict(dpi=10**6), ("`dpi`",)),
    (dict(dpi=100.5), ("`dpi`", "100.5")),
])
def test_bad_dpi_or_style_is_named(kw, words):
    with pytest.raises(ValueError) as err:
        viz.plot_ensemble(np.arange(3.0), np.ones((2, 3)), **kw)
    for w in words:
        assert w in str(err.value)


def test_dpi_is_written_to_the_png(tmp_path):
    from PIL import Image
    ax = viz.plot_ensemble(np.arange(3.0), np.ones((2, 3)), dpi=200)
    assert ax.figure.get_dpi() == 200
    path = viz.save_figure(ax.figure, tmp_path, "f.png")
    with Image.open(path) as im:
        assert round(im.info["dpi"][0]) == 200
        assert im.size[0] == round(6.4 * 200)


def test_paper_style_is_a_column_with_small_text():
    ax = viz.plot_ensemble(np.arange(3.0), np.ones((2, 3)), style="paper")
    fig = ax.figure
    assert fig.get_size_inches()[0] == pytest.approx(_style.PAPER_WIDTH[0])
    assert ax.xaxis.label.get_fontsize() == 8
    fig.canvas.draw()
    assert ax.get_xticklabels()[0].get_fontsize() == 7
    assert plt.rcParams["font.size"] == 10            # the style does not leak
    plt.close(fig)


def test_talk_style_puts_at_most_two_panels_across(small):
    p, _r, run, sol, res = small
    fig = viz.ode_vs_sgd_figure(run, sol, coords=(0, 1, 0), problem=p, style="talk")
    x0 = {round(ax.get_position().x0, 3) for ax in fig.axes}
    assert len(fig.axes) == 3 and len(x0) == 2                  # 2 x 2, one cell empty
    assert tuple(fig.get_size_inches()) == pytest.approx(_style.TALK_SIZE)
    assert fig.axes[0].xaxis.label.get_fontsize() == 14
    plt.close(fig)
    fig = viz.plot_shadowing(run, res, problem=p, style="talk", dpi=100)
    assert len(fig.axes) >= 3
    cols = {round(ax.get_position().x0, 2) for ax in fig.axes[:3]}
    assert len(cols) == 2
    plt.close(fig)
    fig = viz.noise_figure(run, style="talk")
    assert len(fig.axes) == 2
    plt.close(fig)


def test_nested_figure_functions_share_the_outer_style(small):
    p, _r, run, sol, _res = small
    fig = viz.ode_vs_sgd_figure(run, sol, coords=(0, 1), problem=p, style="paper")
    assert fig.get_size_inches()[0] == pytest.approx(_style.PAPER_WIDTH[1])
    assert all(ax.yaxis.label.get_fontsize() == 8 for ax in fig.axes)
    plt.close(fig)


def test_ode_vs_sgd_caption_is_optional(small):
    p, _r, run, sol, _res = small
    fig = viz.ode_vs_sgd_figure(run, sol, coords=(0, 1), problem=p)
    assert fig._supxlabel is None                    # no hard-coded footer
    plt.close(fig)
    fig = viz.ode_vs_sgd_figure(run, sol, coords=(0, 1), problem=p,
                                caption=viz.ODE_VS_SGD_CAPTION)
    assert "ensemble of 4 chains" in fig._supxlabel.get_text()
    plt.close(fig)


def test_tracking_has_a_log_x_axis(small):
    *_, res = small
    ax = viz.plot_tracking(res)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    plt.close(ax.figure)
    p, r, run, *_ = small
    res0 = sc.tracking_distance(run, sc.MeanField(p, r), horizon=0.5, starts=[0.0, 0.5, 1.0])
    ax = viz.plot_tracking(res0)
    assert ax.get_xscale() == "symlog"               # a start at 0: linear up to 0.5
    assert ax.xaxis.get_transform().linthresh == pytest.approx(0.5)
    ticks = ax.get_xticks()                          # 0, then decades: no overlapping labels
    assert ticks[0] == 0 and not ((ticks > 0) & (ticks < 0.5)).any()
    plt.close(ax.figure)
    ax = viz.plot_tracking(res0, logx=False)
    assert ax.get_xscale() == "linear"
    plt.close(ax.figure)


@pytest.mark.parametrize("rule, words", [
    (sc.NormClip(1.0), "classic clipping, λ = 1"),
    (sc.NoClip(), "no clipping (plain SGD)"),
    (sc.AdaptiveClip(0.3, eps=1e-3), "adaptive clipping, λ = 0.3, ε = 0.001"),
    (sc.LayerwiseAdaptiveClip(0.5, eps=0.1), "layer-wise adaptive clipping, λ = 0.5, ε = 0.1"),
    (sc.UnitwiseAGC(0.2), "unit-wise clipping (AGC), λ = 0.2, ε = 0.001"),
    (sc.ValueClip(0.5), "value clipping at ±0.5"),
    ("norm", "classic clipping"),
])
def test_rules_in_words(rule, words):
    assert viz.describe_rule(rule) == words
    assert "(" not in words or "AGC" in words or "plain" in words   # not a repr


def test_parameters_by_layer_and_index():
    p = sc.problems.real_problem("wine", hidden=(16,))
    b = {blk.name: blk for blk in p.blocks}
    w2 = b["2.weight"]                                # shape (3, 16)
    assert _param_name(p, w2.start + 1 * 16 + 3) == "layer 2, weight (1, 3)"
    assert _param_name(p, b["0.bias"].start + 4) == "layer 0, bias 4"
    assert [_param_name(sc.problems.make_problem("tanh"), k) for k in (0, 1)] == ["w1", "w2"]
    assert _param_name(sc.problems.logistic2d(n=5), 1) == "w[1]"
    # the brute-force inverse: the named entry is the flat index
    for k in (0, 5, 207, 230, 274):
        name = _param_name(p, k)
        layer, rest = name.split(", ", 1)
        param, idx = rest.split(" ", 1)
        blk = b[f"{layer.split()[1]}.{param}"]
        ij = tuple(int(v) for v in idx.strip("()").split(", "))
        flat = torch.arange(blk.numel).reshape(blk.shape)[ij]
        assert blk.start + int(flat) == k


def test_log_spaced_early_records():
    assert early_steps(1000, 10) == [1, 2, 4, 5, 8]
    assert early_steps(1000, 4) == []                 # short first segment: unchanged
    assert record_steps(40, 10) == [0, 1, 2, 4, 5, 8, 10, 20, 30, 40]
    for steps in range(1, 80):
        for every in range(1, 40):
            assert record_count(steps, every) == len(record_steps(steps, every))
    p = sc.problems.logistic2d(n=20)
    kw = dict(steps=40, chains=3, seed=1)
    full = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", **kw)
    run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", record_every=10, **kw)
    assert run.steps.tolist() == [0, 1, 2, 4, 5, 8, 10, 20, 30, 40]
    torch.testing.assert_close(run.theta, full.theta[:, run.steps])
    torch.testing.assert_close(run.tau, full.tau[run.steps])


@pytest.mark.parametrize("name", ["compare_rules", "ode_vs_sgd", "exploding", "tracking",
                                  "shadowing", "linear_noise", "animation", "phase_portrait"])
def test_examples_take_dpi_and_style(name):
    mod = load_example(name)
    args = mod.parse([])
    assert args.dpi == 150 and args.style is None
    assert mod.parse(["--style", "talk", "--dpi", "200"]).style == "talk"


def test_example_writes_its_dpi_and_style(tmp_path):
    from PIL import Image
    load_example("exploding").main(["--steps", "10", "--chains", "4", "--out", str(tmp_path),
                                    "--dpi", "130", "--style", "talk"])
    with Image.open(tmp_path / "exploding.png") as im:
        assert round(im.info["dpi"][0]) == 130
        assert im.size == (round(_style.TALK_SIZE[0] * 130), round(4.8 * 130))


def test_every_committed_figure_is_at_least_120_dpi():
    from PIL import Image
    pngs = sorted(glob.glob(os.path.join(ROOT, "figures", "**", "*.png"), recursive=True))
    assert pngs
    low = []
    for path in pngs:
        with Image.open(path) as im:
            dpi = im.info.get("dpi", (0, 0))[0]
        if dpi < 119.5:
            low.append(f"{os.path.relpath(path, ROOT)}: {dpi:.0f} dpi")
    assert not low, "figures below 120 dpi (run examples/gallery.py): " + ", ".join(low)
