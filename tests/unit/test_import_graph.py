"""No import cycle between modules (issue 9; docs/architecture.md "Layers").

import-linter (`make lint`, .importlinter) enforces the layers between packages; this test finds cycles
between individual modules, which layers do not see inside one package (session.py and revocation.py once
imported each other).  An import inside a function or under TYPE_CHECKING counts: it still couples the two."""

from __future__ import annotations

import grimp

PACKAGES = ("storm", "storm_cli", "storm_tools", "gateway", "tenants", "consumers", "db", "storm_sdk")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module (each one is a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_cycle() -> None:
    g = grimp.build_graph(*PACKAGES, cache_dir=None)
    modules = set(g.modules)
    graph = {m: {n for n in g.find_modules_directly_imported_by(m) if n in modules} for m in modules}
    assert strongly_connected(graph) == []
