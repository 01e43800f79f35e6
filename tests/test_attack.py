"""Regression tests for the attack cases of issue 24 (one test per case).

Each case must give a clear error (naming the argument and the value), a correct result, or a
warning that names the cause: never a silent wrong result, a raw traceback, lost output or a
hang.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa_clip._validate import check_index, check_indices


# ------------------------------------------------------------------ index arguments
@pytest.mark.parametrize("value", [np.int64(2), np.int32(2), 2, torch.tensor(2)])
def test_check_index_accepts_numpy_integers(value):
    assert check_index("chain", value, 4) == 2


@pytest.mark.parametrize("value", ["1", 1.0, np.float64(1.0), True, np.bool_(True), None])
def test_check_index_refuses_strings_floats_bools(value):
    with pytest.raises(TypeError, match="`chain` must be an integer index"):
        check_index("chain", value, 4)


def test_check_index_range_named():
    with pytest.raises(ValueError, match=r"`chain` must be an index in \[0, 3\], got 4"):
        check_index("chain", 4, 4)
    assert check_index("record", -1, 4, negative=True) == 3


@pytest.mark.parametrize("value", ["12", [0.7], 2.0, True, 5, [True], np.array([0.5])])
def test_check_indices_refuses_strings_and_floats(value):
    with pytest.raises(TypeError, match="`keep_paths"):
        check_indices("keep_paths", value, 3)


def test_check_indices_accepts_numpy():
    assert check_indices("keep_paths", np.array([0, 2], dtype=np.int64), 3) == [0, 2]
    assert check_indices("keep_paths", [np.int64(1)], 3) == [1]
    with pytest.raises(ValueError, match="distinct"):
        check_indices("keep_paths", [1, 1], 3)


# ------------------------------------------------------------------ resume fingerprint
import functools  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

import sa_clip as sc  # noqa: E402
from sa_clip.sgd import checkpoint as ckpt_mod  # noqa: E402


def _reg_problem(loss, model=None):
    torch.manual_seed(0)
    X = torch.randn(12, 2, dtype=torch.float64)
    y = torch.randn(12, 1, dtype=torch.float64)
    model = model if model is not None else torch.nn.Linear(2, 1)
    return sc.Problem(model, X, y, loss=loss, dtype=torch.float64)


def _first_then_resume(tmp_path, loss_a, loss_b, model_a=None, model_b=None, **kw):
    path = tmp_path / "run.ckpt.npz"
    common = dict(steps=6, chains=2, seed=0, checkpoint=path, checkpoint_every=2)
    sc.simulate_sgd(_reg_problem(loss_a, model_a), sc.NormClip(1.0), "harmonic:0.1",
                    **common)
    return sc.simulate_sgd(_reg_problem(loss_b, model_b), sc.NormClip(1.0), "harmonic:0.1",
                           resume=True, **common, **kw)


def _make_scaled(scale):
    return lambda o, t: scale * ((o - t) ** 2).sum()


def test_resume_refuses_changed_closure_cell(tmp_path):
    with pytest.raises(ValueError, match="loss or the model changed.*force_resume=True"):
        _first_then_resume(tmp_path, _make_scaled(1.0), _make_scaled(3.0))


def test_resume_accepts_same_closure(tmp_path):
    run = _first_then_resume(tmp_path, _make_scaled(1.0), _make_scaled(1.0))
    assert run.theta.shape[0] == 2


def _weighted(o, t, w):
    return w * ((o - t) ** 2).sum()


def test_resume_refuses_changed_partial_argument(tmp_path):
    with pytest.raises(ValueError, match="cannot resume.*loss"):
        _first_then_resume(tmp_path, functools.partial(_weighted, w=1.0),
                           functools.partial(_weighted, w=3.0))


def test_resume_refuses_changed_huber_delta(tmp_path):
    with pytest.raises(ValueError, match="cannot resume.*HuberLoss"):
        _first_then_resume(tmp_path, torch.nn.HuberLoss(delta=0.1, reduction="sum"),
                           torch.nn.HuberLoss(delta=10.0, reduction="sum"))


def _twin_modules():
    """Two classes of one name and repr whose forwards differ."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x)
    a = Net

    class Net(torch.nn.Module):  # noqa: F811 (same name on purpose)
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return 2.0 * self.lin(x)
    return a, Net


