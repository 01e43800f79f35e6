"""The interactive explorer, driven from code under Agg: widgets change what is computed and
drawn, the equilibria drawn are find_equilibria's, snapshots are PNGs, bad options are named."""

from __future__ import annotations

import argparse

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import sa_clip as sc
from sa_clip.plane import Plane, field_on_plane
from sa_clip.viz import explore

matplotlib.use("Agg")

SMALL = dict(chains=4, steps=40, grid=11, starts=3)


@pytest.fixture
def ex():
    e = explore.Explorer(problem="tanh", lam=1.0, animate=False, **SMALL)
    yield e
    plt.close(e.fig)


@pytest.fixture(scope="module")
def ex25():
    # the default grid G = 25: coarser grids miss the tanh toy's minima (narrow valleys).
    # Shared by the two lam-slider tests (a build at G = 25 is most of their time): each sets
    # lam itself before it looks, and lam is all they change.
    e = explore.Explorer(problem="tanh", lam=1.0, animate=False, **dict(SMALL, grid=25))
    yield e
    plt.close(e.fig)


def _drawn(e) -> np.ndarray:
    pts = [np.array(a.get_data(), dtype=float).ravel() for a in e.eq_artists]
    return np.array(sorted(map(tuple, pts))) if pts else np.zeros((0, 2))


def _expected(lam: float, grid: int, extent: float) -> np.ndarray:
    """What find_equilibria gives for this lam from the documented starts, inside the view."""
    p = sc.problems.tanh_regression()
    field = sc.MeanField(p, sc.NormClip(lam))
    pf = field_on_plane(field, Plane.coordinates(p), (-extent, extent), (-extent, extent),
                        n=grid, with_loss=False)
    eq = sc.find_equilibria(field, starts=explore.equilibrium_starts(pf),
                            max_iter=explore.EQ_MAX_ITER)
    pts = [tuple(e.theta.tolist()) for e in eq if float(e.theta.abs().max()) <= extent]
    return np.array(sorted(pts))


@pytest.mark.slow
def test_lam_slider_draws_find_equilibria(ex25):
    ex = ex25
    for lam in (0.3, 2.0):
        ex.sliders["lam"].set_val(lam)
        assert ex.settings.lam == pytest.approx(lam)
        want = _expected(lam, 25, ex.settings.extent)
        got = _drawn(ex)
        assert got.shape == want.shape and len(got) >= 3     # two minima and the saddle
        np.testing.assert_allclose(got, want, atol=1e-8)
    kinds = sorted(e.kind for e in ex.equilibria)
    assert kinds == ["saddle", "stable", "stable"]
    labels = ex.ax.get_legend_handles_labels()[1]
    assert "stable equilibrium" in labels and "saddle" in labels


@pytest.mark.slow
def test_lam_moves_the_equilibria(ex25):
    ex = ex25
    ex.sliders["lam"].set_val(0.2)
    a = _drawn(ex)
    ex.sliders["lam"].set_val(4.0)
    b = _drawn(ex)
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-3


@pytest.mark.slow
def test_rule_radio_changes_the_field(ex):
    flow_norm = ex.pf.flow.clone()
    ex.radios["rule"].set_active(explore.RULE_CHOICES.index("adaptive"))
    assert ex.settings.rule == "adaptive" and isinstance(ex.rule, sc.AdaptiveClip)
    assert not torch.allclose(ex.pf.flow, flow_norm)
    # the drawn field is exactly -H of the chosen rule on the grid
    p = ex.problem
    want = field_on_plane(sc.MeanField(p, sc.AdaptiveClip(1.0, 1e-3)), Plane.coordinates(p),
                          (-3, 3), (-3, 3), n=SMALL["grid"], with_loss=False)
    torch.testing.assert_close(ex.pf.flow, want.flow)
    assert "adaptive" in ex.ax.get_title()


@pytest.mark.slow
def test_schedule_sliders_rerun_chains_but_keep_field(ex):
    key, tau = ex._field_key, ex.run.tau.clone()
    ex.sliders["a0"].set_val(1.6)
    assert ex._field_key == key                      # field not recomputed
    assert ex.run.tau[-1] > tau[-1]                  # larger steps: longer ODE time
    torch.testing.assert_close(ex.ode.t, ex.run.tau)  # ODE on the chains' times
    torch.testing.assert_close(ex.ode.theta[0], ex.run.theta[0, 0])


