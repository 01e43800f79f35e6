"""The `sa-clip` command: every subcommand at tiny size, bad arguments, --config TOML."""

import json
import subprocess
import sys

import pytest
from helpers import InterruptingField

from sa_clip import cli

TINY_RUN = ["run", "--quick", "--steps", "30", "--chains", "3", "--samples", "30",
            "--starts", "2", "--tracking-chains", "2", "--noise-chains", "2",
            "--portrait-grid", "5", "--hidden", "4", "--quiet"]


def pngs(folder):
    files = sorted(folder.glob("*.png"))
    assert files, f"no PNG in {folder}"
    assert all(f.stat().st_size > 1000 for f in files)
    return {f.name for f in files}


@pytest.mark.slow
def test_run_writes_figures_summary_and_table(tmp_path, capsys):
    assert cli.main([*TINY_RUN, "--out", str(tmp_path)]) == 0
    names = pngs(tmp_path)
    assert {"ode_vs_sgd_norm.png", "ode_vs_sgd_adaptive.png", "tracking.png",
            "clip_fraction.png", "loss.png", "noise_norm.png", "portrait_norm.png"} <= names
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["rule"]["rule"] for r in summary["results"]] == ["norm", "adaptive"]
    assert summary["config"]["steps"] == 30 and summary["config"]["hidden"] == "4"
    r = summary["results"][0]
    assert r["final_loss_ode"] > 0 and r["tracking_early"] > 0 and r["blowups"] == 0
    out = capsys.readouterr().out
    assert "D_T early" in out and "adaptive" in out and "summary.json" in out


def test_portrait_with_gif(tmp_path, capsys):
    code = cli.main(["portrait", "--steps", "10", "--chains", "3", "--grid", "9",
                     "--ode-starts", "2", "--n-starts", "2", "--gif", "--frames", "3",
                     "--out", str(tmp_path), "--quiet"])
    assert code == 0
    assert pngs(tmp_path) == {"portrait.png"}
    assert (tmp_path / "portrait.gif").stat().st_size > 1000


def test_portrait_adaptive_rule(tmp_path):
    assert cli.main(["portrait", "--rule", "adaptive", "--lam", "0.5", "--steps", "10",
                     "--chains", "2", "--grid", "7", "--ode-starts", "2", "--n-starts", "2",
                     "--out", str(tmp_path), "--quiet"]) == 0
    assert pngs(tmp_path) == {"portrait.png"}


