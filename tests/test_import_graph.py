"""The package's import graph: no cycles, no underscore names imported from another module.

Every import statement counts, the ones inside functions too: a lazy import still ties
two modules together. A package's ``__init__`` re-exporting its own submodules is not
an edge (the package is their face, not a user of them).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("logvmamba", "baselines")


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, imported names) of every import statement of a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [a.name for a in node.names]


def _graph():
    edges, private = {m: set() for m in MODULES}, []
    for name, path in MODULES.items():
        for base, names in _imports(name, path):
            targets = [base] + [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            for target in targets:
                if target in MODULES and target != name and not target.startswith(name + "."):
                    edges[name].add(target)
            if base in MODULES and base != name:
                private += [f"{name} imports {base}.{n}" for n in names
                            if n.startswith("_") and not n.startswith("__") and f"{base}.{n}" not in MODULES]
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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


def test_the_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from . import sibling\n    from .other import _hidden\n")
    found = list(_imports("logvmamba.pkg.mod", path))
    assert ("logvmamba.pkg", ["sibling"]) in found and ("logvmamba.pkg.other", ["_hidden"]) in found


def test_no_import_cycles():
    edges, _ = _graph()
    assert len(edges) > 40  # the walk found the package
    assert _cycles(edges) == []


def test_no_underscore_names_imported_across_modules():
    _, private = _graph()
    assert private == []


@pytest.mark.parametrize("lower, higher", [
    ("logvmamba.data", "logvmamba.train"), ("logvmamba.data", "logvmamba.infer"),
    ("logvmamba.models", "logvmamba.train"), ("logvmamba.ops", "logvmamba.models"),
    ("logvmamba.evaluation", "logvmamba.reporting"), ("logvmamba.checkpoint", "logvmamba.train"),
])
def test_a_lower_layer_never_imports_a_higher_one(lower, higher):
    edges, _ = _graph()
    offenders = [f"{m} -> {t}" for m in edges if m == lower or m.startswith(lower + ".")
                 for t in edges[m] if t == higher or t.startswith(higher + ".")]
    assert offenders == []
