"""The `sa-clip` command: every subcommand at tiny size, bad arguments, --config TOML, output
folders (checked first, locked, atomic, manifest last), and the argparse shim."""

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from helpers import PROCESS_DEADLINE, InterruptingField, wait_for

import sa_clip as sc
import sa_clip.experiment as experiment
from sa_clip import cli
from sa_clip.cli import bench, equilibria, options, output, parser
from sa_clip.cli._argparse_compat import option_actions, option_name

ROOT = Path(cli.__file__).resolve().parents[2]
TINY_RUN = ["run", "--quick", "--steps", "30", "--chains", "3", "--samples", "30",
            "--starts", "2", "--tracking-chains", "2", "--noise-chains", "2",
            "--portrait-grid", "5", "--hidden", "4", "--quiet"]
TINY_PORTRAIT = ["portrait", "--steps", "10", "--chains", "3", "--grid", "9", "--ode-starts",
                 "2", "--ode-time", "2", "--n-starts", "2", "--quiet"]


def pngs(folder):
    files = sorted(folder.glob("*.png"))
    assert files, f"no PNG in {folder}"
    assert all(f.stat().st_size > 1000 for f in files)
    return {f.name for f in files}


def fail(argv, capsys):
    """Run the CLI, expect exit 2 with one error line and no traceback; return that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sa-clip: error:"), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def figures_not_rendered(monkeypatch):
    """For tests of what a run computes or how it resumes: the figures are still built, then
    closed, not rendered to PNG (most of a tiny run's time). test_run_writes_figures_... checks
    the rendered files."""
    import matplotlib.pyplot as plt

    def close_only(self, fig, name, **kwargs):
        plt.close(fig)
        self.add(name)
        return self.out / name

    monkeypatch.setattr(output.OutputFolder, "save_figure", close_only)


def resolved(argv):
    ap = cli.build_parser()
    args = ap.parse_args(argv)
    mod = parser.command_module(args.command)
    return options.resolve_options(args, ap.commands[args.command], mod.DEFAULTS, mod.QUICK)


# ---------------------------------------------------------------------------- commands
@pytest.mark.slow
def test_run_writes_figures_summary_manifest_and_table(tmp_path, capsys):
    assert cli.main([*TINY_RUN, "--out", str(tmp_path)]) == 0
    names = pngs(tmp_path)
    expected = {"ode_vs_sgd_norm.png", "ode_vs_sgd_adaptive.png", "tracking.png",
                "shadowing_norm.png", "shadowing_adaptive.png",
                "clip_fraction.png", "loss.png", "noise_norm.png", "portrait_norm.png"}
    assert expected <= names
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["rule"]["rule"] for r in summary["results"]] == ["norm", "adaptive"]
    assert summary["config"]["steps"] == 30 and summary["config"]["hidden"] == "4"
    # the problem as fields, not a repr
    assert summary["problem"] == {"name": "wine-mlp4", "N": 30, "P": 71,
                                  "loss": "cross_entropy", "dtype": "torch.float64",
                                  "device": "cpu", "model": "Sequential"}
    r = summary["results"][0]
    assert r["final_loss_ode"] > 0 and r["tracking_early"] > 0 and r["blowups"] == 0
    stages = summary["stages"]
    assert {"setup", "norm.sgd", "norm.ode", "norm.tracking", "adaptive.tracking", "figures",
            "norm.figures", "norm.noise", "adaptive.figures"} <= set(stages["seconds"])
    assert 200 < stages["peak_rss_mb"] < 5000
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["command"] == "run"
    assert set(manifest["files"]) == expected | {"summary.json"}
    assert not list(tmp_path.glob(".staging-*")) and not list(tmp_path.glob(".*.tmp*"))
    out = capsys.readouterr().out
    assert "D_T early" in out and "adaptive" in out and "summary.json" in out


@pytest.mark.skipif(not experiment.fork_available()[0], reason="no fork here")
def test_run_with_rules_in_worker_processes_equals_one_process(tmp_path, capsys):
    base = [*TINY_RUN, "--noise-chains", "0"]
    runs = {}
    for w in ("1", "2"):
        assert cli.main([*base, "--workers", w, "--out", str(tmp_path / w)]) == 0
        runs[w] = json.loads((tmp_path / w / "summary.json").read_text())
    one, two = runs["1"], runs["2"]
    assert [r["worker"] for r in one["results"]] == [None, None]
    pids = [r["worker"]["pid"] for r in two["results"]]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert one["config"]["workers"] == 1 and two["config"]["workers"] == 2
    for a, b in zip(one["results"], two["results"]):
        for key in ("final_loss_ode", "final_loss_sgd_median", "clip_fraction_late",
                    "tracking_early", "tracking_late"):
            assert b[key] == pytest.approx(a[key], rel=1e-10, abs=1e-14), key
    # the figures the workers drew are published and listed like those drawn here
    files = [json.loads((tmp_path / w / "manifest.json").read_text())["files"]
             for w in ("1", "2")]
    assert files[0] == files[1] and "shadowing_adaptive.png" in files[1]
    assert pngs(tmp_path / "2") == pngs(tmp_path / "1")
    assert {"norm.figures", "adaptive.figures"} <= set(two["stages"]["seconds"])
    out = capsys.readouterr().out
    assert out.count("classic (norm)") == 2
    # the workers write the checkpoints, and a resumed run gives the numbers again
    ck = tmp_path / "ck"
    for extra in ([], ["--resume"]):
        assert cli.main([*base, "--workers", "2", "--out", str(tmp_path / "c"),
                         "--checkpoint", str(ck), "--checkpoint-every", "10", *extra]) == 0
        assert sorted(p.name for p in ck.iterdir()) == ["adaptive.ckpt.npz", "norm.ckpt.npz"]
        got = json.loads((tmp_path / "c" / "summary.json").read_text())["results"]
        assert [r["tracking_late"] for r in got] == [r["tracking_late"] for r in two["results"]]


@pytest.mark.slow
def test_portrait_with_gif(tmp_path, capsys):
    assert cli.main([*TINY_PORTRAIT, "--gif", "--frames", "3", "--out", str(tmp_path)]) == 0
    assert pngs(tmp_path) == {"portrait.png"}
    assert (tmp_path / "portrait.gif").stat().st_size > 1000
    assert capsys.readouterr().out.count("wrote") == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["files"] == ["portrait.png", "portrait.gif"]
    assert oct((tmp_path / "portrait.png").stat().st_mode & 0o777) != oct(0o600)


def test_portrait_adaptive_rule(tmp_path):
    assert cli.main(["portrait", "--rule", "adaptive", "--lam", "0.5", "--steps", "10",
                     "--chains", "2", "--grid", "7", "--ode-starts", "2", "--n-starts", "2",
                     "--out", str(tmp_path), "--quiet"]) == 0
    assert pngs(tmp_path) == {"portrait.png"}


def test_tracking_prints_a_header_and_a_table(tmp_path, capsys):
    code = cli.main(["tracking", "--steps", "20", "--chains", "2", "--starts", "2",
                     "--horizon", "0.5", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    assert pngs(tmp_path) == {"tracking.png"}
    out = capsys.readouterr().out
    header = out.splitlines()[:2]
    assert "logreg" in header[0] and "NormClip" in header[1] and "power:2" in header[1]
    assert "median D_T" in out and out.count("norm") >= 2


def test_equilibria_table(capsys):
    # --device auto rebuilds the problem on the chosen device (CPU here) in float32
    assert cli.main(["equilibria", "--n-starts", "4", "--quiet", "--device", "auto",
                     "--dtype", "float32"]) == 0
    assert "float32" in capsys.readouterr().out
    # 8 starts from seed 1 reach both minima, the saddle and one far-out zero (the default 24
    # from seed 0 do too, in 8x the time: 13 of them run into the iteration limit)
    assert cli.main(["equilibria", "--quiet", "--n-starts", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "stable node" in out and "eigenvalues of DH" in out and "||grad L(θ*)||" in out
    # the tanh toy: two minima and the saddle at the origin, far-out numerical zeros hidden
    assert out.count("stable node") == 2 and "saddle" in out and "[0, 0]" in out
    assert "not shown" in out and "start(s) reached zeros with ||theta|| >" in out


def test_equilibria_explains_zero_found_and_unaccounted_starts():
    args = argparse.Namespace(n_starts=10, max_norm=5.0)
    none = sc.Equilibria([], n_starts=10, not_converged=7,
                         beyond_max_norm=[torch.tensor([1e3])] * 3, max_norm=5.0)
    text = "\n".join(equilibria.accounting(none, args))
    assert "3 start(s) reached zeros with ||theta|| > 5" in text and "not shown" in text
    assert "7 of 10 start(s) converged to no zero" in text
    assert text.count("0 found") == 1 and "--n-starts" in text
    assert equilibria.accounting(sc.Equilibria([object()], n_starts=10), args) == []


def test_bench_builtin(capsys):
    assert cli.main(["bench", "--builtin", "--problem", "tanh", "--chains", "2",
                     "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "H, clipped" in out and "gradient, unclipped" in out and "ms" in out


def test_bench_runs_only_from_a_verified_source_checkout(tmp_path):
    assert bench.source_checkout() == ROOT          # this checkout is one
    pkg = tmp_path / "site-packages" / "sa_clip"
    pkg.mkdir(parents=True)
    (pkg.parent / "benchmarks").mkdir()              # e.g. opacus installs one
    with pytest.raises(cli.CliError, match="no pyproject.toml"):
        bench.source_checkout(pkg)
    (pkg.parent / "pyproject.toml").write_text('[project]\nname = "opacus"\n')
    with pytest.raises(cli.CliError, match="does not describe the project sa-clip"):
        bench.source_checkout(pkg)
    (pkg.parent / "pyproject.toml").write_text('[project]\nname = "sa_clip"\n')
    assert bench.source_checkout(pkg) == pkg.parent
    (pkg.parent / "benchmarks").rmdir()
    with pytest.raises(cli.CliError, match="no benchmarks/ folder.*--builtin"):
        bench.source_checkout(pkg)
    other = tmp_path / "elsewhere" / "not_sa_clip"
    other.mkdir(parents=True)
    with pytest.raises(cli.CliError, match="not named sa_clip"):
        bench.source_checkout(other)


def test_bench_refuses_outside_a_checkout(monkeypatch, tmp_path, capsys):
    pkg = tmp_path / "sa_clip"
    pkg.mkdir()
    real = bench.source_checkout
    monkeypatch.setattr(bench, "source_checkout", lambda: real(pkg))
    err = fail(["bench"], capsys)
    assert "only from a source checkout" in err


# ---------------------------------------------------------------------------- options
def test_config_file_and_command_line_precedence(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('n-starts = 3\nlam = 0.5\nrule = "adaptive"\nadaptive_lam = 0.2\n')
    assert cli.main(["equilibria", "--config", str(cfg), "--lam", "2.0"]) == 0
    out = capsys.readouterr().out
    # the file's rule and adaptive lam, and "from 3 starts"; --lam 2.0 on the line wins
    assert "AdaptiveClip(lam=0.2" in out and "from 3 starts" in out
    with pytest.raises(cli.CliError, match="unknown key 'n-starts'"):
        resolved(["run", "--config", str(cfg), "--lam", "2.0", "--steps", "7"])
    cfg.write_text('lam = 1\nsteps = 9\nquick = true\n')      # an integer for a float is fine
    args = resolved(["run", "--config", str(cfg), "--lam", "2.0"])
    assert args.lam == 2.0 and args.steps == 9 and args.chains == cli.run.QUICK["chains"]
    args = resolved(["run", "--config", str(cfg)])
    assert args.lam == 1.0 and isinstance(args.lam, float)


@pytest.mark.parametrize("text, message", [
    ("steps = 3.7", "key 'steps' (`--steps`) must be an integer, got 3.7"),
    ('quick = "false"', "key 'quick' (`--quick`) must be true or false, got 'false'"),
    ('quiet = "no"', "key 'quiet' (`--quiet`) must be true or false, got 'no'"),
    ("out = 5", "key 'out' (`--out`) must be a string, got 5"),
    ("steps = true", "must be an integer, got True"),
    ('lam = "big"', "key 'lam' (`--lam`) must be a number, got 'big'"),
    ('dtype = "float16"', "must be one of"),
    ("lam = [\n", "not valid TOML"),
])
def test_toml_types_must_match_exactly(text, message, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    assert message in fail(["run", "--config", str(cfg)], capsys)


def test_non_utf8_toml(tmp_path, capsys):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('problem = "wïne"\n'.encode("latin-1"))
    assert "is not UTF-8 text" in fail(["run", "--config", str(cfg)], capsys)


@pytest.mark.parametrize("argv, message", [
    (["run", "--lam", "-1", "--quick"], "`--lam` must be a finite number > 0, got -1.0"),
    (["run", "--adaptive-lam", "0"], "`--adaptive-lam` must be a finite number > 0"),
    (["run", "--eps", "nan"], "`--eps` must be a finite number > 0"),
    (["run", "--steps", "0"], "`--steps` must be an integer >= 1"),
    (["run", "--samples", "0"], "`--samples` must be an integer >= 1, got 0"),
    (["run", "--max-nfev", "0"], "`--max-nfev` must be an integer >= 1"),
    (["run", "--workers", "0"], "`--workers` must be an integer >= 1, got 0"),
    (["run", "--batch-size", "0"], "`--batch-size` must be an integer >= 1"),
    (["run", "--noise-chains", "-1"], "`--noise-chains` must be an integer >= 0"),
    (["run", "--seed", str(2 ** 63)], "`--seed` must be an integer from 0 to 2**63-1"),
    (["run", "--seed", "-1"], "`--seed` must be an integer from 0 to 2**63-1"),
    (["run", "--rule", "nope"], "`--rule` must be one or more of"),
    (["portrait", "--problem", "wine"], "needs a 2-parameter problem"),
    (["run", "--problem", "quartic"], "`--problem` 'quartic' has P = 1 parameter(s)"),
    (["run", "--schedule", "fast:1"], "`--schedule` 'fast:1': must start with one of"),
    (["run", "--device", "tpu"], "`--device` must be cpu, cuda, cuda:N or auto"),
    (["run", "--device", "nonsense"], "`--device` must be cpu, cuda, cuda:N or auto"),
    (["run", "--steps", "abc"], "invalid int value"),
    (["run", "--bogus"], "unrecognized arguments"),
    (["equilibria", "--config", "/nonexistent.toml"], "--config"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        sys.exit(cli.main([*argv, "--out", str(tmp_path / "o")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()          # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(capsys):
    err = fail(["equilibria", "--device", "cuda"], capsys)
    assert "`--device` 'cuda': CUDA is not available" in err


def test_library_errors_name_the_option_as_typed():
    ap = cli.build_parser().commands["run"]
    msg = options.as_typed("`lam` must be > 0; `batch_size` too; `theta` untouched", ap)
    assert msg == "`--lam` must be > 0; `--batch-size` too; `theta` untouched"


@pytest.mark.parametrize("cmd", [c for c in cli.COMMANDS  # explore: its own --quick, below
                                 if hasattr(parser.command_module(c), "QUICK")
                                 and hasattr(parser.command_module(c), "DEFAULTS")])
def test_every_subcommand_has_quick(cmd):
    args = resolved([cmd, "--quick"])
    quick = parser.command_module(cmd).QUICK
    assert quick and all(getattr(args, k) == v for k, v in quick.items())


@pytest.mark.parametrize("cmd", list(cli.COMMANDS))
def test_every_subcommand_explains_itself_without_markup(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: sa-clip {cmd}" in out and "--quick" in out
    # the commands built on the shared options (all but explore) also read a TOML file
    assert ("--config FILE.toml" in out) == hasattr(parser.command_module(cmd), "DEFAULTS")
    for markup in ("``", ":class:", ":func:", ":mod:", ".. "):
        assert markup not in out, markup


def test_top_level_help_without_markup(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sa-clip")
    assert "``" not in out and all(c in out for c in cli.COMMANDS)


def test_a_subcommand_from_another_module_is_one_registry_line(monkeypatch, tmp_path,
                                                              capsys):
    mod = tmp_path / "my_explore.py"
    mod.write_text("def add_arguments(p):\n    p.add_argument('--port', type=int, default=1)\n"
                   "def main(args):\n    print('port', args.port)\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(parser.COMMANDS, "explore", "my_explore")
    assert cli.main(["explore", "--port", "7"]) == 0
    assert capsys.readouterr().out == "port 7\n"


def test_argparse_shim_lists_the_options_as_typed():
    ap = cli.build_parser().commands["run"]
    actions = option_actions(ap)
    assert {"steps", "batch_size", "quick", "config", "max_nfev"} <= set(actions)
    assert "help" not in actions
    assert option_name(actions["batch_size"]) == "--batch-size"
    assert actions["quick"].nargs == 0 and actions["steps"].type is int


@pytest.mark.slow
def test_module_entry_point_in_a_subprocess():
    # `python -m sa_clip.cli` passes main's exit code to the shell and prints one error line
    # (its --help is main's, checked in-process above; torchrun and the kill test below also
    # start this entry point)
    res = subprocess.run([sys.executable, "-m", "sa_clip.cli", "run", "--chains", "-3"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("sa-clip: error: `--chains` must be an integer >= 1")
    assert res.stdout == ""


def test_console_script_exits_with_mains_code_after_flushing(monkeypatch, capsys):
    # the console script skips the interpreter's teardown (os._exit) once main has returned
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli, "main", lambda: print("table") or 3)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        cli.console()
    assert exits == [3] and capsys.readouterr().out == "table\n"


# ---------------------------------------------------------------------------- --max-nfev
def test_max_nfev_reaches_solve_ode(tmp_path, monkeypatch, figures_not_rendered):
    seen = []
    real = experiment.solve_ode

    def spy(*a, **k):
        seen.append(k.get("max_nfev"))
        return real(*a, **k)

    monkeypatch.setattr(experiment, "solve_ode", spy)
    assert cli.main([*TINY_RUN, "--rule", "norm", "--noise-chains", "0", "--portrait-grid",
                     "0", "--max-nfev", "5000", "--out", str(tmp_path)]) == 0
    assert seen == [5000]


# ---------------------------------------------------------------------------- output folders
def test_out_naming_a_file_is_refused_before_compute(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "simulate_sgd", None)     # would fail if compute started
    target = tmp_path / "f.txt"
    target.write_text("x")
    assert "is a file, not a folder" in fail([*TINY_RUN, "--out", str(target)], capsys)
    err = fail([*TINY_RUN, "--out", str(target / "sub")], capsys)
    assert "`--out`" in err and "cannot be written" in err
    err = fail([*TINY_RUN, "--out", str(tmp_path / "o"), "--checkpoint", str(target)], capsys)
    assert "`--checkpoint`" in err and "is a file" in err


def test_second_run_on_a_locked_folder_is_refused(tmp_path, capsys):
    holder = output.OutputFolder(tmp_path, "run").open()
    try:
        err = fail([*TINY_PORTRAIT, "--out", str(tmp_path)], capsys)
        assert f"in use by another sa-clip run (pid {os.getpid()})" in err
    finally:
        holder.publish()
    assert cli.main([*TINY_PORTRAIT, "--out", str(tmp_path)]) == 0   # free again


@pytest.mark.slow
def test_full_disk_keeps_what_was_written_and_says_so(tmp_path, capsys, monkeypatch):
    real = output.OutputFolder.save_animation

    def full(self, anim, name, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output.OutputFolder, "save_animation", full)
    err = fail([*TINY_PORTRAIT, "--gif", "--frames", "2", "--out", str(tmp_path)], capsys)
    assert "No space left on device" in err and "kept the 1 finished file(s)" in err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["files"] == ["portrait.png"]
    assert (tmp_path / "portrait.png").stat().st_size > 1000
    monkeypatch.setattr(output.OutputFolder, "save_animation", real)
    with warnings.catch_warnings():          # the unsaved animation warns when it is freed
        warnings.simplefilter("ignore")
        gc.collect()


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path):
    import matplotlib.pyplot as plt

    from sa_clip.viz import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    good = save_figure(fig, tmp_path, "a.png")
    before = good.read_bytes()

    class Killed(Exception):
        pass

    fig, _ = plt.subplots()

    def dies(path, **kw):
        Path(path).write_bytes(b"")          # a 0-byte file at the temporary name
        raise Killed

    fig.savefig = dies
    with pytest.raises(Killed):
        save_figure(fig, tmp_path, "a.png")
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_concurrent_json_writes_are_never_torn(tmp_path):
    from sa_clip.viz._save import write_text_atomic

    path = tmp_path / "summary.json"
    write_text_atomic(path, json.dumps({"w": -1, "pad": "x" * 50_000}))
    stop, bad = threading.Event(), []

    def writer(k):
        for i in range(60):
            write_text_atomic(path, json.dumps({"w": k, "i": i, "pad": "x" * 50_000}))

    def reader():
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                bad.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    [t.start() for t in threads]
    [t.join() for t in threads]
    stop.set()
    r.join()
    assert not bad and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.slow
def test_kill_mid_run_leaves_the_previous_run_intact(tmp_path):
    out = tmp_path / "o"
    assert cli.main([*TINY_PORTRAIT, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    proc = subprocess.Popen([sys.executable, "-m", "sa_clip.cli", *TINY_PORTRAIT, "--steps",
                             "100000", "--out", str(out)], cwd=ROOT)
    try:                                     # wait until the run holds the folder
        wait_for(lambda: list(out.glob(".staging-*")), "staging folder", proc=proc)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before
    assert cli.main([*TINY_PORTRAIT, "--out", str(out)]) == 0     # stale staging cleaned
    assert not list(out.glob(".staging-*"))


def test_save_animation_rejects_other_suffixes(tmp_path):
    from sa_clip.viz import save_animation

    with pytest.raises(ValueError, match="must end in .gif or .mp4"):
        save_animation(object(), tmp_path / "a.avi")


def test_animation_figure_shim():
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    from sa_clip.viz._save import figure_of_animation

    fig, _ = plt.subplots()
    anim = FuncAnimation(fig, lambda i: [], frames=2)
    assert figure_of_animation(anim) is fig
    with pytest.raises(TypeError, match="expected a matplotlib Animation"):
        figure_of_animation(object())
    plt.close(fig)
    with warnings.catch_warnings():          # never drawn: matplotlib warns when it is freed
        warnings.simplefilter("ignore")
        del anim
        gc.collect()


# ---------------------------------------------------------------------------- resume, ranks
@pytest.mark.slow
def test_run_checkpoint_and_resume_give_the_same_results(tmp_path, monkeypatch,
                                                         figures_not_rendered):
    # one process: the interruption below counts the rules' SGD calls in this process
    base = [*TINY_RUN, "--noise-chains", "0", "--portrait-grid", "0", "--workers", "1"]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    ref = json.loads((tmp_path / "a" / "summary.json").read_text())["results"]
    ck = tmp_path / "ck"
    # an interrupted first run: the SGD of the second rule dies after its checkpoint is written
    real = experiment.simulate_sgd
    calls = []

    def dying(problem, rule, *a, **k):
        calls.append(k["checkpoint"])
        if len(calls) == 2:
            # interrupted after 15 steps: the checkpoint of step 10 is on disk by then
            k["field"] = InterruptingField(problem, rule, 15, KeyboardInterrupt)
        return real(problem, rule, *a, **k)

    monkeypatch.setattr(experiment, "simulate_sgd", dying)
    # a Ctrl-C ends the command with one line and exit code 130, not a traceback
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--checkpoint", str(ck),
                     "--checkpoint-every", "10"]) == 130
    assert sorted(p.name for p in ck.iterdir()) == ["adaptive.ckpt.npz", "norm.ckpt.npz"]
    monkeypatch.setattr(experiment, "simulate_sgd", real)
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--checkpoint", str(ck),
                     "--checkpoint-every", "10", "--resume"]) == 0
    got = json.loads((tmp_path / "b" / "summary.json").read_text())["results"]
    for r0, r1 in zip(ref, got):
        for key in ("final_loss_ode", "final_loss_sgd_median", "clip_fraction_late",
                    "tracking_median"):
            assert r0[key] == r1[key], key


@pytest.mark.slow
def test_tracking_under_torchrun_two_ranks_equals_one_process(tmp_path, capsys):
    args = ["tracking", "--steps", "20", "--chains", "2", "--starts", "2", "--quiet"]
    # the one process is this one (the two ranks are fresh interpreters under torchrun)
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    one = capsys.readouterr().out
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "sa_clip.cli", *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, cwd=ROOT,
                         timeout=PROCESS_DEADLINE,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]

    def table(out):
        return [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("wrote")]

    assert table(two.stdout) == table(one) and len(table(one)) >= 3  # printed once
    assert (tmp_path / "two" / "tracking.png").stat().st_size > 1000


def test_explore_has_quick_and_plain_help(capsys):
    from sa_clip.viz import explore
    ap = explore.add_arguments(argparse.ArgumentParser())
    quick = explore.settings_from_args(ap.parse_args(["--quick"]))
    assert {k: getattr(quick, k) for k in explore.QUICK} == explore.QUICK
    # an option given explicitly wins over --quick
    assert explore.settings_from_args(ap.parse_args(["--quick", "--grid", "31"])).grid == 31
    assert explore.settings_from_args(ap.parse_args([])).grid != explore.QUICK["grid"]


def test_samples_reaches_toys_and_errors_name_the_option(tmp_path, capsys,
                                                         figures_not_rendered):
    # the attack: --samples was ignored for toys, and its error named the zoo's `n`
    out = tmp_path / "o"
    assert cli.main(["run", "--problem", "logistic2d", "--samples", "7", "--steps", "20",
                     "--chains", "2", "--noise-chains", "0", "--portrait-grid", "0",
                     "--starts", "2", "--quiet", "--rule", "norm", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problem"]["N"] == 7
    assert cli.main(["run", "--samples", "1000000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "`--samples` must be an integer from 1 to 178" in err and "`n`" not in err
    assert cli.main(["run", "--out", "", "--quick", "--quiet"]) == 2
    assert "`--out` must name a folder, got an empty string" in capsys.readouterr().err


def test_hidden_for_a_toy_is_refused(tmp_path, capsys):
    # --hidden was silently ignored for the toys (their model is fixed)
    assert cli.main(["run", "--problem", "tanh", "--hidden", "8", "--quick", "--quiet",
                     "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "`--hidden` sets the network of the data-set problems" in err and "'tanh'" in err
    assert not (tmp_path / "a").exists()


def test_default_workers_one_per_rule_and_core_and_one_off_the_cpu(monkeypatch):
    from types import SimpleNamespace

    from sa_clip.cli import run

    cpu = SimpleNamespace(device=torch.device("cpu"))
    gpu = SimpleNamespace(device=torch.device("cuda", 0))     # only its .device is read
    args = SimpleNamespace(workers=None)
    monkeypatch.setattr(run.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert run.workers(args, cpu, 2) == 2 and run.workers(args, cpu, 5) == 3
    assert run.workers(args, cpu, 1) == 1 and run.workers(args, gpu, 2) == 1
    monkeypatch.setattr("sa_clip._workers.fork_available", lambda: (False, "macOS"))
    assert run.workers(args, cpu, 2) == 1
    assert run.workers(SimpleNamespace(workers=4), gpu, 2) == 4      # as given