def test_tracking(tmp_path, capsys):
    code = cli.main(["tracking", "--steps", "20", "--chains", "2", "--starts", "2",
                     "--horizon", "0.5", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    assert pngs(tmp_path) == {"tracking.png"}
    out = capsys.readouterr().out
    assert "median D_T" in out and out.count("norm") >= 2


def test_equilibria_table(capsys):
    # --device auto rebuilds the problem on the chosen device (CPU here) in float32
    assert cli.main(["equilibria", "--n-starts", "4", "--quiet", "--device", "auto",
                     "--dtype", "float32"]) == 0
    assert "float32" in capsys.readouterr().out
    assert cli.main(["equilibria", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stable node" in out and "eigenvalues of DH" in out and "||grad L(θ*)||" in out
    # the tanh toy: two minima and the saddle at the origin, far-out numerical zeros hidden
    assert out.count("stable node") == 2 and "saddle" in out and "[0, 0]" in out
    assert "not shown" in out


def test_bench_builtin(capsys):
    assert cli.main(["bench", "--builtin", "--problem", "tanh", "--chains", "2",
                     "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "H, clipped" in out and "gradient, unclipped" in out and "ms" in out


def test_config_file_and_command_line_precedence(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('n-starts = 3\nlam = 0.5\nrule = "adaptive"\nadaptive_lam = 0.2\n')
    assert cli.main(["equilibria", "--config", str(cfg), "--lam", "2.0"]) == 0
    out = capsys.readouterr().out
    # the file's rule and adaptive lam, and "from 3 starts"; --lam 2.0 on the line wins
    assert "AdaptiveClip(lam=0.2" in out and "from 3 starts" in out
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--config", str(cfg), "--lam", "2.0", "--steps", "7"])
    sub = parser._subparsers._group_actions[0].choices["run"]
    with pytest.raises(cli.CliError, match="unknown key 'n-starts'"):
        cli._finish(args, sub)        # n-starts is not an option of `run`
    cfg.write_text('lam = 0.5\nsteps = 9\nquick = true\n')
    args = cli._finish(parser.parse_args(["run", "--config", str(cfg), "--lam", "2.0"]), sub)
    assert args.lam == 2.0 and args.steps == 9 and args.chains == cli.QUICK["chains"]


@pytest.mark.parametrize("argv, message", [
    (["run", "--lam", "-1", "--quick"], "`lam` must be a number > 0"),
    (["run", "--steps", "0"], "`--steps` must be an integer >= 1"),
    (["run", "--rule", "nope"], "`--rule` must be one or more of"),
    (["portrait", "--problem", "wine"], "needs a 2-parameter problem"),
    (["run", "--schedule", "fast:1"], "`schedule` must start with one of"),
    (["run", "--steps", "abc"], "invalid int value"),
    (["run", "--bogus"], "unrecognized arguments"),
    (["equilibria", "--config", "/nonexistent.toml"], "--config"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        sys.exit(cli.main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and message in err
    assert "Traceback" not in err


def test_bad_toml(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("lam = [\n")
    assert cli.main(["equilibria", "--config", str(cfg)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    cfg.write_text('lam = "big"\n')
    assert cli.main(["equilibria", "--config", str(cfg)]) == 2
    assert "key 'lam' must be a float" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["run", "portrait", "tracking", "equilibria", "bench"])
def test_every_subcommand_explains_itself(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: sa-clip {cmd}" in out and "--config FILE.toml" in out


@pytest.mark.slow
def test_module_entry_point_in_a_subprocess():
    cwd = cli.Path(cli.__file__).parents[1]
    res = subprocess.run([sys.executable, "-m", "sa_clip.cli", "--help"], capture_output=True,
                         text=True, cwd=cwd)
    assert res.returncode == 0 and "usage: sa-clip" in res.stdout and "equilibria" in res.stdout
    res = subprocess.run([sys.executable, "-m", "sa_clip.cli", "run", "--chains", "-3"],
                         capture_output=True, text=True, cwd=cwd)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "`--chains` must be an integer >= 1" in res.stderr


def test_save_animation_rejects_other_suffixes(tmp_path):
    with pytest.raises(ValueError, match="must end in .gif or .mp4"):
        cli.save_animation(object(), tmp_path / "a.avi")


@pytest.mark.slow
def test_run_checkpoint_and_resume_give_the_same_results(tmp_path, monkeypatch):
    base = [*TINY_RUN, "--noise-chains", "0", "--portrait-grid", "0"]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    ref = json.loads((tmp_path / "a" / "summary.json").read_text())["results"]
    ck = tmp_path / "ck"
    # an interrupted first run: the SGD of the second rule dies after its checkpoint is written
    real = cli.simulate_sgd
    calls = []

    def dying(problem, rule, *a, **k):
        calls.append(k["checkpoint"])
        if len(calls) == 2:
            # interrupted after 15 steps: the checkpoint of step 10 is on disk by then
            k["field"] = InterruptingField(problem, rule, 15, KeyboardInterrupt)
        return real(problem, rule, *a, **k)

    monkeypatch.setattr(cli, "simulate_sgd", dying)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*base, "--out", str(tmp_path / "b"), "--checkpoint", str(ck),
                  "--checkpoint-every", "10"])
    assert sorted(p.name for p in ck.iterdir()) == ["adaptive.ckpt.npz", "norm.ckpt.npz"]
    monkeypatch.setattr(cli, "simulate_sgd", real)
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--checkpoint", str(ck),
                     "--checkpoint-every", "10", "--resume"]) == 0
    got = json.loads((tmp_path / "b" / "summary.json").read_text())["results"]
    for r0, r1 in zip(ref, got):
        for key in ("final_loss_ode", "final_loss_sgd_median", "clip_fraction_late",
                    "tracking_median"):
            assert r0[key] == r1[key], key


@pytest.mark.slow
def test_tracking_under_torchrun_two_ranks_equals_one_process(tmp_path):
    cwd = cli.Path(cli.__file__).parents[1]
    args = ["tracking", "--steps", "20", "--chains", "2", "--starts", "2", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "sa_clip.cli", *args, "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, cwd=cwd,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "sa_clip.cli", *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, cwd=cwd,
                         timeout=300, env={**cli.os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]
    def table(out):
        return [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("wrote")]

    assert table(two.stdout) == table(one.stdout) and len(table(one.stdout)) >= 3  # once
    assert (tmp_path / "two" / "tracking.png").stat().st_size > 1000
