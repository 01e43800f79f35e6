"""The result file format: round trips, metadata, atomic writes, and refusal of bad files."""

import json
import os
import platform

import numpy as np
import pytest
import torch

import sa_clip as sc
from sa_clip import io

META = "__sa_clip_meta__"


@pytest.fixture(scope="module")
def run():
    p = sc.problems.logistic2d(n=12)
    return sc.simulate_sgd(p, sc.NormClip(0.4), "harmonic:0.5", steps=8, chains=3, seed=2,
                           record_noise=True, record_indices=True, record_every=3)


def raw_write(path, meta=None, redigest=True, **arrays):
    """Write an archive by hand (no checks): how a tampered file is made. With ``redigest``
    a dict ``meta`` gets the digest of the new content (a tamperer who recomputes it), so the
    structural checks behind the digest are what is tested."""
    if isinstance(meta, dict) and redigest and "digest" in meta:
        meta = {**meta, "digest": io.content_digest(arrays, meta)}
    if meta is not None:
        arrays[META] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def good_meta(**kw):
    return {"format": "sa_clip", "format_version": 1, "kind": "Trajectory", **kw}


def test_trajectory_round_trip_and_metadata(tmp_path, run):
    path = tmp_path / "run.npz"
    run.save(path)
    back = sc.Trajectory.load(path)
    for k in ("theta", "tau", "steps", "blowup_step", "clip_fraction", "indices", "xi",
              "quadratic_variation", "noise_norm"):
        a, b = getattr(run, k), getattr(back, k)
        assert a.dtype == b.dtype and torch.equal(a.nan_to_num(5.0), b.nan_to_num(5.0)), k
    assert back.meta == run.meta
    _, meta = io.load_npz(path)
    assert meta["format"] == "sa_clip" and meta["format_version"] == io.FORMAT_VERSION
    assert meta["kind"] == "Trajectory" and meta["seed"] == 2 and meta["config"] == run.meta
    assert meta["versions"] == {"sa_clip": sc.__version__, "torch": torch.__version__,
                                "numpy": np.__version__, "python": platform.python_version()}
    assert meta["created"].endswith("+00:00") and meta["created"][:2] == "20"
    with np.load(path, allow_pickle=False) as z:  # plain npz: readable without sa_clip
        assert z["theta"].shape == (3, 4, 2)


def test_ode_solution_and_tracking_round_trip(tmp_path, run):
    p = sc.problems.logistic2d(n=12)
    f = sc.MeanField(p, sc.NormClip(0.4))
    sol = sc.solve_ode(f, torch.zeros(2, 2, dtype=torch.float64), [0.0, 0.5, 1.0])
    sol.save(tmp_path / "ode.npz", config={"rule": "norm:0.4"})
    back = sc.OdeSolution.load(tmp_path / "ode.npz")
    assert torch.equal(back.theta, sol.theta) and torch.equal(back.t, sol.t)
    assert (back.nfev, back.status, back.message) == (sol.nfev, sol.status, sol.message)
    assert io.load_npz(tmp_path / "ode.npz")[1]["config"] == {"rule": "norm:0.4"}
    res = sc.tracking_distance(run, f, horizon=0.5, starts=[0.0, 0.3])
    res.save(tmp_path / "tr.npz")
    back = sc.TrackingResult.load(tmp_path / "tr.npz")
    assert torch.equal(back.distance, res.distance) and torch.equal(back.h, res.h)
    assert torch.equal(back.start, res.start) and back.horizon == res.horizon
    assert (back.nfev, back.status, back.message) == (res.nfev, res.status, res.message)
    with pytest.raises(ValueError, match=r"tr\.npz.* holds a 'TrackingResult' result, not a "
                                         "'OdeSolution'"):
        sc.OdeSolution.load(tmp_path / "tr.npz")


def test_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, run, monkeypatch):
    path = tmp_path / "run.npz"
    run.save(path)
    before = path.read_bytes()

    def half_then_crash(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(io.np, "savez", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        run.save(path)
    with pytest.raises(KeyboardInterrupt):  # an interruption is cleaned up too
        monkeypatch.setattr(io.np, "savez", lambda f, **a: (_ for _ in ()).throw(
            KeyboardInterrupt()))
        run.save(tmp_path / "new.npz")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]
    sc.Trajectory.load(path)


@pytest.mark.parametrize("cut", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, run, cut):
    path = tmp_path / "run.npz"
    run.save(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(cut * len(data))])
    with pytest.raises(ValueError, match=r"cannot read '.*run\.npz': truncated"):
        sc.Trajectory.load(path)