def test_resume_refuses_module_with_same_repr_other_forward(tmp_path):
    A, B = _twin_modules()
    torch.manual_seed(1)
    ma = A()
    mb = B()
    mb.load_state_dict(ma.state_dict())
    assert repr(ma) == repr(mb)
    with pytest.raises(ValueError, match="cannot resume.*model"):
        _first_then_resume(tmp_path, "mse", "mse", ma, mb)


def test_resume_refuses_changed_plain_module_attribute(tmp_path):
    class Scaled(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)
            self.k = k

        def forward(self, x):
            return self.k * self.lin(x)
    torch.manual_seed(1)
    ma, mb = Scaled(1.0), Scaled(3.0)
    mb.load_state_dict(ma.state_dict())
    with pytest.raises(ValueError, match="cannot resume.*model"):
        _first_then_resume(tmp_path, "mse", "mse", ma, mb)


def test_force_resume_turns_change_into_warning(tmp_path):
    with pytest.warns(UserWarning, match="force_resume"):
        run = _first_then_resume(tmp_path, _make_scaled(1.0), _make_scaled(3.0),
                                 force_resume=True)
    assert run.theta.shape[0] == 2


def _rewrite_version(path, version):
    arrays, meta = sc.io.load_npz(path, kind=ckpt_mod.KIND)
    fp = dict(meta["fingerprint"])
    if version is None:
        fp.pop("sa_clip")
    else:
        fp["sa_clip"] = version
    parts = {k: meta.get(k) for k in ("config", "step", "sampler", "seed")}
    parts["fingerprint"] = fp
    sc.io.save_npz(path, arrays, {"kind": ckpt_mod.KIND, **parts,
                                  "checkpoint_digest": ckpt_mod._content_digest(arrays, parts)})


@pytest.mark.parametrize("version", ["0.0.1", None])
def test_resume_refuses_checkpoint_of_another_version(tmp_path, version):
    path = tmp_path / "run.ckpt.npz"
    p = _reg_problem("mse")
    common = dict(steps=6, chains=2, seed=0, checkpoint=path, checkpoint_every=2)
    sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", **common)
    _rewrite_version(path, version)
    with pytest.raises(ValueError, match=r"written by (sa_clip 0\.0\.1|an older sa_clip).*"
                                         r"this is sa_clip .*--force-resume"):
        sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", resume=True, **common)
    with pytest.warns(UserWarning, match="written by"):
        sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", resume=True,
                        force_resume=True, **common)


class _Opaque:
    __slots__ = ()


def test_resume_with_unfingerprintable_loss_asks_for_force(tmp_path):
    thing = _Opaque()

    def loss(o, t):
        _ = thing
        return ((o - t) ** 2).sum()
    with pytest.raises(ValueError, match="cannot be fingerprinted.*_Opaque.*--force-resume"):
        _first_then_resume(tmp_path, loss, loss)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _first_then_resume(tmp_path, loss, loss, force_resume=True)
    assert any("cannot be fingerprinted" in str(x.message) for x in w)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_resume_from_fifo_is_refused_not_hung(tmp_path):
    fifo = tmp_path / "run.ckpt.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO.*regular file"):
        sc.simulate_sgd(_reg_problem("mse"), sc.NormClip(1.0), "harmonic:0.1", steps=3,
                        checkpoint=fifo, resume=True)


