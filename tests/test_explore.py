"""The interactive explorer, driven from code under Agg: widgets change what is computed and
drawn, the equilibria drawn are find_equilibria's, snapshots are PNGs, bad options are named."""

from __future__ import annotations

import argparse
import threading

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
    # the ODE on its own fine grid over the chains' time span, from their start
    assert ex.ode.t.shape == (explore.ODE_POINTS,) and ex.ode.t[0] == 0
    assert float(ex.ode.t[-1]) == pytest.approx(float(ex.run.tau[-1]))
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


def test_no_display_names_the_display_and_the_ways_out(monkeypatch):
    """MPLBACKEND=TkAgg with no display: matplotlib falls back to Agg without a word; the
    error names the missing display and the three ways out, not the fallback."""
    monkeypatch.setenv("MPLBACKEND", "TkAgg")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(explore.sys, "platform", "linux")
    with pytest.raises(ValueError) as err:
        explore.main(_args())
    msg = str(err.value)
    for words in ("no display", "DISPLAY", "TkAgg", "--snapshot", "--gif", "ipympl",
                  "ssh -X"):
        assert words in msg
    assert "'Agg'" not in msg and "'agg'" not in msg


@pytest.mark.parametrize("argv, words", [
    (("--dpi", "100000"), ("--dpi", "100000", "600")),
    (("--dpi", "600", "--size", "8000x6000"), ("--dpi", "million pixels")),
    (("--size", "10x10"), ("--size", "10x10")),
    (("--size", "big"), ("--size", "big", "WIDTHxHEIGHT")),
    (("--extent", "1e300"), ("--extent", "1e+300", "at most")),
    (("--grid", "100000"), ("--grid", "100000", "at most 200")),
    (("--batch-size", "100000", "--clip-per", "batch"), ("--batch-size", "100000", "64")),
    (("--chains", "10000000"), ("--chains", "at most")),
    (("--gif", "x.png"), ("--gif", "x.png", ".gif")),
])
def test_scale_options_are_refused_up_front(argv, words, monkeypatch):
    """Huge values are refused before any compute (no MemoryError, IndexError or hang)."""
    def boom(*_a, **_k):
        raise AssertionError("computed before refusing")
    monkeypatch.setattr(explore, "compute_field", boom)
    with pytest.raises(ValueError) as err:
        explore.main(_args(*argv, "--snapshot" if "--gif" not in argv else "--quick",
                           *(("out.png",) if "--gif" not in argv else ())))
    for w in words:
        assert w in str(err.value)


def test_size_and_dpi_give_the_picture_size():
    assert explore.figure_size(_args()) == ((10.24, 7.68), 100)
    figsize, dpi = explore.figure_size(_args("--size", "800x600", "--dpi", "150"))
    assert figsize == pytest.approx((8.0, 6.0)) and dpi == 150     # 1200 x 900 pixels
    assert explore.parse_size("640X480") == (640, 480)


def test_data_sizes_match_the_problems():
    for name, n in explore.DATA_SIZE.items():
        assert sc.problems.make_problem(name).X.shape[0] == n


def test_debounced_slider_recomputes_at_most_twice(monkeypatch):
    """Ten slider changes in quick succession (a drag): nothing is computed while they come,
    "computing..." shows, and one recomputation follows when the debounce fires (flush: what
    the timer calls; under Agg the timer has no event loop, so the test calls it)."""
    ex = explore.Explorer(problem="tanh", animate=False, debounce_s=0.3, **SMALL)
    calls = []
    real = explore.compute_field
    monkeypatch.setattr(explore, "compute_field", lambda *a: calls.append(1) or real(*a))
    before = ex.recomputations
    for k in range(10):
        ex.sliders["lam"].set_val(0.3 + 0.2 * k)
    assert ex.recomputations == before and ex.debouncer.pending and not calls
    assert "computing" in ex.status.get_text()
    ex.debouncer.flush()                    # the timer's callback
    assert ex.recomputations - before <= 2 and len(calls) == 1
    assert ex.settings.lam == pytest.approx(2.1)
    assert ex.rule.lam == pytest.approx(2.1)          # the last value is what was computed
    assert "updated" in ex.status.get_text()
    ex.debouncer.flush()                    # nothing pending: nothing more
    assert len(calls) == 1
    plt.close(ex.fig)


def test_background_worker_draws_field_then_chains_and_cancels(monkeypatch):
    """In the worker thread: a newer request cancels an older one (its field is computed but
    never drawn, its chains never computed); the newest result is drawn by poll()."""
    ex = explore.Explorer(problem="tanh", animate=False, background=True, debounce_s=0,
                          **SMALL)
    release = threading.Event()
    entered = threading.Event()
    real_field, real_chains = explore.compute_field, explore.compute_chains
    chain_lams = []

    def slow_field(problem, s):
        if s.lam == pytest.approx(0.4):
            entered.set()
            assert release.wait(600)
        return real_field(problem, s)

    def chains(problem, s, theta0, fs):
        chain_lams.append(s.lam)
        return real_chains(problem, s, theta0, fs)

    monkeypatch.setattr(explore, "compute_field", slow_field)
    monkeypatch.setattr(explore, "compute_chains", chains)
    ex.sliders["lam"].set_val(0.4)
    assert entered.wait(600)
    first = ex._thread
    ex.sliders["lam"].set_val(2.5)          # while the first is still computing
    assert ex.wait(600)
    release.set()
    first.join(600)
    assert not first.is_alive()
    ex.poll()
    assert chain_lams == [pytest.approx(2.5)]
    assert ex.rule.lam == pytest.approx(2.5) and "λ = 2.5" in ex.ax.get_title()
    assert "updated" in ex.status.get_text()
    plt.close(ex.fig)


