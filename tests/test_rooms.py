"""The rooms' import rules, read from the source with `ast` and checked by importing with torch blocked.

- `stprompt.runtime` and `stprompt.engines` never import `stprompt.export` (the appliance has no exporter and its
  dependencies; the probe scene and the gates both sides use live in `stprompt.bundle`);
- `stprompt.bundle`, `stprompt.engines` and `stprompt.runtime` import no `torch` / `open_clip` when they are imported
  (inside functions is fine: the PyTorch reference backend imports torch when it is opened), neither themselves nor
  through the stprompt modules they import at module level;
- `stprompt.bundle` (the format both sides share) imports nothing of `stprompt.export`, `stprompt.engines`,
  `stprompt.runtime`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import stprompt

PACKAGE_DIR = Path(stprompt.__file__).resolve().parent
HEAVY = ("torch", "open_clip")
TORCH_FREE_ROOMS = ("stprompt.bundle", "stprompt.engines", "stprompt.runtime", "stprompt.triton")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports, resolved to an absolute dotted name (module, or module.attribute)
    line: int
    at_import: bool  # executed when the module is imported (not inside a function, not under TYPE_CHECKING)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, source: str, is_package: bool = False) -> list[Import]:
    """Every import of `module`'s source: import statements, and importlib.import_module / __import__ calls with a
    literal name. `from X import a` yields X and X.a (a may be a submodule)."""
    found: list[Import] = []

    def add(target: str, node: ast.AST, at_import: bool) -> None:
        if target:
            found.append(Import(module, target, node.lineno, at_import))

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, at_import)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            add(base, node, at_import)
            for alias in node.names:
                if alias.name != "*":
                    add(f"{base}.{alias.name}" if base else alias.name, node, at_import)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            arg = node.args[0] if node.args else None
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value, node, at_import)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_import = False  # a function body runs when called, not when the module is imported
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            visit(node.test, at_import)
            for child in node.body:
                visit(child, False)  # only type checkers read these
            for child in node.orelse:
                visit(child, at_import)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, at_import)

    visit(ast.parse(source), True)
    return found


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the installed stprompt package: dotted name -> (file, is a package)."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def in_room(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    modules = package_modules()
    return {name: imports_of(name, path.read_text(), is_package) for name, (path, is_package) in modules.items()}


def executed_modules(target: str, known) -> list[str]:
    """The stprompt modules importing `target` runs: every existing prefix (packages' __init__ run first)."""
    parts = target.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known]


def heavy_chains(graph: dict[str, list[Import]], start: str) -> list[str]:
    """Import chains from `start` to torch / open_clip through statements that run at import time."""
    chains, seen, todo = [], {start}, [(start, [start])]
    while todo:
        name, chain = todo.pop()
        for imp in graph[name]:
            if not imp.at_import:
                continue
            if top(imp.target) in HEAVY:
                chains.append(" -> ".join([*chain, f"{imp.target} (line {imp.line})"]))
            for nxt in executed_modules(imp.target, graph):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, [*chain, nxt]))
    return chains


# --- the checker itself -------------------------------------------------------------------------------------------