def test_rule_names_cannot_escape_checkpoint_dir(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    rules = {"../escape": sc.NormClip(1.0), str(tmp_path / "abs"): sc.NoClip()}
    sc.run_experiment(_reg_problem("mse"), rules, "harmonic:0.1", steps=6, chains=2,
                      record_every=2, starts=2, checkpoint_dir=d)
    outside = sorted(p.name for p in tmp_path.iterdir())
    assert outside == ["ck"]
    inside = sorted(p.name for p in d.iterdir())
    assert len(inside) == 2 and all(n.endswith(".ckpt.npz") for n in inside)


def test_rule_names_must_be_strings():
    with pytest.raises(TypeError, match="rule name must be a string"):
        sc.run_experiment(_reg_problem("mse"), {1: sc.NoClip()}, "harmonic:0.1", steps=2)


# ------------------------------------------------------------------ overflow-free norms
def _huge_target_problem(dtype=torch.float64, scale=1e200):
    torch.manual_seed(0)
    X = torch.randn(20, 3, dtype=dtype)
    y = scale * torch.randn(20, 1, dtype=dtype)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return sc.Problem(net, X, y, loss="mse", dtype=dtype)


def _reference_field(p, rule, theta):
    """Plain loop over samples, group norms computed scaled by hand (float64)."""
    g = torch.stack([p.per_sample_grads(theta, p.X[i:i + 1], p.y[i:i + 1])[0]
                     for i in range(p.N)]).double()
    layer = rule.granularity == "layer"
    tn = torch.stack([theta[b.start:b.stop].norm() for b in p.blocks]) if layer else None
    out = []
    for gi in g:
        parts = [gi[b.start:b.stop] for b in p.blocks] if layer else [gi]
        norms = torch.stack([q.abs().max() * ((q / q.abs().max()) ** 2).sum().sqrt()
                             for q in parts])
        c = rule.factors(norms, tn)
        out.append(torch.cat([q / ck for q, ck in zip(parts, c)]))
    return torch.stack(out).mean(0)


@pytest.mark.parametrize("method", ["vmap", "fast"])
@pytest.mark.parametrize("rule", [sc.NormClip(1.0), sc.make_rule("layerwise", lam=1.0)],
                         ids=["global", "layer"])
def test_huge_targets_give_the_clipped_field_not_zero(method, rule):
    p = _huge_target_problem()
    H = sc.MeanField(p, rule, method=method)(p.theta0[None])[0]
    ref = _reference_field(p, rule, p.theta0)
    assert H.norm() > 0.1
    torch.testing.assert_close(H, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("clip_per", ["sample", "batch"])
def test_huge_targets_sgd_moves(clip_per):
    p = _huge_target_problem()
    run = sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.1", steps=10, chains=2, seed=0,
                          batch_size=3, clip_per=clip_per)
    assert bool((run.blowup_step == -1).all())
    moved = (run.theta[:, -1] - run.theta[:, 0]).norm(dim=-1)
    assert bool((moved > 1e-3).all()) and bool(torch.isfinite(moved).all())
    # every clipped step has length <= a(n) * lam: the update is bounded, not inf or 0
    steps = (run.theta[:, 1:] - run.theta[:, :-1]).norm(dim=-1)
    assert float(steps.max()) <= 0.1 + 1e-9


def test_huge_targets_float32():
    p = _huge_target_problem(torch.float32, scale=1e25)
    H = sc.MeanField(p, sc.NormClip(1.0), method="vmap")(p.theta0[None])[0]
    assert float(H.norm()) > 0.1 and bool(torch.isfinite(H).all())


def test_stable_norm_matches_plain_norm_and_differentiates():
    from torch.func import jacfwd, vmap

    from sa_clip.layout import stable_norm
    x = torch.randn(5, 7, dtype=torch.float64)
    assert torch.equal(stable_norm([x]), torch.linalg.vector_norm(x, dim=-1))
    big = torch.cat([x[:1] * 1e200, x[1:]])
    want = torch.linalg.vector_norm(big / 1e200, dim=-1) * 1e200
    torch.testing.assert_close(stable_norm([big])[:1], want[:1], rtol=1e-14, atol=0)
    torch.testing.assert_close(stable_norm([big], safe=True), stable_norm([big]))
    jac = vmap(jacfwd(lambda v: stable_norm([v], safe=True)))(big)
    torch.testing.assert_close(jac, big / stable_norm([big])[:, None])
