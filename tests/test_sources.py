"""sa_clip.sources: problems streamed from .npy files, chunked sources and memory maps equal the
in-memory Problem, read one chunk at a time, and bad sources are refused."""

import numpy as np
import pytest
import torch
from helpers import rel_err

import sa_clip as sc
from problems import ALL_RULES, SharedTied, shared_problem


def _save(tmp_path, X, y, tag=""):
    xp, yp = tmp_path / f"x{tag}.npy", tmp_path / f"y{tag}.npy"
    np.save(xp, np.asarray(X))
    np.save(yp, np.asarray(y))
    return xp, yp


def _thetas(p):
    gen = torch.Generator().manual_seed(7)
    return p.theta0 + 0.3 * torch.randn(3, p.P, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_npy_problem_equals_in_memory_problem(tmp_path, loss):
    ref = shared_problem(loss, n=23)
    if loss == "cross_entropy":   # SharedTied gives 2 logits
        assert ref.y.max() <= 1
    p = sc.Problem.from_npy(SharedTied(), *_save(tmp_path, ref.X, ref.y), loss)
    assert isinstance(p, sc.Problem) and not p.in_memory and isinstance(p.source, sc.NpyData)
    assert p.N == ref.N and p.dtype == torch.float64
    assert torch.equal(p.theta0, ref.theta0)
    th = _thetas(ref)
    for rule in ALL_RULES:
        f, fr = sc.MeanField(p, rule, chunk_size=5), sc.MeanField(ref, rule)
        assert rel_err(f(ref.theta0), fr(ref.theta0)) < 1e-12, rule
        assert rel_err(f(th), fr(th)) < 1e-12, rule
    assert rel_err(p.loss(th), ref.loss(th)) < 1e-12
    assert rel_err(p.gradient(th), ref.gradient(th)) < 1e-12
    f, fr = sc.MeanField(p, sc.NormClip(0.3), chunk_size=4), sc.MeanField(ref, sc.NormClip(0.3))
    assert torch.allclose(f.clip_stats(th).factors, fr.clip_stats(th).factors, rtol=1e-12)
    idx = torch.tensor([[0, 22, 5], [7, 7, 1], [3, 2, 9]])
    for per in ("sample", "batch"):
        assert rel_err(f.directions(th, idx, per), fr.directions(th, idx, per)) < 1e-12
    x, y = p.take(idx)
    assert torch.equal(x, ref.X[idx]) and torch.equal(y, ref.y[idx])


def test_chunked_parts_and_memmap_arrays_equal_in_memory(tmp_path):
    ref = shared_problem("mse", n=17)
    a = sc.NpyData(*_save(tmp_path, ref.X[:6], ref.y[:6], "a"))
    xb, yb = _save(tmp_path, ref.X[6:], ref.y[6:], "b")
    b = sc.ArrayData(np.load(xb, mmap_mode="r"), np.load(yb, mmap_mode="r"))
    src = sc.ChunkedData([a, b])
    assert src.n == 17
    p = sc.Problem(SharedTied(), data=src, loss="mse")
    rule = sc.LayerwiseAdaptiveClip(0.1)
    th = _thetas(ref)
    # chunks of 4 straddle the 6 | 11 boundary between the parts
    assert rel_err(sc.MeanField(p, rule, chunk_size=4)(th), sc.MeanField(ref, rule)(th)) < 1e-12
    idx = torch.tensor([16, 0, 6, 5])
    x, y = p.take(idx)
    assert torch.equal(x, ref.X[idx]) and torch.equal(y, ref.y[idx])


def test_full_data_maths_reads_one_chunk_at_a_time(tmp_path):
    ref = shared_problem("mse", n=30)
    p = sc.Problem.from_npy(SharedTied(), *_save(tmp_path, ref.X, ref.y), "mse")
    sizes = []
    read = p.source.read

    def spy(start, stop):
        sizes.append(stop - start)
        return read(start, stop)

    p.source.read = spy
    sc.MeanField(p, sc.NormClip(0.3), chunk_size=8)(_thetas(ref))
    assert sizes == [8, 8, 8, 6]
    with pytest.raises(AttributeError, match="holds no `X` in memory"):
        p.X  # noqa: B018


def test_float32_file_keeps_float32(tmp_path):
    X = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    y = X.sum(1, keepdims=True)
    p = sc.Problem.from_npy(torch.nn.Linear(3, 1), *_save(tmp_path, X, y))
    assert p.dtype == torch.float32
    x, _ = p.data(slice(2, 4))
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(X[2:4]))
    p64 = sc.Problem.from_npy(torch.nn.Linear(3, 1), *_save(tmp_path, X, y), dtype=torch.float64)
    assert p64.data(slice(0, 2))[0].dtype == torch.float64


def test_checks_scan_every_chunk(tmp_path):
    X = np.zeros((50, 3))
    X[37, 1] = np.nan
    with pytest.raises(ValueError, match=r"`X` must be finite; found nan at index \(37, 1\)"):
        sc.Problem.from_npy(torch.nn.Linear(3, 1), *_save(tmp_path, X, np.zeros(50)),
                            scan_rows=8)
    y = np.zeros(50)
    y[49] = np.inf
    with pytest.raises(ValueError, match=r"`y` must be finite; found inf at index \(49,\)"):
        sc.Problem.from_npy(torch.nn.Linear(3, 1), *_save(tmp_path, np.zeros((50, 3)), y),
                            scan_rows=8)
    labels = np.zeros(50, np.int64)
    labels[41] = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\].*\[0, 3\]"):
        sc.Problem.from_npy(torch.nn.Linear(3, 2), *_save(tmp_path, np.zeros((50, 3)), labels),
                            "cross_entropy", scan_rows=8)
    with pytest.raises(TypeError, match="integer class labels"):
        sc.Problem.from_npy(torch.nn.Linear(3, 2),
                            *_save(tmp_path, np.zeros((50, 3)), np.zeros(50)), "cross_entropy")


