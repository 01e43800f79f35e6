import importlib.util
import os

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples",
                                                                     f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tracking_example_runs_at_tiny_size(tmp_path, capsys):
    fig = tmp_path / "t.png"
    res = load("tracking").main(["--steps", "20", "--chains", "2", "--starts", "2",
                                 "--horizon", "0.5", "--figure", str(fig)])
    assert res.distance.shape == (2, 2) and torch.isfinite(res.distance).all()
    assert "median D_T falls" in capsys.readouterr().out
    assert fig.exists()
