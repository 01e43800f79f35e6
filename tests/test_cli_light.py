"""``sa-clip --help`` and argument errors answer before torch and matplotlib load.

Each case runs in a fresh interpreter (this one has torch loaded already) and reports which
heavy modules were imported by the time the command answered.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROCESS_DEADLINE

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "matplotlib", "numpy", "scipy")
PROBE = """
import json, sys
from sa_clip.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}),
      file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def answer(*argv):
    """Exit code, stdout, the error line(s) and the heavy modules loaded, for ``sa-clip argv``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=PROCESS_DEADLINE)
    *err, last = res.stderr.strip().splitlines()
    report = json.loads(last)
    return report["code"], res.stdout, "\n".join(err), report["loaded"]


@pytest.mark.parametrize("argv, code, says", [
    (["--help"], 0, "usage: sa-clip"),
    (["--version"], 0, "sa-clip "),
    (["run", "--help"], 0, "usage: sa-clip run"),
    (["portrait", "--help"], 0, "usage: sa-clip portrait"),
    (["run", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["run", "--chains", "x"], 2, "argument --chains: invalid int value: 'x'"),
    (["run", "--chains", "0"], 2, "`--chains` must be an integer >= 1, got 0."),
    (["tracking", "--horizon", "-1"], 2, "`--horizon` must be a finite number > 0"),
    (["equilibria", "--seed", "-5"], 2, "`--seed` must be an integer from 0 to 2**63-1"),
    (["nocommand"], 2, "invalid choice: 'nocommand'"),
])
def test_help_and_argument_errors_load_no_heavy_module(argv, code, says):
    got, out, err, loaded = answer(*argv)
    assert got == code, err
    assert says in (out if code == 0 else err)
    if code == 2:
        assert err.count("\n") == 0 and err.startswith("sa-clip: error:"), err
    assert loaded == [], f"`sa-clip {' '.join(argv)}` imported {loaded}"


def test_the_top_level_help_lists_the_deferred_explore_without_loading_it():
    _, out, _, loaded = answer("--help")
    from sa_clip.cli.parser import DEFERRED
    from sa_clip.viz import explore

    assert DEFERRED["explore"] == explore.HELP and explore.HELP in " ".join(out.split())
    assert loaded == []


def test_a_bad_problem_is_answered_with_the_list():
    code, _, err, _ = answer("run", "--problem", "nope")
    import sa_clip.problems as zoo

    assert code == 2 and f"`--problem` must be one of {sorted(zoo.PROBLEMS)}, got 'nope'." in err


def test_the_parsers_copies_of_library_names_agree_with_the_library():
    from sa_clip.cli import options
    from sa_clip.clipping import RULES
    from sa_clip.meanfield import CLIP_PER

    assert options.RULE_NAMES == tuple(sorted(RULES))
    assert options.CLIP_PER == tuple(CLIP_PER)


def test_import_sa_clip_is_light_and_every_public_name_resolves():
    code = ("import sys, sa_clip as sc; assert 'torch' not in sys.modules, 'eager'; "
            "[getattr(sc, n) for n in sc.__all__]; assert 'torch' in sys.modules; "
            "assert 'matplotlib' not in sys.modules; sc.viz; print(len(sc.__all__))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=PROCESS_DEADLINE,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"})
    assert res.returncode == 0, res.stderr
    import sa_clip as sc

    assert int(res.stdout) == len(sc.__all__)


def test_the_lazy_table_and_the_static_imports_of_sa_clip_agree():
    """``sa_clip/__init__.py``: what static tools read (the imports under TYPE_CHECKING) is
    what runs (``_EXPORTS``), and ``__all__`` names exactly those and the submodules."""
    import sa_clip as sc

    tree = ast.parse((ROOT / "sa_clip" / "__init__.py").read_text())
    static, modules = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                for alias in imp.names:
                    if imp.module is None:
                        modules.add(alias.name)
                    else:
                        static[alias.asname or alias.name] = "." + imp.module
    assert static == sc._EXPORTS
    assert set(sc.__all__) == set(static) | (modules & set(sc.__all__))
    assert modules <= set(sc._SUBMODULES)
    for name, module in sc._EXPORTS.items():
        assert getattr(sc, name) is getattr(sys.modules["sa_clip" + module], name)
