"""Every script in examples/ runs at tiny size (Agg backend) and writes non-empty files."""

import os
import re

import matplotlib
import pytest
import torch
from helpers import load_example

matplotlib.use("Agg")

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXAMPLES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "examples"))
                  if f.endswith(".py") and not f.startswith("_"))

#: tiny arguments for each example; every file in examples/ must have an entry
TINY = {
    "phase_portrait": ["--steps", "20", "--chains", "3", "--grid", "9", "--n-starts", "4"],
    "ode_vs_sgd": ["--steps", "30", "--chains", "3", "--record-every", "5", "--hidden", "4"],
    "compare_rules": ["--steps", "30", "--chains", "3", "--record-every", "5", "--hidden",
                      "4"],
    "batch_clipping": ["--n", "16", "--samples", "20"],
    "exploding": ["--steps", "10", "--chains", "4"],
    "animation": ["--steps", "10", "--chains", "4", "--frames", "3", "--grid", "7",
                  "--n-starts", "4"],
    "gallery": ["--tiny", "--only", "exploding", "batch_clipping"],
}
#: examples over about 3 s even at tiny size (a field on a grid, root finding, the figure)
SLOW = {"animation", "phase_portrait"}



def test_tracking_example_runs_at_tiny_size(tmp_path, capsys):
    res = load_example("tracking").main(["--steps", "20", "--chains", "2", "--starts", "2",
                                         "--horizon", "0.5", "--out", str(tmp_path)])
    assert res.distance.shape == (2, 2) and torch.isfinite(res.distance).all()
    out = capsys.readouterr().out
    assert "median D_T falls" in out and f"wrote {tmp_path / 'tracking.png'}" in out
    assert (tmp_path / "tracking.png").stat().st_size > 1000


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_use_only_public_api_and_one_convention(name):
    """No sys.path tricks, no CLI internals, no private names; --out and "wrote ..."."""
    src = open(os.path.join(ROOT, "examples", f"{name}.py")).read()
    assert "sys.path" not in src and "sa_clip.cli" not in src
    imports = re.findall(r"^\s*(?:from\s+(\S+)\s+import\s+(.+)|import\s+(\S+))", src, re.M)
    for module, names, plain in imports:
        mod = module or plain
        assert not any(part.startswith("_") for part in mod.split(".") if part != "__future__"), mod
        assert not any(n.strip().startswith("_") for n in names.split(",") if n.strip()
                       and "__future__" not in mod), names
    assert '"--out"' in src
    if name != "gallery":                    # the gallery runs the others, which print
        assert 'print(f"wrote' in src or 'print("wrote' in src


def test_fluctuations_table_columns_line_up(tmp_path, capsys):
    load_example("fluctuations").main(["--chains", "50", "--steps", "50", "--out",
                                       str(tmp_path)])
    lines = [ln for ln in capsys.readouterr().out.splitlines()
             if ln.strip().startswith(("entry", "S1", "S2", "eig "))]
    assert len(lines) == 6
    ends = {len(ln) for ln in lines}
    assert len(ends) == 1, lines                     # every row as wide as the header
    header = lines[0]
    for col in ("predicted", "empirical"):
        end = header.index(col) + len(col)
        for ln in lines[1:]:
            assert ln[end - 1] != " " and (end == len(ln) or ln[end] == " "), (col, ln)


def test_every_example_has_a_smoke_test():
    """An example is covered by TINY here or by a test file that loads it by name."""
    tests = os.path.dirname(__file__)
    texts = "".join(open(os.path.join(tests, f)).read() for f in os.listdir(tests)
                    if f.startswith("test_") and f.endswith(".py") and f != "test_examples.py")
    missing = [e for e in EXAMPLES if e not in TINY and e != "tracking"
               and f'"{e}"' not in texts]
    assert not missing, f"add tiny arguments for {missing} to TINY"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in TINY if n in EXAMPLES])
def test_example_writes_images(name, tmp_path, capsys):
    load_example(name).main([*TINY[name], "--out", str(tmp_path)])
    files = [f for f in tmp_path.rglob("*") if f.suffix in (".png", ".gif")]
    assert files and all(f.stat().st_size > 1000 for f in files)
    assert "wrote" in capsys.readouterr().out


def test_exploding_example_shows_the_contrast(tmp_path):
    blowups = load_example("exploding").main(["--steps", "30", "--chains", "8", "--out",
                                              str(tmp_path)])
    assert blowups["none"] > 0 and blowups["norm"] == 0
