"""MkDocs hooks for the sa_clip site (configured in ``mkdocs.yml``; not part of the package).

The pages in ``docs/`` are also read on GitHub, where a picture is ``../figures/x.png`` and a
notebook ``../examples/notebooks/x.ipynb``. The site has no files outside ``docs/``, so these
hooks

* add ``figures/*.png|gif`` to the site as ``figures/...`` and every
  ``examples/notebooks/*.ipynb`` as ``notebooks/...`` (rendered by mkdocs-jupyter, which sees
  them because this hook runs first);
* rewrite the links ``../figures/`` and ``../examples/notebooks/`` in the pages to those paths
  before MkDocs checks links, so ``mkdocs build --strict`` still fails on a really broken one;
* add MathJax to the site as ``_js/mathjax/...``, copied from the ``django-static-mathjax``
  package of the docs extra (a plain copy of MathJax 3, no Django needed), so the maths renders
  with no network: in a lecture hall, on an exam machine, from a copied site folder;
* put ``linear_noise.md`` (written on another branch) into the navigation after "Theory" once
  it exists, so the merge needs no edit of ``mkdocs.yml``;
* in a notebook page, point the links a notebook makes to ``../../docs/page.md#anchor`` (right
  on GitHub and in Jupyter) at the site's page instead;
* put one navigation entry per notebook under "Notebooks" and replace the marker
  ``<!-- notebooks -->`` in ``notebooks.md`` by a list of them, so notebooks added later
  appear without editing the configuration.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "figures"
NOTEBOOKS = ROOT / "examples" / "notebooks"
MARKER = "<!-- notebooks -->"
OPTIONAL_PAGES = {"Theory": ("Linear noise", "linear_noise.md")}   # after entry: (title, page)
# MathJax 3 (es5 build): the combined TeX + CHTML component, the TeX extensions it autoloads
# (boldsymbol, ...), its fonts and the context menu's parts; not the speech engine (sre/) or SVG
MATHJAX_PARTS = ("tex-mml-chtml.js", "input/tex/extensions", "output/chtml/fonts", "ui", "a11y")
NOTEBOOK_DOC_LINK = re.compile(r'href="\.\./\.\./docs/([\w-]+)\.md(#[\w-]*)?"')
REWRITES = {"](../figures/": "](figures/", "](../examples/notebooks/": "](notebooks/"}


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb")) if NOTEBOOKS.is_dir() else []


def title(path: Path) -> str:
    """The notebook's first Markdown heading, else its file name."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        cells = []
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", [])).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem.replace("_", " ")


def mathjax_dir() -> Path:
    """The ``es5`` folder of the MathJax copy installed with the docs extra."""
    try:
        import mathjax  # the django-static-mathjax package: mathjax/static/mathjax/es5
    except ImportError as err:
        raise RuntimeError("the site bundles MathJax from the package django-static-mathjax: "
                           "pip install -e '.[docs]'") from err
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / MATHJAX_PARTS[0]).is_file():
        raise RuntimeError(f"no {MATHJAX_PARTS[0]} in {es5}: reinstall django-static-mathjax")
    return es5


def mathjax_files() -> list[tuple[Path, str]]:
    """(file, path in the site) of each bundled MathJax file, under ``_js/mathjax/``."""
    es5 = mathjax_dir()
    out = []
    for part in MATHJAX_PARTS:
        found = [es5 / part] if (es5 / part).is_file() else sorted(
            p for p in (es5 / part).rglob("*") if p.is_file())
        out += [(p, "_js/mathjax/" + p.relative_to(es5).as_posix()) for p in found]
    return out


def on_config(config, **kwargs):
    nav = config.get("nav") or []
    docs_dir = Path(config["docs_dir"]) if config.get("docs_dir") else ROOT / "docs"
    listed = {v for entry in nav if isinstance(entry, dict) for v in entry.values()}
    for after, (name, page) in OPTIONAL_PAGES.items():
        keys = [next(iter(e)) if isinstance(e, dict) else e for e in nav]
        if (docs_dir / page).exists() and page not in listed and after in keys:
            nav.insert(keys.index(after) + 1, {name: page})
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and "Notebooks" in entry:
            found = notebooks()
            if not found:
                continue
            pages = entry["Notebooks"]
            pages = [{"Overview": pages}] if isinstance(pages, str) else list(pages)
            pages += [{title(p): f"notebooks/{p.name}"} for p in found]
            nav[i] = {"Notebooks": pages}
    return config


@event_priority(100)     # before mkdocs-jupyter's on_files, which wraps the .ipynb files
def on_files(files, config, **kwargs):
    # (folder, path inside it): the path is also the file's place in the site. A plain File
    # (not File.generated), because mkdocs-jupyter's wrapper rebuilds abs_src_path from
    # src_dir + src_uri.
    extra = [(ROOT, f"figures/{p.name}") for ext in ("png", "gif")
             for p in sorted(FIGURES.glob(f"*.{ext}"))]
    extra += [(NOTEBOOKS.parent, f"notebooks/{p.name}") for p in notebooks()]
    for folder, uri in extra:
        if files.get_file_from_path(uri) is None:
            files.append(File(uri, str(folder), config["site_dir"], config["use_directory_urls"]))
    for path, uri in mathjax_files():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    for old, new in REWRITES.items():
        markdown = markdown.replace(old, new)
    if MARKER in markdown:
        items = [f"- [{title(p)}](notebooks/{p.name})" for p in notebooks()]
        markdown = markdown.replace(MARKER, "\n".join(items) or
                                    "*(No notebook in `examples/notebooks/` yet.)*")
    return markdown


def on_post_page(output, page, config, **kwargs):
    if page.file.src_uri.endswith(".ipynb"):
        # the page is notebooks/<name>/ (or notebooks/<name>.html): two levels up is the root
        up = "../../" if config["use_directory_urls"] else "../"
        ext = "/" if config["use_directory_urls"] else ".html"
        output = NOTEBOOK_DOC_LINK.sub(
            lambda m: f'href="{up}{m.group(1)}{ext}{m.group(2) or ""}"', output)
    return output
