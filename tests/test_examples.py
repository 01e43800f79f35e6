"""Every script in examples/ runs at tiny size (Agg backend) and writes non-empty files."""

import os

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
    "phase_portrait": ["--steps", "20", "--chains", "3", "--grid", "9"],
    "ode_vs_sgd": ["--steps", "30", "--chains", "3", "--record-every", "5", "--hidden", "4"],
    "compare_rules": ["--steps", "30", "--chains", "3", "--record-every", "5", "--hidden",
                      "4"],
    "batch_clipping": ["--n", "16", "--samples", "20"],
    "exploding": ["--steps", "10", "--chains", "4"],
    "animation": ["--steps", "10", "--chains", "4", "--frames", "3", "--grid", "7"],
    "gallery": ["--tiny", "--only", "exploding", "batch_clipping"],
}
SLOW: set[str] = set()          # every example runs in a few seconds at tiny size




def test_tracking_example_runs_at_tiny_size(tmp_path, capsys):
    fig = tmp_path / "t.png"
    res = load_example("tracking").main(["--steps", "20", "--chains", "2", "--starts", "2",
                                 "--horizon", "0.5", "--figure", str(fig)])
    assert res.distance.shape == (2, 2) and torch.isfinite(res.distance).all()
    assert "median D_T falls" in capsys.readouterr().out
    assert fig.exists()


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
