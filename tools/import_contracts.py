"""Custom import-linter contracts for ``make lint`` (registered in pyproject.toml's ``contract_types``).

``acyclic``: no circle among the modules of the listed packages. import-linter 2.3's own contract types
(forbidden, layers, independence) can only keep a circle out when every module is placed in a declared
order; this one finds every strongly connected component of the import graph (the graph import-linter
built, so ``exclude_type_checking_imports`` and function-level imports count as it counts them) and
reports each circle with one example chain.
"""

from __future__ import annotations

from typing import Any

from importlinter import Contract, ContractCheck, fields, output


def import_cycles(graph: Any, modules: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), sorted."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(found)


class AcyclicContract(Contract):
    """No import circle among the modules of ``packages`` (each package and all its descendants)."""

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        modules: set[str] = set()
        for package in self.packages:  # type: ignore[attr-defined]
            modules |= {str(package)} | graph.find_descendants(str(package))
        cycles = import_cycles(graph, modules)
        chains = [graph.find_shortest_chain(cycle[0], cycle[1]) or () for cycle in cycles]
        back = [graph.find_shortest_chain(cycle[1], cycle[0]) or () for cycle in cycles]
        pairs = list(zip(chains, back, strict=True))
        return ContractCheck(kept=not cycles, metadata={"cycles": cycles, "chains": pairs})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for cycle, (there, back) in zip(check.metadata["cycles"], check.metadata["chains"], strict=True):
            output.print_error(f"Import circle among {', '.join(cycle)}:")
            output.print_error(f"  {' -> '.join(there)} -> {' -> '.join(back[1:])}")
            output.new_line()
