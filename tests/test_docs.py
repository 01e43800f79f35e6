"""The documentation: the site builds strictly, its code runs, its links and anchors hold, and
``import sa_clip`` stays free of matplotlib while ``sc.viz`` and the plane helpers are reachable.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROCESS_DEADLINE

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def slugs(markdown: str) -> set[str]:
    """Anchors of the headings of a page, as MkDocs (toc) and GitHub both make them for plain
    ASCII headings: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\s-]", "", m.group(1).strip().lower())
            out.add(re.sub(r"[\s]+", "-", text))
    return out


@pytest.mark.slow
def test_import_sa_clip_does_not_import_matplotlib():
    code = ("import sys, sa_clip as sc; assert 'matplotlib' not in sys.modules, 'eager'; "
            "sc.Plane, sc.field_on_plane, sc.PlaneField; "
            "assert 'matplotlib' not in sys.modules, 'plane'; "
            "sc.viz.plot_phase_portrait; assert 'matplotlib' in sys.modules; print('ok')")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=str(ROOT), timeout=PROCESS_DEADLINE)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_viz_and_plane_reachable_from_the_package():
    import sa_clip as sc
    import sa_clip.plane
    import sa_clip.viz

    assert sc.viz is sa_clip.viz and "viz" in dir(sc)
    assert sc.Plane is sa_clip.plane.Plane and sc.field_on_plane is sa_clip.plane.field_on_plane
    assert {"Plane", "PlaneField", "field_on_plane"} <= set(sc.__all__)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        sc.not_a_name  # noqa: B018


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text)
    local = [(p, a) for p, a in links if "://" not in p]
    assert any(p.startswith("docs/") for p, _ in local)
    for path, anchor in local:
        target = ROOT / path
        assert target.exists(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in slugs(target.read_text(encoding="utf-8")), (path, anchor)
    for page in ("index", "own-model", "cli", "theory", "gallery", "notebooks", "performance",
                 "reliability", "format", "distributed", "api"):
        assert f"docs/{page}.md" in text, f"README does not link docs/{page}.md"


def test_docstring_pointers_to_theory_resolve():
    """Every ``docs/theory.md#anchor`` in the package names a heading of docs/theory.md."""
    anchors = slugs((DOCS / "theory.md").read_text(encoding="utf-8"))
    found = 0
    for path in (ROOT / "sa_clip").rglob("*.py"):
        src = path.read_text(encoding="utf-8")
        assert "SPEC" not in src, f"{path} cites SPEC; point to docs/theory.md#... instead"
        for anchor in re.findall(r"docs/theory\.md#([\w-]+)", src):
            assert anchor in anchors, f"{path}: docs/theory.md#{anchor} is not a heading"
            found += 1
    assert found >= 10


def test_theory_covers_every_topic():
    anchors = slugs((DOCS / "theory.md").read_text(encoding="utf-8"))
    assert {"clipping-rules", "mean-field", "recursion", "ode-time", "limiting-ode", "tracking",
            "martingale-noise", "fluctuations", "linear-noise-approximation", "stability",
            "azuma-bound", "equilibria", "clipping-bias"} <= anchors


def test_api_reference_lists_every_public_name():
    import sa_clip as sc

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: sa_clip\.(\w+)", api, flags=re.M))
    modules = {"problems", "distributed", "io"}
    missing = [n for n in sc.__all__ if n not in documented and n not in modules]
    assert not missing, f"add to docs/api.md: {missing}"
    assert {"viz", "problems", "distributed", "io"} <= documented


@pytest.mark.slow
def test_own_model_page_runs(tmp_path, monkeypatch):
    """The code blocks of docs/own-model.md, run in order as one script, give what the comments
    beside them say."""
    text = (DOCS / "own-model.md").read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    values = {}
    for node in ast.parse(code).body:
        if isinstance(node, ast.Expr):
            values[ast.get_source_segment(code, node)] = eval(
                compile(ast.Expression(node.value), "own-model.md", "eval"), ns)
        else:
            exec(compile(ast.Module([node], type_ignores=[]), "own-model.md", "exec"), ns)
    import torch

    assert values["problem.N, problem.P, problem.dtype"] == (442, 193, torch.float64)
    method, frac = values["field.method, float(stats.fraction)"]
    assert method == "fast" and abs(frac - 0.8869) < 1e-3
    assert values["run.theta.shape, ode.theta.shape"] == ((16, 401, 193), (401, 193))
    start, end = values["float(problem.loss(problem.theta0)), float(problem.loss(ode.theta[-1]))"]
    assert start == pytest.approx(6.16, abs=0.01) and end == pytest.approx(0.92, abs=0.01)
    med = values["res.median"]
    assert torch.allclose(med, torch.tensor([0.81, 0.45, 0.24, 0.18], dtype=med.dtype), atol=6e-3)
    theta, kind = values["eq[0].theta, eq[0].kind"]
    assert float(theta) == pytest.approx(-2.0, abs=1e-8) and kind == "stable"
    assert values["sc.clipping_bias(toy, eq[0].theta).grad_norm"] == pytest.approx(3.0, abs=1e-8)
    assert (tmp_path / "ode_vs_sgd.png").stat().st_size > 10_000
    assert (tmp_path / "portrait.png").stat().st_size > 10_000


def test_notebook_hook_adds_nav_entries_and_list(tmp_path, monkeypatch):
    """Notebooks dropped into examples/notebooks/ appear in the nav and on notebooks.md without
    touching mkdocs.yml (the hook in docs/_mkdocs/hooks.py)."""
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("site_hooks", DOCS / "_mkdocs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    empty = {"nav": [{"Notebooks": "notebooks.md"}]}
    monkeypatch.setattr(hooks, "NOTEBOOKS", tmp_path)
    assert hooks.on_config(empty)["nav"] == [{"Notebooks": "notebooks.md"}]
    page = hooks.on_page_markdown("a\n<!-- notebooks -->\n![x](../figures/x.png)", None, {}, None)
    assert "No notebook" in page and "](figures/x.png)" in page
    cell = {"cell_type": "markdown", "source": ["# Phase portraits\n", "text"], "metadata": {}}
    (tmp_path / "b_portraits.ipynb").write_text(json.dumps({"cells": [cell]}), encoding="utf-8")
    (tmp_path / "a_first.ipynb").write_text(json.dumps({"cells": []}), encoding="utf-8")
    nav = hooks.on_config({"nav": [{"Notebooks": "notebooks.md"}]})["nav"]
    assert nav == [{"Notebooks": [{"Overview": "notebooks.md"},
                                  {"a first": "notebooks/a_first.ipynb"},
                                  {"Phase portraits": "notebooks/b_portraits.ipynb"}]}]
    config = {"docs_dir": str(tmp_path), "nav": [{"Theory": "theory.md"}, {"Gallery": "g.md"}]}
    assert hooks.on_config(config)["nav"] == [{"Theory": "theory.md"}, {"Gallery": "g.md"}]
    (tmp_path / "linear_noise.md").write_text("# Linear noise\n", encoding="utf-8")
    assert hooks.on_config(config)["nav"] == [{"Theory": "theory.md"},
                                              {"Linear noise": "linear_noise.md"},
                                              {"Gallery": "g.md"}]
    assert hooks.on_config(config)["nav"][1] == {"Linear noise": "linear_noise.md"}   # once
    assert len(config["nav"]) == 3
    page = hooks.on_page_markdown("<!-- notebooks -->", None, {}, None)
    assert page == ("- [a first](notebooks/a_first.ipynb)\n"
                    "- [Phase portraits](notebooks/b_portraits.ipynb)")


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(config.parent), NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(config), "-d", str(site)], env=env, capture_output=True,
                          text=True, timeout=PROCESS_DEADLINE)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings")
    out = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert out.returncode == 0, out.stdout + out.stderr
    site = tmp_path / "site"
    for page in ("own-model", "cli", "theory", "gallery", "notebooks", "performance",
                 "reliability", "format", "distributed", "api"):
        assert (site / page / "index.html").exists(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("sa_clip.MeanField", "sa_clip.Plane", "sa_clip.field_on_plane",
                 "sa_clip.viz.plot_phase_portrait"):
        assert f'id="{name}"' in api, name
    assert (site / "figures" / "phase_portrait.png").exists()
    for nb in sorted((ROOT / "examples" / "notebooks").glob("*.ipynb")):
        assert (site / "notebooks" / nb.stem / "index.html").exists(), f"{nb.name} not rendered"
    gallery = (site / "gallery" / "index.html").read_text(encoding="utf-8")
    assert 'src="../figures/phase_portrait.png"' in gallery


@pytest.mark.slow
def test_site_build_fails_on_a_broken_link(tmp_path):
    """``--strict`` is not decoration: a link to a missing page stops the build."""
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings")
    copy = tmp_path / "repo"
    for name in ("docs", "sa_clip", "figures"):
        shutil.copytree(ROOT / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "cli.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](no-such-page.md)\n",
                    encoding="utf-8")
    # the API page keeps its headings (anchors) without its `::: sa_clip.X` blocks: rendering
    # them is most of a build, and test_site_builds_strictly does it
    api = copy / "docs" / "api.md"
    api.write_text("\n".join(line for line in api.read_text(encoding="utf-8").splitlines()
                             if not line.startswith((":::", "    "))) + "\n", encoding="utf-8")
    out = _mkdocs(copy / "mkdocs.yml", tmp_path / "site")
    assert out.returncode != 0
    # the broken link, and nothing else, stops it
    warnings = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1 and "no-such-page.md" in warnings[0], warnings