def test_not_a_file_and_not_an_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        sc.Trajectory.load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npz"):
        sc.Trajectory.load(tmp_path / "text.npz")
    raw_write(tmp_path / "plain.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match=r"plain\.npz' is an \.npz archive but not an sa_clip"):
        sc.Trajectory.load(tmp_path / "plain.npz")


@pytest.mark.parametrize("meta, message", [
    ("{not json", "its metadata is not valid JSON"),
    ("[1, 2]", "is not an sa_clip result file"),
    (json.dumps({"format": "other"}), "is not an sa_clip result file"),
    (good_meta(format_version=2), "has format version 2, newer than this sa_clip understands"),
    (good_meta(format_version="1"), "invalid format version '1'"),
    (good_meta(format_version=0), "invalid format version 0"),
    (good_meta(format_version=None), "invalid format version None"),
    (good_meta(kind="OdeSolution"), "holds a 'OdeSolution' result, not a 'Trajectory'"),
])
def test_tampered_metadata(tmp_path, meta, message):
    path = tmp_path / "bad.npz"
    raw_write(path, meta, theta=np.zeros((1, 1, 1)))
    with pytest.raises(ValueError, match=r"bad\.npz.*" + message.replace("(", r"\(")):
        sc.Trajectory.load(path)


def test_metadata_entry_of_the_wrong_type(tmp_path):
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, **{META: np.zeros(3)})
    with pytest.raises(ValueError, match=r"bad\.npz.*metadata entry .* is not a JSON string"):
        io.load_npz(path)


def test_pickled_object_array_is_refused(tmp_path, run):
    path = tmp_path / "pickle.npz"
    run.save(path)
    arrays, meta = io.load_npz(path)
    arrays["theta"] = np.array([{"evil": 1}, None], dtype=object)  # np.savez pickles it
    raw_write(path, meta, redigest=False, **arrays)
    with pytest.raises(ValueError, match=r"pickle\.npz.*Object arrays cannot be loaded"):
        sc.Trajectory.load(path)
    with pytest.raises(TypeError, match="array 'x' has dtype object"):
        io.save_npz(tmp_path / "o.npz", {"x": np.array([None])}, {"kind": "X"})


@pytest.mark.parametrize("name, value, message", [
    ("theta", np.zeros((3, 4)), r"array 'theta' has shape \(3, 4\), expected \(\*, \*, \*\)"),
    ("theta", np.zeros((3, 4, 2), dtype="<U3"), "array 'theta' has dtype <U3"),
    ("tau", np.zeros(5), r"array 'tau' has shape \(5,\), expected \(4,\)"),
    ("steps", np.zeros(4), "array 'steps' has dtype float64"),
    ("blowup_step", np.zeros(2, dtype=np.int64), r"'blowup_step' has shape \(2,\), expected"),
    ("clip_fraction", np.zeros((3, 4), dtype=bool), "'clip_fraction' has dtype bool"),
    ("xi", np.zeros((3, 4, 3)), r"array 'xi' has shape \(3, 4, 3\)"),
    ("indices", np.zeros((2, 8, 1), dtype=np.int64), r"array 'indices' has shape"),
    ("clip_fraction", None, "is missing the array 'clip_fraction'"),
])
def test_tampered_arrays(tmp_path, run, name, value, message):
    path = tmp_path / "t.npz"
    run.save(path)
    arrays, meta = io.load_npz(path)
    if value is None:
        del arrays[name]
    else:
        arrays[name] = value
    raw_write(path, meta, **arrays)
    with pytest.raises(ValueError, match=r"t\.npz.*" + message):
        sc.Trajectory.load(path)


def test_tampered_ode_and_tracking_files(tmp_path):
    path = tmp_path / "o.npz"
    raw_write(path, {**good_meta(kind="OdeSolution"), "nfev": 3, "status": 0, "message": "ok"},
              t=np.zeros(3), theta=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"o\.npz.*'theta' has shape \(2, 1\), expected \(3, P\)"):
        sc.OdeSolution.load(path)
    raw_write(path, {**good_meta(kind="OdeSolution"), "nfev": "3", "status": 0, "message": ""},
              t=np.zeros(3), theta=np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"o\.npz.*metadata 'nfev' is '3', expected int"):
        sc.OdeSolution.load(path)
    raw_write(path, {**good_meta(kind="TrackingResult"), "horizon": 1.0, "nfev": 3,
                     "status": 0, "message": ""},
              start=np.zeros(3), distance=np.zeros((2, 2)), h=np.zeros(4))
    with pytest.raises(ValueError, match=r"o\.npz.*'distance' has shape \(2, 2\)"):
        sc.TrackingResult.load(path)


# ---------------------------------------------------------------- digest, invariants, corruption
def test_digest_is_stored_and_catches_edits(tmp_path, run):
    path = tmp_path / "run.npz"
    run.save(path)
    arrays, meta = io.load_npz(path)
    assert meta["digest"].startswith("sha256:") and len(meta["digest"]) == 7 + 64
    assert meta["digest"] == io.content_digest(arrays, meta)
    edited = dict(arrays, theta=arrays["theta"] * 10 + 3)      # well-formed, wrong numbers
    raw_write(path, meta, redigest=False, **edited)
    with pytest.raises(ValueError, match=r"run\.npz.*content digest mismatch"):
        sc.Trajectory.load(path)
    raw_write(path, {**meta, "seed": 3}, redigest=False, **arrays)   # edited metadata
    with pytest.raises(ValueError, match=r"run\.npz.*content digest mismatch"):
        sc.Trajectory.load(path)
    raw_write(path, {**meta, "digest": 5}, redigest=False, **arrays)
    with pytest.raises(ValueError, match=r"run\.npz.*'digest' is 5, expected 'sha256:"):
        sc.Trajectory.load(path)
    raw_write(path, meta, redigest=False, **arrays)                  # the original loads
    assert torch.equal(sc.Trajectory.load(path).theta.nan_to_num(7), run.theta.nan_to_num(7))


def _tamper(tmp_path, run, **change):
    path = tmp_path / "t.npz"
    run.save(path)
    arrays, meta = io.load_npz(path)
    arrays.update({k: f(arrays[k].copy()) for k, f in change.items()})
    raw_write(path, meta, **arrays)        # digest recomputed: only the invariants can tell
    return path


def _reverse(a):
    return a[::-1].copy()


def _set(index, value):
    def f(a):
        a[index] = value
        return a
    return f


@pytest.mark.parametrize("change, message", [
    (dict(tau=_reverse), r"'tau' must be strictly increasing"),
    (dict(tau=_set(1, np.nan)), r"'tau' must be finite, found nan at index 1"),
    (dict(tau=_set(2, -np.inf)), r"'tau' must be finite"),
    (dict(steps=lambda a: -a), r"'steps' must be >= 0"),
    (dict(steps=_reverse), r"'steps' must be strictly increasing"),
    (dict(blowup_step=_set(0, 0)), r"'blowup_step' of chain 0 is 0, expected -1 .* \[1, 8\]"),
    (dict(blowup_step=_set(1, 99)), r"'blowup_step' of chain 1 is 99"),
    (dict(blowup_step=_set(2, 4)), r"chain 2 blew up at step 4, so 'theta' at record 2 "
                                   r"\(step 6\) must be NaN"),
    (dict(theta=_set((0, 1, 0), np.nan)), r"chain 0 never blew up, so 'theta' at record 1 "
                                          r"\(step 3\) must be finite"),
    (dict(clip_fraction=_set((1, 0), 1.5)), r"'clip_fraction' must lie in \[0, 1\]"),
    (dict(indices=_set((0, 0, 0), -1)), r"'indices' must lie in \[0, 11\]"),
    (dict(indices=_set((0, 0, 0), 12)), r"'indices' must lie in \[0, 11\]"),
])
def test_tampered_but_well_formed_trajectory_is_refused(tmp_path, run, change, message):
    path = _tamper(tmp_path, run, **change)
    with pytest.raises(ValueError, match=r"t\.npz.*" + message):
        sc.Trajectory.load(path)


def test_blown_up_chain_round_trips(tmp_path):
    # chain 1 starts far out and blows up at step 1: NaN records from there on are consistent
    p = sc.problems.location_problem([0.0, 1.0, 2.0])
    tr = sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.5", steps=4, chains=2, seed=0,
                         theta0=torch.tensor([[0.5], [1e6]], dtype=torch.float64),
                         blowup_radius=1e3)
    assert tr.blowup_step.tolist() == [-1, 1]
    tr.save(tmp_path / "b.npz")
    back = sc.Trajectory.load(tmp_path / "b.npz")
    assert torch.equal(back.blowup_step, tr.blowup_step)
    assert torch.isnan(back.theta[1, 1:]).all() and torch.isfinite(back.theta[0]).all()


def test_npy_file_and_directory_are_refused_clearly(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"`path` = '.*x\.npy' is a single \.npy array; an "
                                         r"sa_clip result file is an \.npz archive"):
        sc.Trajectory.load(tmp_path / "x.npy")
    with pytest.raises(ValueError, match=r"`path` = .* is a directory"):
        sc.Trajectory.load(tmp_path)


def _same(a, b):
    return a.dtype == b.dtype and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


