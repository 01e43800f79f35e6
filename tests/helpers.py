"""Shared test helpers: relative errors, the package's import graph, loading example scripts,
interrupting a run mid-way, waiting on other processes."""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib

import torch

import sa_clip as sc

ROOT = os.path.join(os.path.dirname(__file__), "..")

#: deadline (seconds) of every wait on another process. Only a hang guard: the tests wait on
#: events (a line on a pipe, a file that appears, ``join``), so it must hold on a machine
#: loaded many times over (a child importing torch took 35 s of wall time at load 8)
PROCESS_DEADLINE = 900.0


def wait_for(condition, what: str, *, proc=None, deadline: float = PROCESS_DEADLINE,
             poll: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned) or ``deadline``
    seconds pass; fail sooner, naming ``what``, if ``proc`` (a ``subprocess.Popen``) ends
    first (with its stderr where it was piped)."""
    import time

    import pytest

    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}: "
                        f"{err[-2000:] if err else ''}")
        if time.monotonic() > end:
            pytest.fail(f"no {what} within {deadline:.0f} s")
        time.sleep(poll)


def rel_err(a, b) -> float:
    """``||a - b|| / ||b||`` (``||b||`` floored at 1e-300), as a float."""
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def import_graph() -> dict[str, set[str]]:
    """Module-level imports between the modules of the ``sa_clip`` package: module -> the
    ``sa_clip`` modules it imports when it is imported (imports inside functions excluded)."""
    root = pathlib.Path(ROOT) / "sa_clip"
    files = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = f
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.parse(f.read_text()).body:
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module]
                                                                   if node.module else []))
            elif (node.module or "").split(".")[0] == "sa_clip":
                base = node.module
            else:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                deps.add(sub if sub in files else base)
        graph[name] = {d for d in deps if d in files} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


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


def smooth_rule(base, lam: float = 0.1):
    """A rule of class ``base`` that overrides ``factors`` with a smooth clip,
    ``sqrt(1 + (||g|| / threshold)^2)``: the engines must serve it by its own maths."""
    class Smooth(base):
        def factors(self, grad_norms, theta_norms=None):
            return torch.sqrt(1 + (grad_norms / self.thresholds(theta_norms)) ** 2)

    return Smooth(lam)
