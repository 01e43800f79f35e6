"""Shared test helpers: loading example scripts, interrupting a run mid-way."""

from __future__ import annotations

import importlib.util
import os

import sa_clip as sc

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (its ``main(argv)`` is then callable)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples",
                                                                     f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Interrupted(Exception):
    """Raised by :class:`InterruptingField` to simulate a run killed mid-way."""


class InterruptingField(sc.MeanField):
    """A MeanField that raises ``exc`` after ``limit`` update directions (one per SGD step)."""

    def __init__(self, problem, rule, limit, exc=Interrupted):
        super().__init__(problem, rule)
        self.calls, self.limit, self.exc = 0, limit, exc

    def _tick(self):
        self.calls += 1
        if self.calls > self.limit:
            raise self.exc

    def directions(self, *a, **k):
        self._tick()
        return super().directions(*a, **k)

    def directions_stats(self, *a, **k):
        self._tick()
        return super().directions_stats(*a, **k)
