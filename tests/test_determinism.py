"""Same seed, device and dtype: identical results, within a process and between a fresh process
and this one."""

import hashlib
import os
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import PROCESS_DEADLINE

import sa_clip as sc

SCRIPT = r'''
import hashlib, warnings
import pytest
import torch
import sa_clip as sc

def digest(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(torch.as_tensor(t).detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

def results():
    warnings.simplefilter("ignore")
    p = sc.problems.logistic2d(n=30)
    rule = sc.NormClip(0.3)
    f = sc.MeanField(p, rule)
    out = {}
    for sampling in ("iid", "epoch"):
        run = sc.simulate_sgd(p, rule, "power:0.5,0.7", steps=40, chains=6, batch_size=4,
                              seed=123, sampling=sampling, record_noise=True, record_every=3)
        out["sgd_" + sampling] = digest(run.theta, run.clip_fraction, run.xi,
                                        run.quadratic_variation)
    m, se = sc.batch_mean_field(p, rule, torch.zeros(3, 2, dtype=torch.float64), 5,
                                samples=50, seed=9)
    m2, se2 = sc.batch_mean_field(p, rule, torch.zeros(3, 2, dtype=torch.float64), 5,
                                  samples=50, seed=9, replace=False)
    out["batch_mean_field"] = digest(m, se, m2, se2)
    res = sc.tracking_distance(run, f, horizon=0.5, starts=[0.0, 0.4])
    out["tracking"] = digest(res.distance, res.h)
    eqs = sc.find_equilibria(f, n_starts=4, scale=2.0, seed=5)
    out["equilibria"] = digest(*[e.theta for e in eqs], torch.tensor([e.count for e in eqs]))
    return out

if __name__ == "__main__":
    for k, v in sorted(results().items()):
        print(k, v)
'''


def _namespace():
    ns = {"__name__": "determinism"}
    exec(compile(SCRIPT, "determinism", "exec"), ns)
    return ns


def test_same_seed_same_numbers_in_one_process():
    with warnings.catch_warnings():
        a = _namespace()["results"]()
        b = _namespace()["results"]()
    assert a == b and len(a) == 5


def test_different_seeds_differ():
    p = sc.problems.logistic2d(n=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = sc.simulate_sgd(p, sc.NormClip(0.3), "harmonic:0.5", steps=5, chains=2, seed=1)
        r2 = sc.simulate_sgd(p, sc.NormClip(0.3), "harmonic:0.5", steps=5, chains=2, seed=2)
        g = torch.Generator().manual_seed(1)
        r3 = sc.simulate_sgd(p, sc.NormClip(0.3), "harmonic:0.5", steps=5, chains=2, seed=g)
    assert not torch.equal(r1.theta, r2.theta)
    assert torch.equal(r1.theta, r3.theta)  # an int seed is a Generator seeded with it


@pytest.mark.slow
def test_same_seed_same_numbers_in_a_fresh_process_and_this_one(tmp_path):
    script = tmp_path / "det.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(sc.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    # one fresh interpreter (its own hash seed, fresh RNG state, one thread) against this
    # long-lived process (other tests have run here, torch has its own thread count): two
    # processes that share nothing but the code
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=PROCESS_DEADLINE, check=True).stdout
    assert len(out.splitlines()) == 5
    here = _namespace()["results"]()
    assert out == "".join(f"{k} {v}\n" for k, v in sorted(here.items()))
    # each line is a result's name and the SHA-256 of its numbers, and the results differ
    lines = [line.split() for line in out.splitlines()]
    assert [k for k, _ in lines] == ["batch_mean_field", "equilibria", "sgd_epoch", "sgd_iid",
                                     "tracking"]
    digests = [d for _, d in lines]
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests)
    assert len(set(digests)) == len(digests)
    empty = hashlib.sha256(b"").hexdigest()   # a digest of nothing would mean no numbers
    assert empty not in digests
