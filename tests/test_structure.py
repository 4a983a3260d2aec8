"""One room per stage: strokekit's imports, read with `ast` (module level, inside functions, and under
TYPE_CHECKING alike), hold no cycle and follow the stage layers; the torch-free stages stay torch- and
matplotlib-free when imported; report/figures.py is the one module that imports matplotlib.

Stages and what each may import (root: strokekit/__init__, the modules beside it such as atomic and
vocabulary, and config/*):

    root        -> root           (strokekit/__init__'s lazy Predictor, the public API, is the one exception)
    data        -> root
    phantom     -> root, data
    models      -> root
    evaluation  -> root, data
    postprocess -> root, data, evaluation
    training    -> root, data, models, evaluation, postprocess
    ensembling  -> root, data, evaluation, postprocess
    inference   -> root, data, models, evaluation, postprocess, ensembling
    report      -> anything but cli
    cli         -> anything (the commands; nothing imports them)
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "strokekit"

ROOT_STAGE = "root"
STAGES = ("data", "phantom", "models", "training", "evaluation", "postprocess", "ensembling", "inference",
          "report", "cli")
MAY_IMPORT = {  # besides its own stage
    ROOT_STAGE: {ROOT_STAGE},
    "data": {ROOT_STAGE},
    "phantom": {ROOT_STAGE, "data"},
    "models": {ROOT_STAGE},
    "evaluation": {ROOT_STAGE, "data"},
    "postprocess": {ROOT_STAGE, "data", "evaluation"},
    "training": {ROOT_STAGE, "data", "models", "evaluation", "postprocess"},
    "ensembling": {ROOT_STAGE, "data", "evaluation", "postprocess"},
    "inference": {ROOT_STAGE, "data", "models", "evaluation", "postprocess", "ensembling"},
    "report": {ROOT_STAGE, *(s for s in STAGES if s != "cli")},
    "cli": {ROOT_STAGE, *STAGES},
}
# (importer, imported): allowed across the layers. strokekit.Predictor is imported on first use only.
EXCEPTIONS = {("strokekit", "strokekit.inference.predictor"), ("strokekit", "strokekit.inference")}
# the stages whose modules must import neither torch nor matplotlib (scoring, ensembling and post-processing
# run on OOF files and masks alone)
LIGHT = ("strokekit.evaluation", "strokekit.ensembling", "strokekit.postprocess", "strokekit.vocabulary",
         "strokekit.config")
HEAVY = ("torch", "matplotlib")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: str
    line: int
    implicit: bool = False  # the imported package's __init__, run because one of its submodules was imported

    def __str__(self) -> str:
        how = "  (its package __init__)" if self.implicit else ""
        return f"{self.file}:{self.line}: {self.importer} -> {self.imported}{how}"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package (packages by their __init__.py)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, files: dict[str, Path]) -> list[Edge]:
    """Every import of strokekit's modules in one file, wherever it stands, resolved to modules."""
    path = files[name]
    file = str(path.relative_to(ROOT))
    package = name if is_package(name, files) else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
        for target in targets:
            while target and target not in files:  # `import strokekit.x.y as z`, `from strokekit.x import attr`
                if not target.startswith("strokekit"):
                    break
                target = target.rpartition(".")[0]
            if target not in files or target == name:
                continue
            edges.append(Edge(name, target, file, node.lineno))
            # importing a.b.c runs a/__init__ and a/b/__init__ first: the importer's own packages excepted
            for parent in ancestors(target):
                if parent not in ancestors(name) and parent != name:
                    edges.append(Edge(name, parent, file, node.lineno, implicit=True))
    return sorted(set(edges), key=lambda e: (e.line, e.imported))


def import_graph() -> tuple[dict[str, Path], list[Edge]]:
    files = module_files()
    return files, [edge for name in files for edge in imports_of(name, files)]


def stage(name: str) -> str:
    """root for strokekit/__init__, strokekit/<module>.py and strokekit/config/*; else its stage package."""
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "config" or (PACKAGE / f"{parts[1]}.py").is_file():
        return ROOT_STAGE
    if parts[1] not in STAGES:
        raise AssertionError(f"{name}: not in a stage; add its package to STAGES in {__file__}")
    return parts[1]


def layer_violations(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if (e.importer, e.imported) not in EXCEPTIONS
            and stage(e.imported) not in MAY_IMPORT[stage(e.importer)] | {stage(e.importer)}]


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle per strongly connected group of modules (Tarjan), as the edges that close it.

    An import of one's own ancestor package does not count (Python runs it before the module anyway), nor
    does strokekit/__init__'s lazy Predictor (run on attribute access, never at import)."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        if e.imported in ancestors(e.importer) or (e.importer, e.imported) in EXCEPTIONS:
            continue
        graph.setdefault(e.importer, []).append(e)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for e in graph.get(node, []):
            if e.imported not in index:
                visit(e.imported)
                low[node] = min(low[node], low[e.imported])
            elif e.imported in on_stack:
                low[node] = min(low[node], index[e.imported])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(sorted(group)[0], group, graph) for group in groups]


