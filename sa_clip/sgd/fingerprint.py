"""Content fingerprints of Python objects (losses, models) for the resume check.

:func:`object_fingerprint` hashes what determines a callable's result, not its name: for a
function its byte code and constants (nested functions too), its default arguments, the values
in its closure cells and the module-level globals its code reads; for ``functools.partial`` the
wrapped function, its arguments and keywords; for a bound method the function and the object;
for an ``nn.Module`` every submodule's type, its ``forward`` (hashed like a function), its plain
attributes (``delta``, ``reduction``, ...), its parameters and its buffers; for other objects
their type's ``__call__`` and their attributes. Tensors and arrays are hashed by dtype, shape
and bytes; numbers, strings and containers by value.

Library code (``torch``, ``numpy``, ``sa_clip``, the standard library) is named, not hashed: its
version is what fixes it (the checkpoint records the sa_clip version). An object that cannot be
hashed by value (a C object with no attributes, a generator, an open file, a nest deeper than
12 levels) is listed in ``opaque``: resume then refuses unless forced, since it cannot tell a
changed loss from the same one.

>>> import functools, torch
>>> def weighted(o, t, w): return w * ((o - t) ** 2).sum()
>>> a = object_fingerprint(functools.partial(weighted, w=1.0))
>>> b = object_fingerprint(functools.partial(weighted, w=3.0))
>>> a.digest != b.digest, a.opaque
(True, [])
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import struct
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

#: modules whose code is fixed by their version: named, not hashed
_LIBRARIES = ("torch", "numpy", "sa_clip", "builtins", "functools", "math", "operator",
              "typing", "collections", "abc", "_operator", "_functools", "scipy", "sklearn",
              "torchdiffeq", "opt_einsum")
_MAX_DEPTH = 12
#: nn.Module attributes managed by torch (hashed through parameters()/buffers()/modules())
_MODULE_SKIP = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                          "_backward_pre_hooks", "_backward_hooks", "_forward_hooks",
                          "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                          "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
                          "_state_dict_hooks", "_state_dict_pre_hooks",
                          "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                          "_is_full_backward_hook"})


@dataclass
class Fingerprint:
    """``digest``: 32 hex digits; ``opaque``: where a value could not be hashed by content."""

    digest: str
    opaque: list[str] = field(default_factory=list)


def _is_library(obj: Any) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    if not isinstance(mod, str):
        return False
    return mod.split(".")[0] in _LIBRARIES or mod in sys.builtin_module_names


class _Hasher:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.opaque: list[str] = []
        self.stack: set[int] = set()

    def put(self, tag: str, payload: bytes = b"") -> None:
        self.h.update(tag.encode() + b"\x00" + struct.pack("<Q", len(payload)) + payload)

    def add(self, obj: Any, where: str, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            self.opaque.append(f"{where} (nested deeper than {_MAX_DEPTH} levels)")
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, repr(obj).encode())
            return
        if isinstance(obj, (torch.dtype, torch.device, np.dtype, np.generic, range, slice)):
            self.put(type(obj).__name__, repr(obj).encode())
            return
        if isinstance(obj, torch.Tensor):
            a = obj.detach().cpu().contiguous()
            self.put("tensor", f"{a.dtype}{tuple(a.shape)}".encode() + a.numpy().tobytes())
            return
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                self.put("ndarray-object", str(obj.shape).encode())
                for i, v in enumerate(obj.ravel().tolist()):
                    self.add(v, f"{where}[{i}]", depth + 1)
            else:
                a = np.ascontiguousarray(obj)
                self.put("ndarray", f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
            return
        if isinstance(obj, types.ModuleType):
            self.put("module", obj.__name__.encode())
            return
        key = id(obj)
        if key in self.stack:                      # a cycle: its content is hashed above
            self.put("cycle", type(obj).__qualname__.encode())
            return
        self.stack.add(key)
        try:
            self._add_object(obj, where, depth)
        finally:
            self.stack.discard(key)

    def _add_object(self, obj: Any, where: str, depth: int) -> None:
        d = depth + 1
        if isinstance(obj, (list, tuple)):
            self.put(type(obj).__name__, str(len(obj)).encode())
            for i, v in enumerate(obj):
                self.add(v, f"{where}[{i}]", d)
        elif isinstance(obj, dict):
            self.put("dict", str(len(obj)).encode())
            for k in sorted(obj, key=repr):
                self.add(k, f"{where} key", d)
                self.add(obj[k], f"{where}[{k!r}]", d)
        elif isinstance(obj, (set, frozenset)):
            items = sorted(obj, key=repr)
            self.put(type(obj).__name__, str(len(items)).encode())
            for v in items:
                self.add(v, f"{where} item", d)
        elif isinstance(obj, types.CodeType):
            self._add_code(obj, where, d)
        elif isinstance(obj, functools.partial):
            self.put("partial")
            self.add(obj.func, f"{where}.func", d)
            self.add(obj.args, f"{where}.args", d)
            self.add(obj.keywords, f"{where}.keywords", d)
        elif isinstance(obj, types.MethodType):
            self.put("method")
            self.add(obj.__func__, f"{where}.__func__", d)
            self.add(obj.__self__, f"{where}.__self__", d)
        elif isinstance(obj, types.FunctionType):
            self._add_function(obj, where, d)
        elif isinstance(obj, type) or _is_library(obj) and callable(obj) \
                and not isinstance(obj, nn.Module):
            # a class, or library code (builtin functions, torch functions): named
            self.put("named", f"{getattr(obj, '__module__', '')}."
                     f"{getattr(obj, '__qualname__', type(obj).__qualname__)}".encode())
        elif isinstance(obj, nn.Module):
            self._add_module(obj, where, d)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            self.put("object", _type_name(obj).encode())
            call = vars(type(obj)).get("__call__")
            if isinstance(call, types.FunctionType):
                self.add(call, f"{where}.__call__", d)
            self.add(dict(vars(obj)), f"{where} attributes", d)
        else:
            self.put("opaque", _type_name(obj).encode())
            self.opaque.append(f"{where} (an object of type {_type_name(obj)})")

    def _add_code(self, code: types.CodeType, where: str, depth: int) -> None:
        self.put("code", code.co_code)
        self.put("names", repr((code.co_names, code.co_varnames, code.co_argcount,
                                code.co_kwonlyargcount, code.co_flags)).encode())
        for i, c in enumerate(code.co_consts):
            self.add(c, f"{where} constant {i}", depth)

    def _add_function(self, fn: types.FunctionType, where: str, depth: int) -> None:
        if _is_library(fn):
            self.put("named", f"{fn.__module__}.{fn.__qualname__}".encode())
            return
        self.put("function")
        self._add_code(fn.__code__, f"{where} ({fn.__qualname__})", depth)
        self.add(fn.__defaults__, f"{where} defaults", depth)
        self.add(fn.__kwdefaults__, f"{where} keyword defaults", depth)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:                      # an empty cell
                self.put("empty-cell", name.encode())
                continue
            self.add(value, f"{where} closure variable {name!r}", depth)
        for name in sorted(_global_names(fn.__code__)):
            if name in fn.__globals__:
                self.add(fn.__globals__[name], f"{where} global {name!r}", depth)

    def _add_module(self, m: nn.Module, where: str, depth: int) -> None:
        for name, sub in m.named_modules(remove_duplicate=False):
            at = f"{where}.{name}" if name else where
            self.put("nn.Module", f"{name}|{_type_name(sub)}".encode())
            fwd = getattr(type(sub), "forward", None)
            if isinstance(fwd, types.FunctionType):
                self.add(fwd, f"{at}.forward", depth)
            if "forward" in vars(sub):               # a forward set on the instance
                self.add(vars(sub)["forward"], f"{at}.forward", depth)
            attrs = {k: v for k, v in vars(sub).items()
                     if k not in _MODULE_SKIP and k != "forward"}
            self.add(attrs, f"{at} attributes", depth)
            for kind, items in (("parameter", sub.named_parameters(recurse=False)),
                                ("buffer", sub.named_buffers(recurse=False))):
                for pname, t in items:
                    self.put(kind, pname.encode())
                    self.add(t, f"{at}.{pname}", depth)


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the functions nested in it) may read as globals."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


def object_fingerprint(obj: Any) -> Fingerprint:
    """The :class:`Fingerprint` of ``obj`` (see the module's docstring for what it covers)."""
    h = _Hasher()
    h.add(obj, "the loss" if not isinstance(obj, nn.Module) else "the module")
    return Fingerprint(h.h.hexdigest()[:32], h.opaque)


def describe(obj: Any) -> str:
    """A short name for messages: ``module.qualname`` of a function or of the object's type."""
    if isinstance(obj, functools.partial):
        return f"functools.partial({describe(obj.func)}, ...)"
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return _type_name(obj)


__all__ = ["Fingerprint", "object_fingerprint", "describe"]
