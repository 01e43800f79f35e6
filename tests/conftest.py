import os
import sys

# Under pytest-xdist (`-n 2`) each worker is one process: give it one intra-op thread, and
# the processes it starts (notebook kernels, CLI subprocesses, torchrun ranks) one too, so
# that two workers do not oversubscribe two cores. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# Long stages print cost estimates and bars only when asked (progress=True) under tests.
os.environ.setdefault("SA_CLIP_PROGRESS", "0")

import matplotlib  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    """Under xdist, the tests marked slow go first (otherwise in collection order), so a run
    ends on short tests: with `--dist worksteal` (the README's command) an idle worker takes
    over the tail of the other's queue, and the last test either runs is a short one, not a
    20 s notebook started when the other worker had nothing left."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable
