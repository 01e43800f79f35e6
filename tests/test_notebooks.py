"""The example notebooks execute top to bottom (nbclient) without an error and are committed
without outputs. (Their run time, under a minute each on 2 quiet cores, is measured by
``benchmarks/bench_notebooks.py``, not asserted here.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import PROCESS_DEADLINE

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))


def test_notebooks_found():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_first_tour", "02_your_own_model", "03_where_care_is_needed"} <= names


# The notebooks are committed with their outputs (the documentation site shows them); that
# those outputs are clean (run in order, no warnings, no object reprs, small figures) is
# checked in tests/test_docs.py.


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    book = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("MPLBACKEND", "PYTHONPATH")}
    os.environ["MPLBACKEND"] = "Agg"
    # the kernel imports the sa_clip of this checkout, whatever is installed
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env_before["PYTHONPATH"]] if env_before["PYTHONPATH"] else []))
    try:
        client = nbclient.NotebookClient(book, timeout=PROCESS_DEADLINE, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    # every code cell ran (none skipped by a tag or an early exit)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