def test_bad_sources_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="`x_path` must be an existing .npy file"):
        sc.NpyData(tmp_path / "missing.npy", tmp_path / "missing.npy")
    xp, _ = _save(tmp_path, np.zeros((4, 2)), np.zeros(4))
    _, yp = _save(tmp_path, np.zeros((3, 2)), np.zeros(3), "short")
    with pytest.raises(ValueError, match="`y` must have length N = 4"):
        sc.NpyData(xp, yp)
    fp = tmp_path / "fortran.npy"
    np.save(fp, np.asfortranarray(np.zeros((4, 2))))
    with pytest.raises(ValueError, match="Fortran order"):
        sc.NpyData(fp, tmp_path / "y.npy")
    with pytest.raises(TypeError, match="`X` must be a NumPy array"):
        sc.ArrayData(torch.zeros(3, 2), np.zeros(3))
    with pytest.raises(ValueError, match=r"`X` is empty \(N = 0\)"):
        sc.ArrayData(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match=r"`parts\[1\]` does not match"):
        sc.ChunkedData([(np.zeros((2, 3)), np.zeros(2)), (np.zeros((2, 4)), np.zeros(2))])
    with pytest.raises(TypeError, match="`parts` must be a non-empty sequence"):
        sc.ChunkedData([])
    with pytest.raises(TypeError, match=r"`parts\[0\]` is a TensorData of tensors"):
        sc.ChunkedData([sc.TensorData(torch.zeros(2, 3), torch.zeros(2))])
    with pytest.raises(TypeError, match="`data` must be a sa_clip.DataSource"):
        sc.Problem(torch.nn.Linear(2, 1), data=np.zeros((3, 2)))
    p = sc.Problem(torch.nn.Linear(2, 1), data=sc.ArrayData(np.zeros((3, 2)), np.zeros(3)))
    with pytest.raises(IndexError, match=r"`index` must lie in \[-3, 2\]"):
        p.take(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="contiguous slice"):
        p.data(slice(0, 3, 2))
    with pytest.raises(ValueError, match="`scan_rows` must be an integer >= 1"):
        sc.Problem(torch.nn.Linear(2, 1), data=sc.ArrayData(np.zeros((3, 2)), np.zeros(3)),
                   scan_rows=0)


def test_to_keeps_a_streamed_source_on_disk(tmp_path):
    ref = shared_problem("mse", n=12)
    p = sc.Problem.from_npy(SharedTied(), *_save(tmp_path, ref.X, ref.y), "mse")
    p32 = p.to(dtype=torch.float32)
    assert p32.source is p.source and not p32.in_memory and p.dtype == torch.float64
    x, y = p32.data(slice(0, 5))
    assert x.dtype == y.dtype == torch.float32 and torch.equal(x, ref.X[:5].float())
    assert rel_err(p32.loss(p32.theta0).double(), ref.loss(ref.theta0)) < 1e-6


def test_streamed_and_in_memory_share_one_validation(tmp_path):
    # the same checks and messages whatever the source
    X = np.zeros((6, 3))
    X[4, 2] = np.inf
    for build in (lambda: sc.Problem(torch.nn.Linear(3, 1), X, np.zeros(6)),
                  lambda: sc.Problem.from_npy(torch.nn.Linear(3, 1),
                                              *_save(tmp_path, X, np.zeros(6)), scan_rows=2)):
        with pytest.raises(ValueError, match=r"`X` must be finite; found inf at index \(4, 2\)"):
            build()
    Xc = np.zeros((6, 3), np.complex128)
    for build in (lambda: sc.Problem(torch.nn.Linear(3, 1), Xc, np.zeros(6)),
                  lambda: sc.Problem.from_npy(torch.nn.Linear(3, 1),
                                              *_save(tmp_path, Xc, np.zeros(6)))):
        with pytest.raises(TypeError, match=r"`X` must be real .*complex128"):
            build()
    Xw = np.zeros((6, 4))
    for build in (lambda: sc.Problem(torch.nn.Linear(3, 1), Xw, np.zeros(6)),
                  lambda: sc.Problem.from_npy(torch.nn.Linear(3, 1),
                                              *_save(tmp_path, Xw, np.zeros(6)))):
        with pytest.raises(ValueError, match=r"in_features = 3 inputs per sample, `X` has 4"):
            build()


def test_frozen_parameters_with_streamed_data(tmp_path):
    ref = shared_problem("mse", n=10)
    m = SharedTied()
    m.mix.requires_grad_(False)
    mem = sc.Problem(m, ref.X, ref.y)
    p = sc.Problem.from_npy(m, *_save(tmp_path, ref.X, ref.y))
    assert p.P == mem.P == ref.P - m.mix.numel() and list(p.frozen) == ["mix"]
    th = mem.theta0 + 0.1
    for rule in ALL_RULES[:3]:
        assert rel_err(sc.MeanField(p, rule, chunk_size=3)(th), sc.MeanField(mem, rule)(th)) \
            < 1e-12
