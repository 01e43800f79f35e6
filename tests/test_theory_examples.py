"""Every theory example runs at tiny size and writes a non-empty PNG."""

import matplotlib
import pytest
from helpers import load_example

matplotlib.use("Agg")

CASES = {
    "azuma_stability": ["--chains", "200", "--steps", "30", "--blowup-chains", "20",
                        "--blowup-steps", "20", "--lams", "1", "32"],
    "quartic_l0l1": ["--starts", "1.5", "12", "--steps", "150"],
    "fluctuations": ["--chains", "50", "--steps", "40"],
    "clipping_bias": ["--lams", "1", "5"],
    "equilibria_basins": ["--grid", "6", "--starts", "6", "--horizon", "5"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_at_tiny_size(name, tmp_path, capsys):
    res = load_example(name).main([*CASES[name], "--out", str(tmp_path)])
    png = tmp_path / f"{name}.png"
    assert png.exists() and png.stat().st_size > 1000
    assert str(res["figure"]) == str(png)
    assert f"wrote {png}" in capsys.readouterr().out
