"""sa_clip._workers: jobs in forked processes, results (tensors included) sent back whole."""

import os
import signal

import pytest
import torch
from helpers import PROCESS_DEADLINE, wait_for

from sa_clip._workers import WorkerDied, WorkerError, fork_available, run_jobs

pytestmark = pytest.mark.skipif(not fork_available()[0], reason=fork_available()[1])


def test_results_come_back_in_job_order_from_other_processes():
    here = os.getpid()
    jobs = [(f"j{i}", (lambda i=i: (i * i, os.getpid()))) for i in range(5)]
    out = list(run_jobs(jobs, workers=2))
    assert [name for name, _ in out] == ["j0", "j1", "j2", "j3", "j4"]
    assert [value for _, (value, _) in out] == [0, 1, 4, 9, 16]
    pids = {pid for _, (_, pid) in out}
    assert here not in pids and len(pids) == 5          # one fresh process per job


def test_tensors_round_trip_exactly_whatever_their_layout_and_dtype():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, 4, dtype=torch.float64, generator=g)
    payload = {
        "f64": base,
        "f32": base.float(),
        "bf16": base.to(torch.bfloat16),             # no numpy dtype: pickled in band
        "int": torch.arange(7),
        "bool": base > 0,
        "view": base[:, 1],                           # not contiguous
        "transposed": base.transpose(0, 2),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
        "nested": [base[0], ("x", {"y": base[1, 2]})],
    }
    ((_, got),) = run_jobs([("t", lambda: payload)], workers=1)
    assert got.keys() == payload.keys()
    for key, ref in payload.items():
        if key == "nested":
            continue
        assert got[key].dtype == ref.dtype and got[key].shape == ref.shape, key
        assert torch.equal(got[key], ref) or key == "nan", key
    assert torch.equal(got["nan"][1:], payload["nan"][1:]) and torch.isnan(got["nan"][0])
    assert str(got["nan"][2].item()) == "-0.0"
    assert torch.equal(got["nested"][0], base[0]) and got["nested"][1][0] == "x"
    assert torch.equal(got["nested"][1][1]["y"], base[1, 2])
    got["f64"][0, 0, 0] = 123.0                       # a writable tensor of its own
    assert base[0, 0, 0] != 123.0


def test_a_job_that_raises_raises_here_with_the_workers_traceback():
    def bad():
        raise ValueError("`lam` must be positive, got -1.")

    with pytest.raises(ValueError, match="must be positive") as info:
        list(run_jobs([("ok", lambda: 1), ("bad", bad)], workers=2))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "worker process of job 'bad'" in notes
    assert "raise ValueError" in notes


def test_a_killed_worker_is_an_error_naming_the_job_and_the_signal():
    def killed():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerError, match=r"job 'k' died without a result: killed by signal 9 "
                                          r"\(out of memory\?\)"):
        list(run_jobs([("k", killed)], workers=1))


def test_keep_going_yields_a_dead_worker_and_runs_the_other_jobs():
    def killed():
        os.kill(os.getpid(), signal.SIGKILL)

    out = list(run_jobs([("a", lambda: 1), ("k", killed), ("b", lambda: 2)], workers=2,
                        keep_going=True))
    assert [name for name, _ in out] == ["a", "k", "b"]
    assert out[0][1] == 1 and out[2][1] == 2
    assert isinstance(out[1][1], WorkerDied) and "killed by signal 9" in str(out[1][1])


def test_keep_going_still_raises_what_a_job_raised():
    def bad():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(run_jobs([("bad", bad)], workers=1, keep_going=True))


def test_a_result_that_does_not_pickle_is_a_clear_error():
    with pytest.raises(TypeError, match="the job's result cannot be sent back"):
        list(run_jobs([("lam", lambda: (lambda: 0))], workers=1))


def test_results_already_yielded_are_kept_when_a_later_job_fails():
    def bad():
        raise RuntimeError("boom")

    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for name, value in run_jobs([("a", lambda: 1), ("b", bad)], workers=1):
            got.append((name, value))
    assert got == [("a", 1)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"`workers` must be a positive integer, got "):
        list(run_jobs([("a", lambda: 1)], workers=bad))


def test_a_worker_after_the_parents_openmp_pool_runs_on_one_thread():
    # GNU OpenMP's pool does not survive fork: a child that opens a parallel region with two
    # threads after the parent used its pool hangs. In a subprocess, so a regression fails
    # on the deadline (minutes: only a hang guard) instead of hanging the suite.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from sa_clip._workers import run_jobs\n"
        "torch.set_num_threads(2)\n"
        "x = torch.randn(1500, 1500)\n"
        "(x @ x).sum(); torch.tanh(x).sum()       # the parent's pool is up\n"
        "def job():\n"
        "    y = torch.randn(1500, 1500)\n"
        "    (y @ y).sum(); torch.tanh(2 * y).sum()\n"
        "    return torch.get_num_threads()\n"
        "print(dict(run_jobs([('a', job), ('b', job)], workers=2)))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=PROCESS_DEADLINE)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "{'a': 1, 'b': 1}"


@pytest.mark.skipif(not os.sys.platform.startswith("linux"), reason="prctl is Linux-only")
def test_workers_die_with_their_parent():
    # a parent process runs a job that would sleep for ten minutes, and is killed: the worker
    # must not outlive it. Every wait is on an event (the worker's pid on a pipe, the
    # worker's end), with deadlines of minutes: the child may take long to import torch
    # on a loaded machine.
    import select
    import subprocess
    import sys

    code = (
        "import os, time\n"
        "from sa_clip._workers import run_jobs\n"
        "def job():\n    print(os.getpid(), flush=True)\n"
        "    time.sleep(600)\n"
        "list(run_jobs([('sleep', job)], workers=1))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], PROCESS_DEADLINE)
        line = proc.stdout.readline() if ready else ""
        assert line.strip().isdigit(), f"no worker pid from the parent (exit {proc.poll()})"
        worker = int(line)
    finally:
        proc.kill()
        proc.wait()

    def gone():                           # a zombie (exited, not yet reaped) is not alive
        try:
            with open(f"/proc/{worker}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    try:
        wait_for(gone, "end of the worker after its parent was killed")
    finally:
        if not gone():
            os.kill(worker, signal.SIGKILL)
