"""The packages' layers (docs/design.md, "Layout"): imports point one way and no module imports itself back, not even
through an import inside a function. A package's own __init__ importing its submodules is not counted as an edge
from those submodules (Python runs it first either way, and no submodule here reads names from it)."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("idp_envs", "idp_agents", "rollouts")


def library_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports anywhere in its text (module level or inside functions)."""
    modules = library_modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from a.b import c" imports the module a.b.c when there is one, else names of a.b
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_a_cycle_is_found_where_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_envs_import_neither_agents_nor_rollouts():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("idp_envs"):
            assert not {t for t in targets if not t.startswith("idp_envs")}, name
