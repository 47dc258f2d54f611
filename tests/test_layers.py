"""Layers point down and nothing imports in a circle.

Every ``.py`` file of the repository is parsed with ``ast``; its imports are read wherever they
are (module level, inside functions and classes, under ``if TYPE_CHECKING``) together with
``importlib.import_module("literal")`` calls. The layers, bottom to top:

    serving (no torch) < training < export < studies, benchmarks, scripts (top) < tests

(export rebuilds the model from the checkpoint through training's model registry, so it sits
above training). A module may import its own layer or a lower one; the modules of the repository
form no cycle, within a package included. ``import_graph`` and ``layer_violations`` are pure
functions of source text, tested here on small made-up trees as well as on the repository.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", ".git", "node_modules", "build", "dist", "runs", "__pycache__", "shared"}
LAYERS = {"serving": 0, "training": 1, "export": 2, "studies": 3, "benchmarks": 3, "scripts": 3, "tests": 4}
TOP = 3  # files at the root (locustfile.py) and packages not listed above


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file under ``root`` outside SKIP_DIRS."""
    out = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".py"):
                path = Path(folder) / name
                out[module_name(path, root)] = path
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the repository."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in known:
            return candidate
    return None


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every module name ``source`` imports (absolute, relative imports resolved against
    ``module``), with its line: ``import a.b``, ``from a import b`` (as ``a.b``, and ``a``),
    ``importlib.import_module("a.b")`` / ``import_module(".b", package)`` with literal names."""
    package = module if is_package else module.rpartition(".")[0]
    out = []

    def relative(level: int, name: str | None) -> str:
        base = package.split(".") if package else []
        base = base[:len(base) - (level - 1)] if level > 1 else base
        return ".".join(base + ([name] if name else []))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = relative(node.level, node.module) if node.level else node.module or ""
            # "from a import b": the module a.b when there is one, else a (resolved by the caller)
            out += [(f"{base}.{a.name}" if a.name != "*" else base, node.lineno) for a in node.names]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                target = node.args[0].value
                if target.startswith("."):
                    level = len(target) - len(target.lstrip("."))
                    target = relative(level, target.lstrip(".") or None)
                out.append((target, node.lineno))
    return out


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Module -> {imported module of the repository: first line}. ``from a import b`` counts
    as importing ``a.b`` when that is a module, else ``a``."""
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(path.read_text(encoding="utf-8"), mod, path.name == "__init__.py"):
            target = _resolve(name, known)
            if target is not None and target != mod:
                edges.setdefault(target, line)
        graph[mod] = edges
    return graph


def layer(module: str) -> int:
    return LAYERS.get(module.split(".")[0], TOP)


def layer_violations(graph: dict[str, dict[str, int]], files: dict[str, Path]) -> list[str]:
    return [f"{files[src].relative_to(REPO) if files[src].is_relative_to(REPO) else files[src]}:{line}: "
            f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
            for src, edges in sorted(graph.items()) for dst, line in sorted(edges.items())
            if layer(dst) > layer(src)]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle a -> b -> ... -> a through each strongly connected component of more than one
    module (Tarjan); ``components`` gives their members."""
    return [_cycle_path(graph, comp) for comp in components(graph)]


def components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each sorted."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []
    counter = [0]

    def strong(v):  # iterative Tarjan
        work = [(v, iter(sorted(graph.get(v, {}))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return comps


def _cycle_path(graph, comp: list[str]) -> list[str]:
    """One cycle through the component's first module (breadth-first back to it)."""
    start, members = comp[0], set(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


# --- the checker on made-up trees -----------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return source_files(tmp_path)


@pytest.mark.parametrize("files, edges, found", [
    pytest.param({  # function-level imports and import_module literals are edges
        "training/__init__.py": "",
        "training/a.py": "def f():\n    from .b import g\n    return g\n",
        "training/b.py": "import importlib\n\ndef g():\n    return importlib.import_module('training.a')\n",
        "training/c.py": "from importlib import import_module\nx = import_module('.a', 'training')\n",
    }, {"training.a": {"training.b": 2}, "training.b": {"training.a": 4}, "training.c": {"training.a": 2}},
        [["training.a", "training.b", "training.a"]], id="function-level"),
    pytest.param({  # "from package import submodule" points at the submodule; y -> p -> x has no way back
        "training/__init__.py": "",
        "training/p/__init__.py": "from .x import X\n",
        "training/p/x.py": "X = 1\n",
        "training/p/y.py": "from . import x\nfrom .. import p\n",
    }, {"training.p.y": {"training.p.x": 1, "training.p": 2}, "training.p": {"training.p.x": 1}}, [],
        id="submodule"),
])
def test_import_graph_on_made_up_trees(tmp_path, files, edges, found):
    graph = import_graph(_tree(tmp_path, files))
    assert {m: graph[m] for m in edges} == edges
    assert cycles(graph) == found


def test_upward_import_is_named_with_its_file_and_line(tmp_path):
    files = _tree(tmp_path, {
        "serving/__init__.py": "", "serving/m.py": "import numpy\n\ndef f():\n    import training.t\n",
        "training/__init__.py": "", "training/t.py": "from serving.m import f\n",
        "export/__init__.py": "", "export/e.py": "import training.t\n",
    })
    graph = import_graph(files)
    bad = layer_violations(graph, files)
    assert len(bad) == 1 and "serving/m.py:4: serving.m (layer 0) imports training.t (layer 1)" in bad[0]
    assert cycles(graph) == [["serving.m", "training.t", "serving.m"]]


# --- the repository -------------------------------------------------------------------------


def test_every_import_points_down_a_layer_or_stays_in_its_own():
    files = source_files(REPO)
    bad = layer_violations(import_graph(files), files)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle_anywhere():
    graph = import_graph(source_files(REPO))
    found = [f"{' -> '.join(_cycle_path(graph, comp))} (modules in the cycle: {', '.join(comp)})"
             for comp in components(graph)]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_serving_never_imports_torch():
    files = {m: p for m, p in source_files(REPO).items() if layer(m) == 0}
    uses = [f"{m}:{line}" for m, p in files.items()
            for name, line in imported_names(p.read_text(), m, p.name == "__init__.py")
            if name.split(".")[0] in ("torch", "torchvision")]
    assert not uses, uses
