"""The import graph of the package and bench/: every arrow points down a floor (or along one), and no circle.

Every import counts, at module level and inside functions (parsed with `ast`, nothing is imported). The floors
(docs/ARCHITECTURE.md, "Floors"), lowest first; a module may import its own floor and the floors below:

    core < data < models < inference < eval < training, scaling < tiny, ablation, demo < commands < bench

inference, eval and training are three roles of one storey kept in a strict order (the training callbacks render
with the inference sampler and score with eval; eval scores what inference makes), so that no two of them import
each other; scaling (the memory plan) sits beside training and reads only models/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pm_lightning"
BENCH = REPO / "bench"
FLOORS = (
    ("core",),
    ("data",),
    ("models",),
    ("inference",),
    ("eval",),
    ("training", "scaling"),
    ("tiny", "ablation", "demo"),
    ("commands",),
    ("bench",),
)
FLOOR_OF = {folder: level for level, folders in enumerate(FLOORS) for folder in folders}


def module_name(path: Path) -> str:
    """pm_lightning/data/grid.py -> pm_lightning.data.grid; bench/flux_step.py -> bench.flux_step."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    paths = [*PACKAGE.rglob("*.py"), *BENCH.glob("*.py")]
    return {module_name(p): p for p in paths}


MODULES = all_modules()
ROOT = "pm_lightning"  # its __init__ runs before any module of the package: not an arrow


def resolve(name: str) -> str | None:
    """The module an imported name belongs to (`pm_lightning.data.grid.grid_id` -> `pm_lightning.data.grid`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The package and bench modules `module` imports, anywhere in its file (functions and TYPE_CHECKING too)."""
    path = MODULES[module]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (write the absolute module name)"
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            if module.startswith("bench.") and f"bench.{name.partition('.')[0]}" in MODULES:
                name = f"bench.{name}"  # a bench script imports its siblings by their bare names
            target = resolve(name)
            if target and target not in (module, ROOT):
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def floor(module: str) -> str:
    """The floor a module lives on: its folder under pm_lightning/, `commands` for the top level, or `bench`."""
    parts = module.split(".")
    if parts[0] == "bench":
        return "bench"
    top_level_file = len(parts) == 2 and MODULES[module].name != "__init__.py"
    return "commands" if top_level_file else parts[1]


def test_every_folder_has_a_floor():
    folders = {floor(m) for m in MODULES if m != ROOT}
    assert folders <= set(FLOOR_OF), f"folders without a floor: {sorted(folders - set(FLOOR_OF))}"


def test_no_import_runs_up_a_floor():
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if m != ROOT
        for t in targets
        if FLOOR_OF[floor(t)] > FLOOR_OF[floor(m)]
    )
    assert upward == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_circle_between_modules():
    assert _cycle(GRAPH) is None


def test_no_circle_between_folders():
    """Two folders never import each other, not even through a third (inference -> eval -> inference)."""
    folders: dict[str, set[str]] = {}
    for m, targets in GRAPH.items():
        if m != ROOT:
            folders.setdefault(floor(m), set()).update(floor(t) for t in targets if floor(t) != floor(m))
    assert _cycle(folders) is None


@pytest.mark.parametrize(
    "graph,expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"a"}}, ["a", "a"]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    """The finder itself: a circle through three nodes, a diamond (no circle), a self-loop."""
    assert _cycle(graph) == expected


def test_the_graph_sees_imports_inside_functions():
    """A function-level import is an arrow like any other (they hid two of the arrows this test now forbids)."""
    assert "pm_lightning.models.encoders" in GRAPH["pm_lightning.inference.session"]
    assert "bench.docs_section" in GRAPH["bench.flux_step"]