def test_the_walker_resolves_relative_imports_and_tells_import_time_from_call_time():
    src = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        import torch.nn as nn
        from ...export import bundle
        from .. import export
        from . import sibling
        if TYPE_CHECKING:
            import open_clip
        else:
            import numpy
        try:
            import open_clip as oc
        except ImportError:
            oc = None

        class K:
            import json

        def f():
            import torch
            importlib.import_module("open_clip")
        """
    )
    got = {(i.target, i.at_import) for i in imports_of("stprompt.runtime.backends.trt", src)}
    assert {("torch.nn", True), ("stprompt.export", True), ("stprompt.export.bundle", True)} <= got
    assert ("stprompt.runtime.backends.sibling", True) in got and ("stprompt.runtime.export", True) in got
    assert ("open_clip", False) in got and ("open_clip", True) in got  # TYPE_CHECKING, then the try block
    assert ("numpy", True) in got and ("json", True) in got  # else branch and class bodies run at import
    assert ("torch", False) in got
    pkg = {i.target for i in imports_of("stprompt.runtime.backends", "from .base import Backend", is_package=True)}
    assert pkg == {"stprompt.runtime.backends.base", "stprompt.runtime.backends.base.Backend"}


def test_the_chain_search_follows_module_level_imports_through_packages():
    sources = {
        "stprompt": ("", True),
        "stprompt.runtime": ("", True),
        "stprompt.runtime.x": ("from ..localize.heat import boxes\ndef f():\n    from ..model import head\n", False),
        "stprompt.localize": ("from . import queries\n", True),
        "stprompt.localize.heat": ("import numpy\n", False),
        "stprompt.localize.queries": ("import open_clip\n", False),
        "stprompt.model": ("import torch\n", True),
    }
    graph = {name: imports_of(name, src, is_package) for name, (src, is_package) in sources.items()}
    assert heavy_chains(graph, "stprompt.runtime.x") == [
        "stprompt.runtime.x -> stprompt.localize -> stprompt.localize.queries -> open_clip (line 1)"
    ]  # the package's __init__ runs on the way to heat; model is imported inside a function only


def test_the_package_walk_sees_every_room(graph):
    for name in ("stprompt.bundle.manifest", "stprompt.engines.tensorrt", "stprompt.runtime.backends.trt",
                 "stprompt.runtime.cli", "stprompt.export.bundle", "stprompt.appliance"):  # fmt: skip
        assert name in graph, name
    assert any(imp.target.startswith("stprompt.bundle.") for imp in graph["stprompt.runtime.backends.open"])


# --- the rules ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["stprompt.runtime", "stprompt.engines"])
def test_runtime_and_engines_never_import_the_exporter(graph, room):
    bad = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for name, imports in graph.items()
        if in_room(name, room)
        for imp in imports
        if in_room(imp.target, "stprompt.export")
    ]
    assert bad == [], f"{room} must not depend on stprompt.export:\n" + "\n".join(bad)


def test_bundle_imports_none_of_the_rooms_built_on_it(graph):
    rooms = ("stprompt.export", "stprompt.engines", "stprompt.runtime")
    bad = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for name, imports in graph.items()
        if in_room(name, "stprompt.bundle")
        for imp in imports
        if any(in_room(imp.target, room) for room in rooms)
    ]
    assert bad == [], "stprompt.bundle is the shared format; it must not import its users:\n" + "\n".join(bad)


def test_torch_free_rooms_import_no_torch_at_module_level(graph):
    direct = [
        f"{imp.module}:{imp.line} imports {imp.target} at module level"
        for name, imports in graph.items()
        if any(in_room(name, room) for room in TORCH_FREE_ROOMS)
        for imp in imports
        if imp.at_import and top(imp.target) in HEAVY
    ]
    assert direct == [], "import torch / open_clip inside the functions that need them:\n" + "\n".join(direct)
    chains = sorted(
        chain
        for name in graph
        if any(in_room(name, room) for room in TORCH_FREE_ROOMS)
        for chain in heavy_chains(graph, name)
    )
    assert chains == [], "torch reached at import time through:\n" + "\n".join(chains)


# --- and for real: import them with torch and open_clip blocked --------------------------------------------------

BLOCKED_IMPORT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys

    BLOCKED = {"torch", "open_clip"}
    attempts = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    names = []
    for package in ("stprompt.bundle", "stprompt.engines", "stprompt.runtime.backends"):
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    names += ["stprompt.runtime.cli", "stprompt.appliance"]
    for name in names:
        importlib.import_module(name)
    print(json.dumps({"imported": names, "attempts": attempts,
                      "loaded": sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)}))
    """
)


def test_torch_free_rooms_import_with_torch_and_open_clip_blocked(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    imported = set(report["imported"])
    assert {"stprompt.bundle.manifest", "stprompt.bundle.preprocess", "stprompt.engines.tensorrt",
            "stprompt.engines.build_cli", "stprompt.runtime.backends.trt", "stprompt.runtime.backends.torch_ref",
            "stprompt.runtime.cli", "stprompt.appliance"} <= imported  # fmt: skip
    assert report["attempts"] == [] and report["loaded"] == []  # not even tried (no optional torch import)
