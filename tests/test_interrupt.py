"""Interrupted and broken runs end cleanly: SIGINT/SIGTERM, a killed worker, the folder lock.

Every wait on another process is on an event (a file that appears whole, a process's end)
with the deadline of minutes of ``helpers.PROCESS_DEADLINE``: never on wall-clock speed.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROCESS_DEADLINE, wait_for

import sa_clip as sc
from sa_clip import cli
from sa_clip._workers import fork_available
from sa_clip.cli import output
from sa_clip.cli.options import CliError
from sa_clip.experiment import RulesFailed

ROOT = Path(cli.__file__).resolve().parents[2]
# three rules on two workers: when the first figure is staged, the third rule has just begun
SMALL_RUN = ["run", "--quick", "--rule", "norm,adaptive,none", "--workers", "2", "--steps",
             "4000", "--chains", "3", "--samples", "30", "--hidden", "4", "--starts", "2",
             "--tracking-chains", "2", "--noise-chains", "0", "--portrait-grid", "0",
             "--quiet"]
TINY_PORTRAIT = ["portrait", "--steps", "10", "--chains", "3", "--grid", "9", "--ode-starts",
                 "2", "--ode-time", "2", "--n-starts", "2", "--quiet"]
needs_fork = pytest.mark.skipif(not fork_available()[0], reason="no fork here")


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def children(pid):
    """Pids of the live children of ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# ---------------------------------------------------------------------------- signals
@pytest.mark.slow
@needs_fork
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), (signal.SIGTERM, False),
                                        (signal.SIGTERM, True)],
                         ids=["ctrl-c-to-group", "term-to-parent", "term-to-group"])