def test_single_byte_flips_only_ever_raise_valueerror(tmp_path, run):
    """Flip one byte at a few hundred offsets of a saved file (headers, metadata, arrays, zip
    directory): loading either gives back exactly the saved content or raises ValueError
    naming the file; no other exception class escapes, and no altered number loads."""
    p = sc.problems.logistic2d(n=12)
    sol = sc.solve_ode(sc.MeanField(p, sc.NormClip(0.4)), torch.zeros(2, dtype=torch.float64),
                       [0.0, 0.5, 1.0])
    cases = [("run.npz", run.save, sc.Trajectory.load,
              lambda b: all(_same(getattr(b, k), getattr(run, k)) for k in
                            ("theta", "tau", "steps", "blowup_step", "clip_fraction", "xi"))),
             ("ode.npz", sol.save, sc.OdeSolution.load,
              lambda b: _same(b.theta, sol.theta) and _same(b.t, sol.t))]
    rng = np.random.default_rng(0)
    for name, save, load, same in cases:
        path = tmp_path / name
        save(path)
        good = path.read_bytes()
        offsets = np.unique(np.concatenate([np.arange(64), len(good) - 1 - np.arange(64),
                                            rng.integers(0, len(good), 200)]))
        loaded = refused = 0
        for off in offsets:
            data = bytearray(good)
            data[off] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(data))
            try:
                back = load(path)
            except ValueError as exc:
                assert name in str(exc), exc
                refused += 1
            else:
                assert same(back), f"byte {off} of {name} changed the loaded content silently"
                loaded += 1
        assert refused > 0.5 * len(offsets), (name, loaded, refused)


def test_check_blowups_helper_for_checkpoints():
    assert io.check_blowups("c.npz", np.array([-1, 3]), 5, alive=np.array([True, False])
                            ).tolist() == [-1, 3]
    with pytest.raises(ValueError, match=r"'c\.npz': chain 1 is alive but its blow-up step is 3"):
        io.check_blowups("c.npz", np.array([-1, 3]), 5, alive=np.array([True, True]))
    with pytest.raises(ValueError, match=r"chain 0 is dead but its blow-up step is -1"):
        io.check_blowups("c.npz", np.array([-1, 3]), 5, alive=np.array([False, False]))
    with pytest.raises(ValueError, match=r"'blowup_step' of chain 1 is 6, expected -1 .* \[1, 5\]"):
        io.check_blowups("c.npz", np.array([-1, 6]), 5)
    with pytest.raises(ValueError, match=r"'alive' must be a bool array of shape \(2,\)"):
        io.check_blowups("c.npz", np.array([-1, 3]), 5, alive=np.array([1, 0]))


@pytest.mark.parametrize("edit", [
    lambda a, m: m.update(step=m["step"] - 3),
    lambda a, m: m["sampler"].update(pos=m["sampler"]["pos"] + 1),
    lambda a, m: a.update(theta=a["theta"] + 1.0),
    lambda a, m: a.update(alive=~a["alive"]),
])
def test_edited_checkpoint_is_refused_on_resume(tmp_path, edit):
    p = sc.problems.location_problem([0.0, 1.0, 2.0, 5.0])
    path = tmp_path / "ck.npz"
    kw = dict(steps=6, chains=2, seed=0, checkpoint=path, checkpoint_every=3)
    sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.5", **kw)
    arrays, meta = io.load_npz(path)
    edit(arrays, meta)
    raw_write(path, meta, redigest=False, **arrays)
    with pytest.raises(ValueError, match=r"ck\.npz.*content digest mismatch"):
        sc.simulate_sgd(p, sc.NormClip(1.0), "harmonic:0.5", resume=True, **kw)


def test_interpolate_selected_chains_equals_rows_of_all():
    # Trajectory.interpolate(chains=...) reads only those rows and gives the same numbers
    p = sc.problems.logistic2d(n=9)
    run = sc.simulate_sgd(p, sc.NormClip(0.5), "harmonic:0.5", steps=20, chains=5, seed=3)
    t = torch.linspace(0.0, float(run.tau[-1]), 17, dtype=torch.float64)
    every = run.interpolate(t)
    assert torch.equal(run.interpolate(t, chains=[3])[0], every[3])
    assert torch.equal(run.interpolate(t, chains=2)[0], every[2])
    assert torch.equal(run.interpolate(t, chains=slice(1, 4)), every[1:4])


def test_saving_into_a_missing_folder_names_the_path(tmp_path):
    # the attack: FileNotFoundError naming a .tmp-* file instead of the user's path
    run = sc.simulate_sgd(sc.problems.logistic2d(n=9), sc.NormClip(1.0), "constant:0.1",
                          steps=3, seed=0)
    target = tmp_path / "missing" / "dir" / "x.npz"
    with pytest.raises(ValueError, match=r"`path` = .*x\.npz.*does not exist"):
        run.save(target)
    assert not (tmp_path / "missing").exists()
