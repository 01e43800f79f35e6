"""Checkpoint and resume of simulate_sgd: a resumed run equals an uninterrupted one bit for bit."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import Interrupted, InterruptingField, wait_for

import sa_clip as sc
from sa_clip.io import load_npz, save_npz
from sa_clip.sgd.checkpoint import _content_digest as content_digest

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
    forge(ck, lambda arrays, meta: arrays.update(theta_rec=arrays["theta_rec"][:, :3]))
    with pytest.raises(ValueError, match=r"c\.npz.*array 'theta_rec' is float64 \(1, 3, 2\)"):
        sc.simulate_sgd(p, r, "harmonic:0.5", steps=10, seed=0, checkpoint=ck, resume=True)


def forge(path, edit, digest=True):
    """Edit a checkpoint in place (``edit(arrays, meta)``); ``digest``: recompute its content
    digest, as a forger who knows the format would (else the stale digest stays)."""
    arrays, meta = load_npz(path)
    edit(arrays, meta)
    if digest:
        parts = {k: meta.get(k) for k in ("config", "fingerprint", "step", "sampler", "seed")}
        meta["checkpoint_digest"] = content_digest(arrays, parts)
    for k in ("format", "format_version", "created", "versions"):
        meta.pop(k)
    save_npz(path, arrays, meta)


def _interrupted(tmp_path, stop=13, **kw):
    """A run of 30 steps killed after ``stop`` steps (finished when ``stop >= 30``), its
    checkpoint (every 4) and a call that resumes it."""
    p = sc.problems.logistic2d(n=9)
    rule = sc.NormClip(0.4)
    kw = dict(steps=30, chains=3, batch_size=2, seed=4, **kw)
    ck = tmp_path / "c.npz"
    try:
        sc.simulate_sgd(p, rule, "harmonic:0.5", **kw, checkpoint=ck, checkpoint_every=4,
                        field=FailingField(p, rule, stop))
    except Interrupted:
        assert stop < kw["steps"]
    else:
        assert stop >= kw["steps"]

    def resume(problem=p):
        return sc.simulate_sgd(problem, rule, "harmonic:0.5", **kw, checkpoint=ck,
                               checkpoint_every=4, resume=True)
    return p, ck, resume


def _set_meta(key, value):
    def edit(arrays, meta):
        if isinstance(key, tuple):
            meta[key[0]][key[1]] = value
        else:
            meta[key] = value
    return edit


def _set_array(name, fn):
    def edit(arrays, meta):
        a = arrays[name].copy()
        fn(a)
        arrays[name] = a
    return edit


def _nan_row(a):
    a[1] = np.nan


def _kill(a):
    a[0] = False


TAMPER = {   # edit -> what the invariant check says once the digest is forged to match
    "step": (_set_meta("step", 8), "records of steps after its step 8"),
    "step_too_far": (_set_meta("step", 31), r"invalid step 31 \(expected an integer in \[0, 30\]"),
    "step_back": (_set_meta("step", 16), "record of step 16 is missing"),
    "sampler_pos": (_set_meta(("sampler", "pos"), 999), "invalid sampler position"),
    "sampler_pos_beyond_buffer": (_set_meta(("sampler", "drawn"), False), "invalid sampler"),
    "theta": (_set_array("theta", _nan_row), "'theta' is not finite for a chain marked alive"),
    "alive": (_set_array("alive", _kill), "'alive' and 'blowup' disagree"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_checkpoint_is_refused(tmp_path, case):
    # issue 11 item 5: an edited step, sampler position, theta or alive must not load
    edit, message = TAMPER[case]
    _, ck, resume = _interrupted(tmp_path)
    clean = ck.read_bytes()
    forge(ck, edit, digest=False)
    with pytest.raises(ValueError, match=r"c\.npz.*does not match its digest"):
        resume()
    ck.write_bytes(clean)
    forge(ck, edit)
    with pytest.raises(ValueError, match=r"c\.npz.*" + message):
        resume()


def test_checkpoint_theta_edited_to_finite_values_is_refused_by_the_digest(tmp_path):
    _, ck, resume = _interrupted(tmp_path)
    forge(ck, _set_array("theta", lambda a: a.__iadd__(1e-9)), digest=False)
    with pytest.raises(ValueError, match="modified or damaged after it was written"):
        resume()


def _other_loss(p):
    return sc.Problem(p.model, p.X, (p.y == 0).double()[:, None].expand(-1, 2).clone(), "mse",
                      name=p.name)


@pytest.mark.parametrize("change, words", [
    (lambda p: sc.Problem(p.model, 10 * p.X + 3, p.y, "cross_entropy", name=p.name), ["data"]),
    (lambda p: sc.Problem(p.model, p.X, 1 - p.y, "cross_entropy", name=p.name), ["data"]),
    (_other_loss, ["data", "loss"]),
], ids=["X_scaled", "y_flipped", "loss"])
@pytest.mark.parametrize("finished", [False, True], ids=["mid_run", "finished"])
def test_resume_refuses_changed_data_targets_or_loss(tmp_path, change, words, finished):
    # issue 11 item 1: resume used to mix two runs (or return the old result when finished)
    p, ck, resume = _interrupted(tmp_path, stop=10 ** 6 if finished else 13)
    if not finished:
        assert load_npz(ck)[1]["step"] == 12
    with pytest.raises(ValueError, match=r"cannot resume from .*c\.npz.*the problem differs.*"
                       + ".*".join(f"{w}: checkpoint" for w in words)):
        resume(change(p))


def test_resume_refuses_a_changed_model_architecture(tmp_path):
    # same P, same name, same data: another activation is another model
    X = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = X.sum(1, keepdim=True)

    def problem(act):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), act, torch.nn.Linear(4, 1)).double()
        return sc.Problem(net, X, y, "mse", name="net")
    rule, ck = sc.NormClip(1.0), tmp_path / "m.npz"
    sc.simulate_sgd(problem(torch.nn.Tanh()), rule, "harmonic:0.1", steps=4, seed=0,
                    checkpoint=ck)
    with pytest.raises(ValueError, match=r"the problem differs.*model: checkpoint"):
        sc.simulate_sgd(problem(torch.nn.Sigmoid()), rule, "harmonic:0.1", steps=4, seed=0,
                        checkpoint=ck, resume=True)
    # the unchanged problem resumes (the finished run, bit for bit)
    again = sc.simulate_sgd(problem(torch.nn.Tanh()), rule, "harmonic:0.1", steps=4, seed=0,
                            checkpoint=ck, resume=True)
    assert_same(again, sc.simulate_sgd(problem(torch.nn.Tanh()), rule, "harmonic:0.1", steps=4,
                                       seed=0))


def test_missing_checkpoint_folder_is_detected_before_step_1(tmp_path):
    # issue 11 item 10: found only at the first checkpoint, with a '.tmp-*' file in the message
    p = sc.problems.logistic2d(n=9)
    rule = sc.NormClip(0.4)
    path = tmp_path / "no" / "such" / "run.npz"
    with pytest.raises(ValueError, match=r"`checkpoint` = '.*no/such/run\.npz': its folder "
                       r"'.*no/such' does not exist") as err:
        sc.simulate_sgd(p, rule, "harmonic:0.5", steps=3000, checkpoint=path,
                        field=FailingField(p, rule, 0))   # any step would raise Interrupted
    assert ".tmp" not in str(err.value)
    with pytest.raises(ValueError, match=r"`checkpoint` = .* is a folder"):
        sc.simulate_sgd(p, rule, "harmonic:0.5", steps=3, checkpoint=tmp_path,
                        field=FailingField(p, rule, 0))


def test_checkpoint_of_an_older_version_without_fingerprint_is_refused(tmp_path):
    _, ck, resume = _interrupted(tmp_path)
    forge(ck, lambda arrays, meta: meta.pop("fingerprint"), digest=False)
    with pytest.raises(ValueError, match=r"c\.npz.*not a complete .*no 'fingerprint'"):
        resume()


SCRIPT = textwrap.dedent("""
    import os, sys, time
    import sa_clip as sc

    class Slow(sc.MeanField):  # same numbers; once a checkpoint exists, waits to be killed
        def directions(self, *a, **k):
            if os.path.exists(sys.argv[1]):
                time.sleep(600)
            return super().directions(*a, **k)

    p = sc.problems.logistic2d(n=40)
    rule = sc.NormClip(0.3)
    sc.simulate_sgd(p, rule, "power:0.5,0.7", steps=300, chains=8, batch_size=3, seed=7,
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
    try:                    # the checkpoint is written atomically: it appears whole
        wait_for(ck.exists, "checkpoint", proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = load_npz(ck)[1]["step"]
    # killed mid-run, after the first checkpoint (step 50) and before the next step
    assert step == 50, step
    p = sc.problems.logistic2d(n=40)
    rule = sc.NormClip(0.3)
    kw = dict(steps=300, chains=8, batch_size=3, seed=7, sampling="epoch", record_every=10,
              record_noise=True)
    out = sc.simulate_sgd(p, rule, "power:0.5,0.7", **kw, checkpoint=ck, checkpoint_every=50,
                          resume=True)
    assert_same(out, sc.simulate_sgd(p, rule, "power:0.5,0.7", **kw))


def _resume_with(tmp_path, first, second):
    """Run 6 steps of ``first`` with a checkpoint, then resume the same call on ``second``."""
    ck = tmp_path / "c.npz"
    kw = dict(steps=6, chains=2, seed=1, checkpoint=ck, checkpoint_every=3)
    sc.simulate_sgd(first, sc.NormClip(0.5), "harmonic:0.5", **kw)
    return sc.simulate_sgd(second, sc.NormClip(0.5), "harmonic:0.5", **kw, resume=True)


def _toy(loss, bias=0.0):
    X = torch.linspace(-1, 1, 10, dtype=torch.float64)[:, None]
    lin = torch.nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(0.3)
        lin.bias.fill_(bias)
    lin.bias.requires_grad_(False)                  # frozen: not in theta, held fixed
    return sc.Problem(lin, X, 2 * X, loss)


def test_resume_refuses_another_callable_loss_of_the_same_name(tmp_path):
    # two lambdas are both named '<lambda>': the fingerprint hashes their code too
    first = _toy(lambda out, y: ((out - y) ** 2).sum(-1))
    second = _toy(lambda out, y: (out - y).abs().sum(-1))
    with pytest.raises(ValueError, match=r"the problem differs.*loss: checkpoint"):
        _resume_with(tmp_path, first, second)


def test_resume_refuses_a_changed_frozen_parameter(tmp_path):
    # a frozen bias is part of the model, not of theta: changing it changes the run
    first, second = _toy("mse", bias=0.0), _toy("mse", bias=1.0)
    assert first.P == second.P == 1
    with pytest.raises(ValueError, match=r"the problem differs.*buffers: checkpoint"):
        _resume_with(tmp_path, first, second)
    # the same problem rebuilt resumes
    (tmp_path / "again").mkdir()
    assert _resume_with(tmp_path / "again", _toy("mse"), _toy("mse")).theta.shape[0] == 2
