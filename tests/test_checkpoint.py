"""Checkpoint and resume of simulate_sgd: a resumed run equals an uninterrupted one bit for bit."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from helpers import Interrupted, InterruptingField

import sa_clip as sc
from sa_clip.io import load_npz, save_npz

FailingField = InterruptingField


def _fields(tr):
    return {k: getattr(tr, k) for k in ("theta", "tau", "steps", "blowup_step", "clip_fraction",
                                        "indices", "xi", "quadratic_variation", "noise_norm")}


def assert_same(a, b, ignore=()):
    for k, x in _fields(a).items():
        y = getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(torch.nan_to_num(x, 7.0),
                                                      torch.nan_to_num(y, 7.0)), k
            assert torch.equal(torch.isnan(x), torch.isnan(y)) if x.is_floating_point() else True
    assert {k: v for k, v in a.meta.items() if k not in ignore} == \
        {k: v for k, v in b.meta.items() if k not in ignore}


CASES = [
    dict(sampling="iid"),
    dict(sampling="epoch", batch_size=4, record_every=3),
    dict(sampling="iid", record_noise=True, record_indices=True, batch_size=2),
    dict(sampling="epoch", batch_size=3, record_noise=True, blowup_radius=3.0, chains=5,
         theta0=[[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [-3.0, 0.0]]),
]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("stop", [7, 20, 33])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, kw, stop):
    p = sc.problems.logistic2d(n=13)
    rule = sc.NormClip(0.4)
    kw = {"chains": 4, "steps": 40, "seed": 11, **kw}
    ref = sc.simulate_sgd(p, rule, "power:0.6,0.7", **kw)
    ck = tmp_path / "run.ckpt.npz"
    with pytest.raises(Interrupted):
        sc.simulate_sgd(p, rule, "power:0.6,0.7", **kw, checkpoint=ck, checkpoint_every=5,
                        field=FailingField(p, rule, stop))
    _, meta = load_npz(ck, kind="SgdCheckpoint")
    assert meta["step"] == (stop // 5) * 5
    out = sc.simulate_sgd(p, rule, "power:0.6,0.7", **kw, checkpoint=ck, checkpoint_every=5,
                          resume=True)
    assert_same(out, ref)
    if "blowup_radius" in kw:
        assert bool(ref.blown_up.any()) and not bool(ref.blown_up.all())
    # a finished checkpoint resumes to the same result without stepping
    again = sc.simulate_sgd(p, rule, "power:0.6,0.7", **kw, checkpoint=ck, checkpoint_every=5,
                            resume=True, field=FailingField(p, rule, 0))
    assert_same(again, ref)


def test_resume_with_iid_blocks_longer_than_a_checkpoint(tmp_path):
    # iid indices are drawn in blocks of many steps: a checkpoint inside a block must redraw it
    p = sc.problems.logistic2d(n=9)
    rule = sc.NormClip(0.4)
    kw = dict(steps=30, chains=2, batch_size=2, seed=4, record_indices=True)
    ref = sc.simulate_sgd(p, rule, "harmonic:0.5", **kw)
    ck = tmp_path / "c.npz"
    with pytest.raises(Interrupted):
        sc.simulate_sgd(p, rule, "harmonic:0.5", **kw, checkpoint=ck, checkpoint_every=4,
                        field=FailingField(p, rule, 13))
    assert load_npz(ck)[1]["sampler"]["drawn"] is True
    assert_same(sc.simulate_sgd(p, rule, "harmonic:0.5", **kw, checkpoint=ck, resume=True), ref)


def test_resume_replay_and_random_seed(tmp_path):
    p = sc.problems.logistic2d(n=9)
    rule = sc.NormClip(0.4)
    idx = torch.randint(9, (2, 12, 3), generator=torch.Generator().manual_seed(0))
    ref = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=12, chains=2, batch_size=3, indices=idx)
    ck = tmp_path / "c.npz"
    with pytest.raises(Interrupted):
        sc.simulate_sgd(p, rule, "harmonic:0.5", steps=12, chains=2, batch_size=3, indices=idx,
                        checkpoint=ck, checkpoint_every=5, field=FailingField(p, rule, 8))
    out = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=12, chains=2, batch_size=3,
                          indices=idx, checkpoint=ck, resume=True)
    assert_same(out, ref, ignore=("seed",))  # a replay draws nothing: its fresh seed is unused
    # seed=None: the resumed run takes the checkpoint's fresh seed
    ck2 = tmp_path / "d.npz"
    with pytest.raises(Interrupted):
        sc.simulate_sgd(p, rule, "harmonic:0.5", steps=12, chains=2, checkpoint=ck2,
                        checkpoint_every=5, field=FailingField(p, rule, 8))
    out = sc.simulate_sgd(p, rule, "harmonic:0.5", steps=12, chains=2, checkpoint=ck2,
                          resume=True)
    assert_same(out, sc.simulate_sgd(p, rule, "harmonic:0.5", steps=12, chains=2,
                                     seed=out.meta["seed"]))


def test_resume_without_a_file_starts_from_scratch(tmp_path):
    p = sc.problems.logistic2d(n=9)
    ck = tmp_path / "new.npz"
    out = sc.simulate_sgd(p, sc.NormClip(0.4), "harmonic:0.5", steps=6, seed=1, checkpoint=ck,
                          resume=True)
    assert_same(out, sc.simulate_sgd(p, sc.NormClip(0.4), "harmonic:0.5", steps=6, seed=1))
    assert load_npz(ck)[1]["step"] == 6


@pytest.mark.parametrize("change, word", [
    (dict(chains=3), "chains"), (dict(seed=2), "seed"), (dict(steps=30), "steps"),
    (dict(batch_size=2), "batch_size"), (dict(sampling="epoch"), "sampling"),
    (dict(rule=sc.NormClip(0.5)), "rule"), (dict(schedule="harmonic:0.6"), "schedule"),
    (dict(theta0=[0.1, 0.2]), "theta0"), (dict(record_noise=True), "record_noise"),
    (dict(dtype=torch.float32), "dtype"),
])
def test_resume_refuses_a_different_configuration(tmp_path, change, word):
    change = dict(change)
    dtype = change.pop("dtype", torch.float64)
    p = sc.problems.logistic2d(n=9, dtype=dtype) if dtype != torch.float64 else \
        sc.problems.logistic2d(n=9)
    base = dict(rule=sc.NormClip(0.4), schedule="harmonic:0.5", steps=20, chains=2, seed=1)
    ck = tmp_path / "c.npz"
    sc.simulate_sgd(sc.problems.logistic2d(n=9), **{**base, "steps": 20}, checkpoint=ck,
                    checkpoint_every=5)
    kw = {**base, **change}
    rule, sched = kw.pop("rule"), kw.pop("schedule")
    with pytest.raises(ValueError, match=rf"cannot resume from .*c\.npz.*differs.*{word}: "):
        sc.simulate_sgd(p, rule, sched, **kw, checkpoint=ck, resume=True)


def test_checkpoint_argument_errors(tmp_path):
    p = sc.problems.logistic2d(n=9)
    r = sc.NormClip(0.4)
    with pytest.raises(ValueError, match="`resume=True` needs a `checkpoint`"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=3, resume=True)
    with pytest.raises(ValueError, match="`checkpoint_every` must be an integer >= 1"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=3, checkpoint=tmp_path / "c",
                        checkpoint_every=0)
    with pytest.raises(TypeError, match="`resume` must be a bool"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=3, checkpoint=tmp_path / "c.npz",
                        resume="yes")
    # a result file of another kind, and a tampered checkpoint, are refused by name
    other = tmp_path / "other.npz"
    save_npz(other, {"x": np.zeros(2)}, {"kind": "Trajectory"})
    with pytest.raises(ValueError, match="other.npz.*'Trajectory' result, not a 'SgdCheckpoint'"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=3, checkpoint=other, resume=True)
    ck = tmp_path / "c.npz"
    sc.simulate_sgd(p, r, "harmonic:0.5", steps=10, seed=0, checkpoint=ck, checkpoint_every=5)
    arrays, meta = load_npz(ck)
    arrays["theta_rec"] = arrays["theta_rec"][:, :3]
    save_npz(ck, arrays, meta)
    with pytest.raises(ValueError, match=r"c\.npz.*array 'theta_rec' is float64 \(1, 3, 2\)"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=10, seed=0, checkpoint=ck, resume=True)


SCRIPT = textwrap.dedent("""
    import sys, time
    import sa_clip as sc

    class Slow(sc.MeanField):  # same numbers, slower steps: the kill lands mid-run
        def directions(self, *a, **k):
            time.sleep(0.005)
            return super().directions(*a, **k)

    p = sc.problems.logistic2d(n=40)
    rule = sc.NormClip(0.3)
    sc.simulate_sgd(p, rule, "power:0.5,0.7", steps=600, chains=8, batch_size=3, seed=7,
                    sampling="epoch", record_every=10, record_noise=True, checkpoint=sys.argv[1],
                    checkpoint_every=50, field=Slow(p, rule))
""")


@pytest.mark.slow
def test_killed_subprocess_resumes_to_the_uninterrupted_result(tmp_path):
    ck = tmp_path / "killed.npz"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(sc.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(ck)], env=env)
    try:
        deadline = time.time() + 120
        while not ck.exists():
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    step = load_npz(ck)[1]["step"]
    assert 0 < step < 600, step
    p = sc.problems.logistic2d(n=40)
    rule = sc.NormClip(0.3)
    kw = dict(steps=600, chains=8, batch_size=3, seed=7, sampling="epoch", record_every=10,
              record_noise=True)
    out = sc.simulate_sgd(p, rule, "power:0.5,0.7", **kw, checkpoint=ck, checkpoint_every=50,
                          resume=True)
    assert_same(out, sc.simulate_sgd(p, rule, "power:0.5,0.7", **kw))
