"""Run every notebook here top to bottom and save it with its outputs, which the documentation
site shows as they are (it does not execute notebooks at build time: that would add minutes to
every docs build, and CI's ``MPLBACKEND=Agg`` would leave the figures out).

Run from the repository root after changing a notebook or a figure function it calls:

    python examples/notebooks/execute.py            # all notebooks
    python examples/notebooks/execute.py 01_first_tour.ipynb

Prints each notebook's wall time (quoted on docs/performance.md). ``tests/test_docs.py`` checks
that the saved outputs hold figures and no warnings, tracebacks or stray object reprs.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def small_png(data: str) -> str:
    """A base64 PNG as a 256-colour palette PNG: a third of the bytes for line plots and
    streamlines, with no visible change (no dithering), so the notebooks stay small in git."""
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                   dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def execute(path: Path) -> float:
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:                      # start clean: no stale outputs or counts
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    client = nbclient.NotebookClient(book, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - t0
    for cell in book.cells:                      # timestamps would make every rerun a diff
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output["data"]["image/png"] = small_png(output["data"]["image/png"])
    nbformat.write(book, path)
    return wall


def main(names: list[str]) -> int:
    # the kernel must draw with the inline backend, not a backend inherited from a test or CI
    os.environ.pop("MPLBACKEND", None)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")]))
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"{path.name:34s} {execute(path):6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
