"""The Python snippets in README.md run as written (so the README cannot rot)."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def snippets():
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_snippets():
    assert len(snippets()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("k", range(len(snippets())))
def test_readme_snippet_runs(k, tmp_path, monkeypatch):
    code = snippets()[k]
    if "my_run.py" in code or "torchrun" in code:
        pytest.skip("a script meant for torchrun")
    monkeypatch.chdir(tmp_path)
    prelude = ""
    exec(compile(prelude + code, f"README snippet {k}", "exec"), {})
