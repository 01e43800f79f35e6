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
    check_offline(site)
    check_notebook_pages(site)
    # the gallery leads with the shadowing picture, the explorer and linear noise
    pictures = re.findall(r'<img[^>]+src="\.\./figures/([\w.]+)"', gallery)
    assert pictures[:4] == ["shadowing.png", "shadowing_wine.png", "explore.png",
                            "linear_noise.png"], pictures[:4]
    assert "<!--" not in (DOCS / "gallery.md").read_text(encoding="utf-8"), "a placeholder"
    assert 'id="sa_clip.viz.explore.Explorer"' in api
    check_attribute_tables(api)
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for command in subcommands():
        assert f'id="sa-clip-{command}"' in cli, f"docs/cli.md has no section sa-clip {command}"


def subcommands() -> list[str]:
    """The subcommands `sa-clip --help` lists."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "sa_clip.cli", "--help"], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=120).stdout
    block = out.split("positional arguments:")[1].split("\n\n")[0]
    names = re.findall(r"^ {4}(\w+)", block, flags=re.M)
    assert {"run", "explore"} <= set(names), out
    return names


def check_attribute_tables(api: str) -> None:
    """numpydoc ``name : type`` + indented description renders as name | type | description;
    a one-line ``name : sentence`` is not shown as a type, and ``tensor (L,)`` not as a call."""
    import html

    rows = {}
    for table in re.findall(r'Attributes:</span></p>\s*<table>(.*?)</table>', api, flags=re.S):
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)[1:]:
            cells = [re.sub(r"\s+", " ", html.unescape(re.sub("<[^>]+>", "", c))).strip()
                     for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
            rows.setdefault(cells[0], cells[1:])
    assert len(rows) > 40
    rows = {k: [c.replace("\u00a0", " ") for c in v] for k, v in rows.items()}
    assert rows["lams"] == ["float64 tensor (L,)", "The clipping parameters."]
    assert rows["status, message"][0] == "int, str"
    assert rows["theta_star"][0] == "tensor (P,)"
    for name, (kind, *_) in rows.items():
        assert len(kind) < 60 and not kind.rstrip().endswith("."), (name, kind)


@pytest.mark.parametrize("text, expected", [
    ("name : the number of starts.", ["name", "    the number of starts."]),
    ("name : int", ["name : int"]),
    ("cov : tensor ``(T, P)``, or None", ["cov : tensor\u00a0(T,\u00a0P),\u00a0or None"]),
])
def test_griffe_extension_reads_attributes(text, expected):
    """docs/_mkdocs/griffe_numpyish.py: ``name : sentence`` becomes a name with a description,
    a type keeps its words (no-break spaces stop griffe reading it as Python)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_numpyish",
                                                  DOCS / "_mkdocs" / "griffe_numpyish.py")
    pytest.importorskip("griffe", reason="the docs extra: pip install -e '.[docs]'")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.convert(f"Doc.\n\nAttributes\n----------\n{text}\n").split("\n")
    assert out[4:4 + len(expected)] == expected, out


# a script, stylesheet, font or image fetched from elsewhere: the site must work offline
REMOTE = re.compile(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]*)"',
                    flags=re.I)
REMOTE_CSS = re.compile(r'(?:@import\s+|url\(\s*)["\']?((?:https?:)?//[^"\')\s]*)', flags=re.I)


def check_offline(site: Path) -> None:
    """Nothing the site loads comes from the internet: MathJax is bundled (its script and
    fonts), no Google Fonts, no CDN stylesheet. (Links the reader may click are fine.)"""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    remote = {(p.relative_to(site).as_posix(), url) for p in pages
              for url in REMOTE.findall(p.read_text(encoding="utf-8"))}
    remote |= {(c.relative_to(site).as_posix(), url) for c in site.rglob("*.css")
               for url in REMOTE_CSS.findall(c.read_text(encoding="utf-8"))}
    assert not remote, f"the site loads from the internet: {sorted(remote)[:5]}"
    theory = (site / "theory" / "index.html").read_text(encoding="utf-8")
    script = re.search(r'<script src="([^"]*tex-mml-chtml\.js)"', theory)
    assert script, "theory.md does not load MathJax"
    mathjax = (site / "theory" / script.group(1)).resolve()
    assert mathjax.is_file() and mathjax.stat().st_size > 500_000, mathjax
    fonts = mathjax.parent / "output" / "chtml" / "fonts" / "woff-v2"
    assert len(list(fonts.glob("*.woff"))) > 10, "MathJax's fonts are not bundled"
    assert 'class="arithmatex"' in theory


def check_notebook_pages(site: Path) -> None:
    """Every notebook page shows its figures (the saved outputs), and its links to the docs
    point at the site's pages."""
    for nb in sorted((ROOT / "examples" / "notebooks").glob("*.ipynb")):
        html = (site / "notebooks" / nb.stem / "index.html").read_text(encoding="utf-8")
        assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= 2, nb.name
        assert "docs/" not in " ".join(re.findall(r'href="([^"]*)"', html)), nb.name
        for target in re.findall(r'href="\.\./\.\./([\w-]+)/(?:#[\w-]*)?"', html):
            assert (site / target / "index.html").exists(), (nb.name, target)
        assert "IProgress" not in html and "Traceback" not in html, nb.name


NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
# what must not appear in a saved output: a warning, an error, a bare object repr, a path
# of the machine that ran it
DIRTY = re.compile(r"Warning|warn\(|Traceback|Error|IProgress|<[\w.]+ object at 0x|"
                   r"<torch\._C\.\w+|<matplotlib\.\w+|/home/|/work/|/tmp/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_outputs_are_saved_and_clean(path):
    """The notebooks are saved executed (examples/notebooks/execute.py), in order, with figures
    sized for a notebook column and nothing but results in their outputs."""
    import base64
    import json
    import struct

    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
        f"{path.name}: run it top to bottom with examples/notebooks/execute.py"
    figures = 0
    for cell in code:
        for out in cell["outputs"]:
            kind = out["output_type"]
            assert kind in ("stream", "display_data", "execute_result"), (path.name, out)
            assert out.get("name", "stdout") == "stdout", (path.name, "".join(out["text"]))
            text = "".join(out.get("text", "")) + "".join(
                "".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/")
                and "image/png" not in out["data"])
            assert not DIRTY.search(text), (path.name, text[:300])
            if "image/png" in out.get("data", {}):
                png = base64.b64decode(out["data"]["image/png"])
                width, height = struct.unpack(">II", png[16:24])
                assert width <= 1600 and height <= 1000, (path.name, width, height)
                assert len(png) < 400_000, (path.name, len(png))
                figures += 1
        source = "".join(cell["source"])
        long_comments = [ln for ln in source.splitlines()
                         if ln.lstrip().startswith("#") and len(ln.strip()) > 60]
        assert not long_comments, f"{path.name}: say it in a Markdown cell: {long_comments}"
    assert figures >= 3 if "03" not in path.stem else figures >= 2
    assert path.stat().st_size < 1_000_000, path.name


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


def test_theory_opens_with_the_idea_and_states_the_assumptions():
    """theory.md: the idea in five sentences and a figure before any section, (A1)-(A4) and
    Theorem 1 stated in a section of their own."""
    text = (DOCS / "theory.md").read_text(encoding="utf-8")
    opening = text.split("\n## ")[0]
    idea = re.search(r"\*\*The idea\.\*\* (.*?)\n\n", opening, flags=re.S).group(1)
    idea = re.sub(r"\$[^$]*\$", "X", idea)           # maths has no sentence ends
    assert len(re.findall(r"[.!?](?:\s|$)", idea)) == 5, idea
    assert re.search(r"!\[[^\]]+\]\(\.\./figures/shadowing\.png\)", opening)
    section = text.split("## Assumptions and Theorem 1")[1].split("\n## ")[0]
    for k in range(1, 5):
        assert re.search(rf"^- \*\*\(A{k}\) [A-Z]", section, flags=re.M), f"(A{k}) not stated"
    assert "**Theorem 1**" in section and "$$" in section


def test_theory_worked_example_matches_the_schedule():
    """The numbers of theory.md's worked example (tau_n, n(s), a(n(s))) are the package's."""
    import math

    import torch

    import sa_clip as sc

    text = (DOCS / "theory.md").read_text(encoding="utf-8")
    example = text.split("### A worked example")[1].split("\n## ")[0]
    schedule = sc.make_schedule("power:0.5,0.7")
    rates, tau = schedule.rates(1000), schedule.tau(1000)
    for n, value in re.findall(r"\\tau_\{?(\d+)\}?\s*&?=\s*(\d+\.\d+)", example):
        rounding = 0.51 * 10.0 ** -len(value.split(".")[1])      # as many digits as written
        assert float(tau[int(n)]) == pytest.approx(float(value), abs=rounding), (n, value)
    rows = re.findall(r"^\| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", example, flags=re.M)
    assert len(rows) == 5
    for s, n, a, root in rows:
        step = int(torch.searchsorted(tau, torch.tensor(float(s), dtype=tau.dtype),
                                      right=True)) - 1
        assert step == int(n), (s, step, n)
        assert float(rates[step]) == pytest.approx(float(a), rel=5e-3)
        assert math.sqrt(float(rates[step])) == pytest.approx(float(root), rel=5e-3)


def test_griffe_extension_drops_literal_block_markers():
    """``text::`` (reST) renders as ``text:`` with the indented block as code, not as ``::``."""
    import importlib.util

    pytest.importorskip("griffe", reason="the docs extra: pip install -e '.[docs]'")
    spec = importlib.util.spec_from_file_location("griffe_numpyish",
                                                  DOCS / "_mkdocs" / "griffe_numpyish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.convert("Doc.\n\nFrom the shell::\n\n    sa-clip explore\n")
    assert out == "Doc.\n\nFrom the shell:\n\n    sa-clip explore\n"
