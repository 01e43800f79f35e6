"""Wall time of each example notebook, executed top to bottom with nbclient.

Target (issue 12): under a minute each on a quiet 2-core machine. Run from the repository root:

    python benchmarks/bench_notebooks.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")]))
    worst = 0.0
    for path in sorted((ROOT / "examples" / "notebooks").glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        t0 = time.perf_counter()
        client.execute()
        wall = time.perf_counter() - t0
        worst = max(worst, wall)
        print(f"{path.name:32s} {wall:6.1f} s   ({wall / 60:.2f} x the one-minute target)")
    print(f"worst: {worst:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
