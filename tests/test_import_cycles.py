"""No import cycle between the project's modules, counting the imports inside functions: a lazy import hides a cycle
from Python, not from the reader who has to understand one module before the other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"uld_vllm": ROOT / "uld_vllm", "uld_kernels": ROOT / "kernels", "uld_train": ROOT / "train"}


def modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the three packages."""
    found = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = path.relative_to(directory).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its source (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from package import module` imports that module; `from module import name` imports the module
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names
            ]
        else:
            continue
        edges |= {target for target in targets if target in known and target != name}
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a path of names (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_packages_have_no_import_cycle_lazy_imports_included():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk saw the code base
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_walk_finds_a_cycle_through_a_lazy_import(tmp_path):
    """The check itself: a function-level import that closes a loop is reported."""
    graph = {"a": {"b"}, "b": set(), "c": {"a"}}
    assert find_cycle(graph) is None
    graph["b"] = {"c"}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    lazy = tmp_path / "a.py"
    lazy.write_text("def f():\n    from uld_vllm import b\n")
    assert imports("uld_vllm.a", lazy, {"uld_vllm.a", "uld_vllm.b"}) == {"uld_vllm.b"}
