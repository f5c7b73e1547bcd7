"""The package's imports run one way (docs/architecture.md draws the layers).

Every module of smartclip/ is parsed (not imported) and every import counted, those inside
functions too: an import hidden in a function still ties two modules together. ``from PKG
import NAME`` counts as an import of the module that defines NAME when PKG's ``__init__``
re-exports it (``from .sub import NAME``, or smartclip's lazy ``_EXPORTS`` table), and
``smartclip.NAME`` after ``import smartclip`` as an import of NAME's module. Importing
``a.b`` is not counted as an import of ``a``'s ``__init__`` (Python runs it, but that is the
package's own business), and imports under ``if TYPE_CHECKING:`` are not counted.
"""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "smartclip"

# the core, bottom up: each module may import only the ones listed for it
CORE = {
    "smartclip.fileio": set(),
    "smartclip.tokenizer": set(),
    "smartclip.model": {"smartclip.tokenizer"},
    "smartclip.checkpoint": {"smartclip.model", "smartclip.fileio"},
    "smartclip.hf": {"smartclip.model", "smartclip.fileio"},
    "smartclip.pretrained": {"smartclip.checkpoint", "smartclip.model"},
    "smartclip.factory": {"smartclip.checkpoint", "smartclip.hf", "smartclip.model", "smartclip.pretrained",
                          "smartclip.tokenizer"},
    "smartclip.exporting": {"smartclip.checkpoint", "smartclip.fileio", "smartclip.hf", "smartclip.model"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name, modules):
    return modules.get(name, Path()).name == "__init__.py"


def _type_checking_nodes(tree):
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _absolute(module, node, modules):
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module, modules) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


_REEXPORTS = {}


def _reexports(package, modules):
    """NAME -> defining module, for what ``package``'s ``__init__`` re-exports."""
    if package in _REEXPORTS:
        return _REEXPORTS[package]
    _REEXPORTS[package] = table = {}
    tree = ast.parse(modules[package].read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = _absolute(package, node, modules)
            for alias in node.names:
                table[alias.asname or alias.name] = source
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and getattr(node.targets[0], "id", None) == "_EXPORTS" and isinstance(node.value, ast.Dict)):
            for key, value in zip(node.value.keys, node.value.values):
                table[key.value] = f"{package}.{value.value}"
    return table


def _target(base, name, modules):
    """The module ``from base import name`` really depends on."""
    if f"{base}.{name}" in modules:
        return f"{base}.{name}"
    if _is_package(base, modules):
        source = _reexports(base, modules).get(name)
        if source in modules and source != base:
            return _target(source, name, modules) if _is_package(source, modules) else source
    return base


@functools.lru_cache(maxsize=1)
def _graph():
    return import_graph()


def import_graph():
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = _type_checking_nodes(tree)
        imports_top = False
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        graph[module].add(alias.name)
                        imports_top |= alias.name == "smartclip" and alias.asname is None
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, node, modules)
                if base in modules:
                    graph[module].update(_target(base, a.name, modules) for a in node.names)
        if imports_top:  # smartclip.create_model and friends: the module that defines them
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "smartclip":
                    graph[module].add(_target("smartclip", node.attr, modules))
        graph[module].discard(module)
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions_and_reexports():
    graph = _graph()
    assert "smartclip.factory" in graph["smartclip.cli.train"]  # imported inside run()
    assert "smartclip.data.loader" in graph["smartclip.data"]  # a package __init__ re-exporting
    assert "smartclip.factory" in graph["smartclip.cli.export"]  # smartclip.load(...) after `import smartclip`
    # a planted cycle is found
    planted = {**graph, "smartclip.model": graph["smartclip.model"] | {"smartclip.factory"}}
    assert any("smartclip.model" in c and "smartclip.factory" in c for c in cycles(planted))


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_core_is_layered(module):
    graph = _graph()
    assert graph[module] <= CORE[module], f"{module} imports {sorted(graph[module] - CORE[module])}"


def test_no_import_cycle_in_the_package():
    found = cycles(_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