def test_legend_off_the_plane_and_labels_follow_the_mode(ex):
    assert ex.ax.get_legend() is None
    texts = [t.get_text() for t in ex.ax_legend.get_legend().get_texts()]
    assert any("streamlines of −H " in t for t in texts)
    ex.fig.canvas.draw()
    a, b = ex.ax.get_window_extent(), ex.ax_legend.get_legend().get_window_extent()
    assert not a.overlaps(b)
    ex.sliders["batch_size"].set_val(4)
    ex.radios["clip_per"].set_active(1)
    texts = [t.get_text() for t in ex.ax_legend.get_legend().get_texts()]
    assert any("streamlines of −H_M" in t for t in texts)
    assert not any("−H " in t for t in texts)
    assert "H_M" in ex.cax.get_ylabel() and "H_M" in ex.ax.get_title()


def test_coarse_grid_note(ex):
    assert ex.settings.grid == 11
    assert any("Equilibria may be missed" in n and "G = 11" in n for n in ex.notes)
    assert "Equilibria may be missed" in ex.note_text.get_text()
    assert explore.grid_note(25, 3.0, 3) == ""
    assert "No equilibrium" in explore.grid_note(25, 3.0, 0)


def test_tracking_note_says_why():
    """D_T rising: the note names the reasons that hold (checked against the definitions)."""
    from types import SimpleNamespace as NS
    rising = NS(distance=torch.tensor([[0.1, 0.2, 0.4], [0.1, 0.3, 0.5]]))
    falling = NS(distance=torch.tensor([[0.4, 0.2, 0.1], [0.5, 0.3, 0.1]]))
    field = lambda th: th                                                  # noqa: E731
    theta0 = torch.tensor([1.0, 0.0])
    far = NS(t=torch.tensor([0.0, 2.0]), theta=torch.tensor([[1.0, 0.0], [0.5, 0.0]]))
    near = NS(t=torch.tensor([0.0, 50.0]), theta=torch.tensor([[1.0, 0.0], [1e-3, 0.0]]))
    assert explore.tracking_note(falling, far, field, theta0, "adaptive", 1.0) == ""
    note = explore.tracking_note(rising, far, field, theta0, "adaptive", 1.0)
    assert note.startswith("D_T(s) is not falling")
    assert "far from equilibrium" in note and "50%" in note
    assert "grows with ‖θ‖" in note and "horizon is short" in note
    note = explore.tracking_note(rising, near, field, theta0, "norm", 1.0)
    assert "far" not in note and "grows" not in note and "short" not in note
    assert "not settled" in note


def test_ode_drawn_on_its_fine_grid(ex):
    ex.frame = ex.run.tau.shape[0] - 1
    ex._show_frame()
    x, _ = ex.ode_line.get_data()
    assert len(x) == explore.ODE_POINTS > ex.run.tau.shape[0]


def test_snapshot_fits_a_projector_at_defaults(tmp_path):
    from PIL import Image
    out = tmp_path / "f.png"
    assert explore.main(_args("--chains", "4", "--steps", "40", "--grid", "11",
                              "--snapshot", str(out))) == 0
    with Image.open(out) as im:
        assert im.size[0] <= 1024 and im.size[1] <= 768


def test_snapshot_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    """A write that fails half way (ENOSPC) leaves the existing PNG whole and no temp file."""
    import errno

    from matplotlib.figure import Figure
    out = tmp_path / "explore.png"
    out.write_bytes(b"old complete file")

    def full_disk(self, fname, **_kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device", str(fname))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space"):
        explore.main(_args("--chains", "4", "--steps", "40", "--grid", "11",
                           "--snapshot", str(out)))
    assert out.read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explore.png"]


@pytest.mark.slow
def test_gif_records_the_animation(tmp_path):
    from PIL import Image
    out = tmp_path / "explore.gif"
    assert explore.main(_args("--chains", "4", "--steps", "20", "--grid", "11", "--size",
                              "480x360", "--gif", str(out))) == 0
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames > 5 and im.size == (480, 360)


def test_cli_keeps_the_backend_for_explore(tmp_path):
    """`sa-clip explore` does not force Agg: the backend asked for by MPLBACKEND is the one
    named when no window can open (here 'template', which draws nothing)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, MPLBACKEND="template", DISPLAY=":99")
    env.pop("WAYLAND_DISPLAY", None)
    r = subprocess.run([sys.executable, "-m", "sa_clip.cli", "explore"], env=env,
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       check=False)
    assert r.returncode == 2
    assert "'template'" in r.stderr and "'agg'" not in r.stderr.lower()


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