def _one_cycle(start: str, group: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest path start -> ... -> start within the group (breadth first)."""
    paths = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for e in graph.get(node, []):
            if e.imported == start:
                return paths[node] + [e]
            if e.imported in group and e.imported not in paths:
                paths[e.imported] = paths[node] + [e]
                queue.append(e.imported)
    raise AssertionError(f"no cycle through {start}")


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """Module-level, function-level, TYPE_CHECKING, relative and `import a.b` imports are all edges."""
    pkg = tmp_path / "strokekit"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "atomic.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text(textwrap.dedent("""\
        from typing import TYPE_CHECKING
        from . import b
        if TYPE_CHECKING:
            from strokekit.data.c import C
        def f():
            import strokekit.atomic
            from ..data import d
        """))
    for name in "bcd":
        (pkg / "data" / f"{name}.py").write_text("")
    files = module_files(pkg)
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = {(e.imported, e.line) for e in imports_of("strokekit.data.a", files) if not e.implicit}
    finally:
        ROOT = saved
    assert found == {("strokekit.data.b", 2), ("strokekit.data.c", 4), ("strokekit.atomic", 6),
                     ("strokekit.data.d", 7)}


def test_no_import_cycles():
    _, edges = import_graph()
    found = cycles(edges)
    assert not found, "import cycles (each as the imports that close it):\n" + "\n\n".join(
        "\n".join(f"  {e}" for e in cycle) for cycle in found)


def test_stages_import_only_the_layers_below():
    _, edges = import_graph()
    bad = layer_violations(edges)
    assert not bad, ("imports that break the stage layers (see this file's docstring):\n"
                     + "\n".join(f"  {e}  [{stage(e.importer)} may not import {stage(e.imported)}]" for e in bad))


def test_every_module_has_a_stage():
    files, _ = import_graph()
    for name in files:
        stage(name)


PLOTTING = "strokekit/report/figures.py"  # the one module that draws (matplotlib)


def test_only_the_figures_module_imports_matplotlib():
    """strokekit/report/figures.py draws every figure and PNG (curves.png, confusion / worst-case PNGs,
    leaderboard.png, the report's figures); no other module of the kit or script imports matplotlib."""
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *ROOT.glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "matplotlib" or n.startswith("matplotlib.") for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found and all(f.startswith(PLOTTING + ":") for f in found), (
        f"matplotlib imported outside {PLOTTING}:\n" + "\n".join(f"  {f}" for f in found
                                                               if not f.startswith(PLOTTING + ":")))


LIGHT_SCRIPT = """
import importlib, sys
heavy, modules, culprits = {heavy!r}, {modules!r}, {{}}
for name in modules:
    importlib.import_module(name)
    for lib in heavy:
        if lib in sys.modules and lib not in culprits:
            culprits[lib] = name
print(repr(culprits))
"""


def test_light_stages_import_neither_torch_nor_matplotlib():
    """evaluation, ensembling, postprocess, vocabulary and config: every module imported in a fresh
    interpreter leaves torch and matplotlib out of sys.modules."""
    files, edges = import_graph()
    modules = [name for name in files if any(name == p or name.startswith(p + ".") for p in LIGHT)]
    assert len(modules) > 20
    script = LIGHT_SCRIPT.format(heavy=HEAVY, modules=modules)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    culprits = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert not culprits, "\n".join(
        f"importing {name} loads {lib}; the imports that lead there:\n{_path_to(lib, name, files, edges)}"
        for lib, name in culprits.items())


def _path_to(lib: str, start: str, files: dict[str, Path], edges: list[Edge]) -> str:
    """A shortest chain of strokekit imports start -> ... -> a module that imports `lib` at module level."""
    direct = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == lib or n.startswith(lib + ".") for n in names):
                direct.setdefault(name, node.lineno)
    paths, queue = {start: []}, [start]
    while queue:
        node = queue.pop(0)
        if node in direct:
            chain = paths[node]
            return "\n".join([f"  {e}" for e in chain]
                             + [f"  {files[node].relative_to(ROOT)}:{direct[node]}: {node} -> {lib}"])
        for e in edges:
            if e.importer == node and e.imported not in paths:
                paths[e.imported] = paths[node] + [e]
                queue.append(e.imported)
    return "  (no module-level chain found: a function-level import)"
