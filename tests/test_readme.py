"""The Python snippets in README.md run as written and do what their comments claim.

Every ```python block of the README is executed in a fresh namespace (in a temporary working
directory) and then checked by the function registered in ``CHECKS`` under a string that occurs
in that block. The value of every bare expression line (``run.theta.shape, run.tau.shape``) is
kept under its source text, so a check can assert what the comment beside it says. A block
without a check fails: a new README snippet comes with the assertions that make its claims true.
"""

import ast
import math
import os
import re

import pytest
import torch

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def snippets():
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_snippet(code: str, name: str) -> tuple[dict, dict]:
    """Execute ``code``; return its namespace and ``{source of a bare expression: value}``."""
    tree = ast.parse(code)
    values: dict = {}
    ns: dict = {"_values": values}
    for node in tree.body:
        if isinstance(node, ast.Expr):       # keep what a REPL would echo
            src = ast.get_source_segment(code, node)
            store = ast.parse(f"_values[{src!r}] = 0").body[0]
            store.value = node.value
            node = ast.fix_missing_locations(ast.copy_location(store, node))
        exec(compile(ast.Module([node], type_ignores=[]), name, "exec"), ns)
    return ns, values


def value(values: dict, fragment: str):
    (hit,) = [v for k, v in values.items() if fragment in k]
    return hit


def check_first_example(ns, values):
    problem, H = ns["problem"], ns["H"]
    assert H.shape == (problem.P,)
    assert torch.isfinite(H).all()
    frac = float(ns["field"].clip_stats(problem.theta0).fraction)
    assert 0.0 <= frac <= 1.0


def check_own_model(ns, values):
    sc, problem, field, run, ode, res = (ns[k] for k in ("sc", "problem", "field", "run", "ode",
                                                         "res"))
    assert problem.dtype == torch.float64 and problem.P == 193
    assert ns["H"].shape == (193,)
    assert field.method == "fast"
    assert abs(float(field.clip_stats(problem.theta0).fraction) - 0.89) < 0.01
    assert run.theta.shape == (16, 401, 193) and (run.blowup_step < 0).all()
    assert ode.theta.shape == (401, 193) and ode.status == 0
    assert float(problem.loss(ode.theta[-1])) < 0.5 * float(problem.loss(problem.theta0))
    med = res.median
    assert med.shape == (4,) and float(med[0]) > 0.7 and float(med[-1]) < 0.25   # 0.81 ... 0.18
    assert (med[1:] < med[:-1]).all()                                          # D_T(s) falls
    assert isinstance(ns["plane"], sc.Plane) and ns["pf"].flow.shape == (21, 21, 2)
    import matplotlib.figure
    assert isinstance(ns["fig"], matplotlib.figure.Figure)
    assert os.path.getsize("ode_vs_sgd.png") > 10_000 and os.path.getsize("portrait.png") > 10_000


def check_chains(ns, values):
    sc, run, sol, res = ns["sc"], ns["run"], ns["sol"], ns["res"]
    assert value(values, "run.theta.shape") == ((16, 401, 42), (401,))
    assert sol.theta.shape == (401, 42) and sol.status == 0
    med = res.median
    assert float(med[-1]) < float(med[0])                               # falls as s grows
    loaded = sc.Trajectory.load("run.npz")
    assert torch.equal(loaded.theta, run.theta) and torch.equal(loaded.tau, run.tau)


def check_theory(ns, values):
    theta, kind = value(values, "eq[0].kind")
    assert torch.allclose(theta, torch.tensor([-2.0], dtype=theta.dtype), atol=1e-8)
    assert kind == "stable"
    assert value(values, "grad_norm") == pytest.approx(3.0, abs=1e-8)
    assert value(values, "azuma_log_bound") == pytest.approx(-1415.9, abs=0.05)
    assert value(values, "azuma_log_bound") == pytest.approx(
        math.log(2) - 2 * 4 ** 5 * 4 ** 5 / (math.pi ** 2 / 6 * 30.0 ** 2))


CHECKS = {
    'real_problem("wine"': check_first_example,
    "load_diabetes": check_own_model,
    'logistic_regression("wine")': check_chains,
    "find_equilibria": check_theory,
}


def test_readme_has_snippets():
    assert len(snippets()) >= 4


def test_every_snippet_has_a_check():
    for code in snippets():
        found = [key for key in CHECKS if key in code]
        assert len(found) == 1, f"README snippet needs exactly one check in CHECKS:\n{code}"


#: snippets that take more than a few seconds: 16 chains of a 193-parameter network and its ODE
SLOW = {"load_diabetes"}


@pytest.mark.parametrize("k", [pytest.param(k, marks=pytest.mark.slow)
                               if any(key in code for key in SLOW) else k
                               for k, code in enumerate(snippets())])
def test_readme_snippet_runs(k, tmp_path, monkeypatch):
    code = snippets()[k]
    monkeypatch.chdir(tmp_path)
    ns, values = run_snippet(code, f"README snippet {k}")
    (check,) = [CHECKS[key] for key in CHECKS if key in code]
    check(ns, values)


def test_run_snippet_keeps_expression_values():
    ns, values = run_snippet("x = 2\nx + 1\n(x, 'a')\n", "t")
    assert ns["x"] == 2 and values == {"x + 1": 3, "(x, 'a')": (2, "a")}