@pytest.mark.slow
def test_batch_radio_and_slider_use_h_m(ex):
    ex.sliders["batch_size"].set_val(4)
    flow_sample = ex.pf.flow.clone()                 # per-sample: H does not depend on M
    ex.radios["clip_per"].set_active(1)
    assert ex.settings.clip_per == "batch" and ex.batch_field
    assert not torch.allclose(ex.pf.flow, flow_sample)
    # the fixed-batch estimate equals the mean of clip(batch mean gradient) over its batches
    hm = ex.field
    th = torch.tensor([[0.7, -1.1]], dtype=torch.float64)
    p = ex.problem
    rows = []
    for idx in hm.index:
        x, y = p.take(idx)
        q = sc.Problem(sc.problems.TanhToy(), x, y, "mse")
        gb = sc.MeanField(q, sc.NoClip())(th[0])
        rows.append(gb * min(1.0, ex.settings.lam / float(gb.norm())))
    torch.testing.assert_close(hm(th)[0], torch.stack(rows).mean(0))
    assert "H_M" in ex.ax.get_title()


@pytest.mark.slow
def test_new_chains_and_play_pause(ex):
    before = ex.run.theta.clone()
    assert set(ex.buttons) == {"new_chains", "play"}
    ex.new_chains()
    assert ex.settings.seed == 1 and not torch.equal(before, ex.run.theta)
    ex.play()
    assert ex.playing and ex.frame == 0
    ex._advance()
    assert ex.frame == 1
    x, y = ex.heads.get_data()
    np.testing.assert_allclose(x, ex.run.theta[:, 1, 0].numpy())
    ex.toggle_play()
    assert not ex.playing


@pytest.mark.slow
def test_blitted_frames(ex):
    """Where the canvas can blit, a frame redraws the chains only (from a saved background)."""
    assert not ex.blit                               # Agg: no window, plain redraws
    if not ex.fig.canvas.supports_blit:
        pytest.skip("this canvas cannot blit")
    ex.blit = True
    ex.recompute(field=False)
    ex.fig.canvas.draw()
    assert ex._background is not None and all(a.get_animated() for a in ex._animated)
    ex.frame = 0
    ex._advance()
    assert ex.frame == 1
    np.testing.assert_allclose(ex.heads.get_data()[0], ex.run.theta[:, 1, 0].numpy())


def test_tracking_panel_shows_median(ex):
    med = np.nanmedian(ex.tracking.distance.numpy(), axis=0)
    line = [ln for ln in ex.ax_dt.get_lines() if ln.get_label() == "median"][0]
    np.testing.assert_allclose(line.get_ydata(), med)
    assert ex.ax_dt.get_yscale() == "log"


def _args(*argv: str) -> argparse.Namespace:
    return explore.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.mark.slow
def test_snapshot_writes_png(tmp_path, capsys):
    out = tmp_path / "explore.png"
    rc = explore.main(_args("--lam", "0.5", "--rule", "adaptive", "--problem", "tanh",
                            "--chains", "4", "--steps", "40", "--grid", "11",
                            "--snapshot", str(out)))
    assert rc == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (("--lam", "-1"), ("--lam", "-1", "> 0")),
    (("--problem", "wine"), ("--problem", "wine", "tanh")),
    (("--rule", "bogus"), ("--rule", "bogus", "adaptive")),
    (("--clip-per", "both"), ("--clip-per", "both", "sample")),
    (("--batch-size", "0"), ("--batch-size", "0", ">= 1")),
    (("--snapshot", "out.jpg"), ("--snapshot", "out.jpg", ".png")),
])
def test_bad_options_are_named(argv, words, capsys):
    with pytest.raises(ValueError) as err:
        explore.main(_args(*argv))
    for w in words:
        assert w in str(err.value)
    assert explore.run(list(argv)) == 2
    msg = capsys.readouterr().err
    assert msg.startswith("sa-clip explore: error:") and words[0] in msg


def test_no_window_without_interactive_backend():
    with pytest.raises(ValueError, match="--snapshot"):
        explore.main(_args())


def test_unknown_keyword():
    with pytest.raises(TypeError, match="lamda"):
        explore.Explorer(lamda=1.0)


def test_runs_as_module(monkeypatch, capsys):
    """``python -m sa_clip.viz.explore``: the module's ``__main__`` block reads sys.argv and
    exits 2 with one error line. Run in-process by runpy, as ``-m`` runs it (test_cli starts
    ``python -m sa_clip.cli`` as a real subprocess)."""
    import runpy
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", ["explore", "--alpha", "0"])
    with warnings.catch_warnings():
        # runpy notes that sa_clip.viz.explore is imported already (by this test module)
        warnings.filterwarnings("ignore", "'sa_clip.viz.explore' found in sys.modules",
                                RuntimeWarning)
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("sa_clip.viz.explore", run_name="__main__")
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("sa-clip explore: error: `--alpha` must be a "
                                               "finite number > 0, got 0.0.")