def test_a_signal_ends_the_run_with_one_line_and_keeps_finished_figures(tmp_path, sig, group):
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "sa_clip.cli", *SMALL_RUN, "--out",
                             str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as from a terminal: SIGINT not ignored (a test runner's worker
                            # may ignore it, and a run respects an ignored SIGINT)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # the event: a rule's first figure is finished (written whole into staging)
        seen = wait_for(lambda: [p.name for p in out.glob(".staging-*/*.png")
                                 if not p.name.startswith(".")],    # not a temporary file
                        "finished figure", proc=proc)
        workers = children(proc.pid)
        if group:                             # as a terminal's Ctrl-C: every process
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=PROCESS_DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err
    assert err.count("\n") == 1 and err.startswith(f"sa-clip: interrupted by {name}; kept "), err
    assert "Traceback" not in err
    m = manifest(out)
    assert m["status"] == "interrupted" and m["signal"] == name
    assert set(seen) <= set(m["files"])              # finished figures are kept
    assert all((out / f).stat().st_size > 1000 for f in m["files"] if f.endswith(".png"))
    assert m["missing"] and "summary.json" in m["missing"]
    assert not set(m["files"]) & set(m["missing"])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert workers and all(wait_for(lambda w=w: gone(w), "end of a worker") for w in workers)


def test_interruption_before_anything_is_written_leaves_the_folder_as_it_was(
        tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    assert cli.main([*TINY_PORTRAIT, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import sa_clip.equilibria

    def interrupted(*a, **k):
        raise cli.interrupt.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(sa_clip.equilibria, "find_equilibria", interrupted)
    capsys.readouterr()
    assert cli.main([*TINY_PORTRAIT, "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert err == f"sa-clip: interrupted by SIGTERM; {str(out)!r} is as it was (nothing was " \
                  "finished).\n"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_ignored_sigint_stays_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(signal, "getsignal", lambda s: signal.SIG_IGN if s == signal.SIGINT
                        else signal.SIG_DFL)
    installed = {}                      # recorded, not installed in this process

    def record(s, h):
        installed.setdefault(s, h)
        return signal.SIG_DFL

    monkeypatch.setattr(signal, "signal", record)
    with cli.interrupt.interruptible():
        pass
    assert signal.SIGINT not in installed and signal.SIGTERM in installed


def test_handlers_are_restored_after_a_command(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main([*TINY_PORTRAIT, "--out", str(tmp_path / "o")]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ---------------------------------------------------------------------------- dead workers
@needs_fork
def test_a_killed_worker_costs_only_its_rule_in_the_library():
    def die_if_b(report):
        if report.name == "b":
            os.kill(os.getpid(), signal.SIGKILL)

    p = sc.problems.logistic2d(n=20)
    with pytest.raises(RulesFailed, match=r"rule\(s\) lost: the worker process of job 'b' died "
                                          r"without a result: killed by signal 9") as info:
        sc.run_experiment(p, {"a": sc.NormClip(0.5), "b": sc.NormClip(0.3)}, "harmonic:0.5",
                          steps=20, chains=2, starts=2, workers=2, on_report=die_if_b)
    exp = info.value.experiment
    assert [r.name for r in exp] == ["a"] and list(info.value.failed) == ["b"]
    ref = sc.run_experiment(p, {"a": sc.NormClip(0.5)}, "harmonic:0.5", steps=20, chains=2,
                            starts=2)
    assert exp["a"].trajectory.theta.equal(ref["a"].trajectory.theta)


@pytest.mark.slow
@needs_fork
def test_kill_9_of_the_second_worker_keeps_the_first_rules_figures(tmp_path, monkeypatch,
                                                                      capsys):
    import sa_clip.cli.run as run

    out = tmp_path / "o"
    real = run.rule_figures

    def figures(problem, schedule, report, args, *, first):
        if report.name == "adaptive":         # after the first rule has staged its figures
            wait_for(lambda: list(out.glob(".staging-*/noise_norm.png")),
                     "the first rule's figures")
            os.kill(os.getpid(), signal.SIGKILL)
        yield from real(problem, schedule, report, args, first=first)

    monkeypatch.setattr(run, "rule_figures", figures)
    argv = ["run", "--quick", "--steps", "30", "--chains", "3", "--samples", "30", "--starts",
            "2", "--tracking-chains", "2", "--noise-chains", "2", "--portrait-grid", "5",
            "--hidden", "4", "--quiet", "--workers", "2", "--out", str(out)]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and "adaptive" in captured.err
    assert "killed by signal 9" in captured.err and "other rules' outputs are kept" in \
        captured.err
    m = manifest(out)
    assert m["status"] == "incomplete" and list(m["failed"]) == ["adaptive"]
    norm = ["shadowing_norm.png", "ode_vs_sgd_norm.png", "portrait_norm.png", "noise_norm.png"]
    assert set(norm + ["tracking.png", "loss.png", "summary.json"]) <= set(m["files"])
    assert {"shadowing_adaptive.png", "ode_vs_sgd_adaptive.png"} <= set(m["missing"])
    for f in m["files"]:
        assert (out / f).stat().st_size > 100, f
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["results"]] == ["norm"]
    assert "killed by signal 9" in summary["failed"]["adaptive"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------- the lock
def test_lock_refuses_a_symlink_and_never_writes_through_it(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / output.LOCK).symlink_to(victim)
    with pytest.raises(CliError, match=r"lock file \.sa-clip\.lock cannot be opened .*symbolic "
                                       r"link there is refused"):
        output.OutputFolder(out, "run").open()
    assert victim.read_text() == "precious"
    assert (out / output.LOCK).is_symlink()           # not removed either: not ours
    assert not list(out.glob(".staging-*"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_lock_refuses_a_fifo_without_hanging(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    os.mkfifo(out / output.LOCK)
    with pytest.raises(CliError, match=r"\.sa-clip\.lock there is not a regular file"):
        output.OutputFolder(out, "run").open()


def test_second_run_refused_while_the_first_is_live_and_lock_removed_after(tmp_path):
    out = tmp_path / "o"
    first = output.OutputFolder(out, "run").open()
    with pytest.raises(CliError, match=rf"is in use by another sa-clip run \(pid "
                                       rf"{os.getpid()}\)"):
        output.OutputFolder(out, "run").open()
    first.write_json("summary.json", {"x": 1})
    with first:
        pass
    assert not (out / output.LOCK).exists()
    assert manifest(out)["files"] == ["summary.json"]
    second = output.OutputFolder(out, "run").open()     # free again
    with second:
        pass
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "summary.json"]


def test_a_stale_lock_of_a_killed_run_is_taken_over_and_removed(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / output.LOCK).write_text("999999")             # left by a kill -9: not locked
    with output.OutputFolder(out, "run").open():
        assert (out / output.LOCK).read_text() == str(os.getpid())
    assert not (out / output.LOCK).exists()


def test_no_lock_file_left_after_a_normal_run(tmp_path):
    out = tmp_path / "o"
    assert cli.main([*TINY_PORTRAIT, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "portrait.png"]


def test_a_refused_argument_keeps_the_previous_complete_manifest(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main([*TINY_PORTRAIT, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    # (--quick --chains 2 alone is no longer refused: --quick's tracking chains follow)
    assert cli.main(["run", "--quick", "--chains", "2", "--tracking-chains", "5",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sa-clip: error:") and "--tracking-chains" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
