"""Fail when the modules of turbo_async climb their layers or import each other in a cycle.

The package is layered: leaves at the bottom, wiring at the top. ``LAYERS`` below is the one
list of each module's layer; docs/architecture.rst's table shows the same layers (a test
compares the two) and each module's docstring starts with its own ("Layer 3: ..."). This reads
every module's imports from its AST, module-level and function-local alike, and reports:

- a module missing from ``LAYERS`` (a new module gets its line there first);
- a docstring whose "Layer N" is not the module's layer in ``LAYERS``;
- an import that climbs: a module importing one of a higher layer (same layer is allowed, for
  modules that sit beside each other; a cycle among them is still refused);
- each strongly connected group of modules that import one another;
- a function-local import of a turbo_async module outside ``AppConfig.ready`` (``apps.py``): it
  hides cycles.

    python scripts/check_imports.py            # exit 1 with the problems, 0 when there are none
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE = "turbo_async"
ROOT = Path(__file__).resolve().parent.parent
LOCAL_IMPORTS_ALLOWED = {f"{PACKAGE}.apps"}

# Each module's layer, by its name inside the package (``__init__`` is the package itself). A
# module may import only from its own layer or below. A key naming a package covers every module
# in it. docs/architecture.rst's table lists the same names (tests/test_quality.py compares them).
LAYERS: dict[str, int] = {
    # 0: leaves
    "conf": 0,
    "frames": 0,
    "names": 0,
    "exceptions": 0,
    "changes": 0,
    "codec": 0,
    "models": 0,
    "migrations": 0,
    "placement": 0,
    "protocol": 0,
    # 1: the layer's Redis beside a group, the channel layer's calls, the test seam, the broker, metrics
    "recording": 1,
    "history": 1,
    "layers": 1,
    "broker": 1,
    "metrics": 1,
    # 2: the process's loop and channel layer; how a web process's sockets get their groups' frames
    "delivery": 2,
    "fanout": 2,
    # 3: the request side
    "signals": 3,
    "pending": 3,
    "outbox": 3,
    "publish": 3,
    "refreshes": 3,
    # 4: turbo-django's API
    "streams": 4,
    "components": 4,
    "classes": 4,
    "shortcuts": 4,
    # 5-8: registry, task bodies, wiring, task declarations
    "registry": 5,
    "worker": 6,
    "wiring": 7,
    "tasks": 8,
    # 9: the WebSocket end, the request middleware, the template tags
    "consumers": 9,
    "security": 9,
    "routing": 9,
    "middleware": 9,
    "templatetags": 9,
    # 10: start-up, checks, commands, test helpers
    "apps": 10,
    "deploy_checks": 10,
    "checks": 10,
    "management": 10,
    "testing": 10,
    "pytest_plugin": 10,
    # 11: the public names (nothing in the package imports them, checked below)
    "__init__": 11,
}

DOCSTRING_LAYER = re.compile(r"^Layer (\d+)\b", re.MULTILINE)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def table_key(module: str) -> str:
    """``turbo_async.templatetags.turbo_streams`` -> ``templatetags.turbo_streams``."""
    return module.removeprefix(PACKAGE).removeprefix(".") or "__init__"


def layer_of(module: str, layers: Mapping[str, int]) -> tuple[str, int] | None:
    """The table's entry for ``module``: its own, else that of the nearest package holding it."""
    key = table_key(module)
    while key:
        if key in layers:
            return key, layers[key]
        key = key.rpartition(".")[0]
    return None


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path, root: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for each turbo_async module imported."""
    current = module_name(path, root)
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in modules:
                        found.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                target = resolve(current, path.name == "__init__.py", child)
                for alias in child.names:
                    candidate = f"{target}.{alias.name}"
                    if candidate in modules:
                        found.append((candidate, child.lineno, in_function))
                    elif target in modules:
                        found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def docstring_problem(path: Path, root: Path, key: str, own_entry: bool, layer: int) -> str | None:
    """A module named in the table states its layer (an empty package ``__init__`` need not); any
    module that states one agrees with the table."""
    tree = ast.parse(path.read_text(), str(path))
    docstring = ast.get_docstring(tree) or ""
    own_entry = own_entry and bool(tree.body)
    stated = DOCSTRING_LAYER.search(docstring)
    where = path.relative_to(root)
    if stated is None:
        return f"{where}: its docstring does not say 'Layer {layer}'" if own_entry else None
    if int(stated.group(1)) != layer:
        return f"{where}: its docstring says Layer {stated.group(1)}, LAYERS says {key!r} is layer {layer}"
    return None


def check(root: Path = ROOT, layers: Mapping[str, int] = LAYERS) -> list[str]:
    """The problems found in ``root``'s turbo_async package, as printable lines."""
    paths = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for path in paths:
        current = module_name(path, root)
        entry = layer_of(current, layers)
        if entry is None:
            problems.append(f"{path.relative_to(root)}: {table_key(current)!r} has no layer; "
                            "add it to LAYERS in scripts/check_imports.py and to docs/architecture.rst")
        else:
            problem = docstring_problem(path, root, entry[0], entry[0] == table_key(current), entry[1])
            if problem:
                problems.append(problem)
        edges = graph.setdefault(current, set())
        for target, line, in_function in imports(path, root, modules):
            if path.name == "__init__.py" and target.startswith(current + "."):
                continue  # a package's __init__ re-exporting its own submodules
            if target == PACKAGE and current != PACKAGE:
                problems.append(f"{path.relative_to(root)}:{line}: imports the package {PACKAGE} itself; "
                                "import the module that defines the name")
            elif entry is not None and (target_entry := layer_of(target, layers)) is not None:
                if target_entry[1] > entry[1]:
                    problems.append(f"{path.relative_to(root)}:{line}: {table_key(current)} (layer {entry[1]}) "
                                    f"imports {table_key(target)} (layer {target_entry[1]}), a higher layer")
            if in_function and current not in LOCAL_IMPORTS_ALLOWED:
                problems.append(f"{path.relative_to(root)}:{line}: function-local import of {target}; "
                                "import it at the top of the module (only AppConfig.ready may import late)")
            edges.add(target)
    graph.pop(PACKAGE, None)  # __init__ re-exports; nothing below may import it (checked above)
    for group in cycles(graph):
        problems.append("import cycle: " + " <-> ".join(group))
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in the imports of {PACKAGE}.")
        return 1
    print(f"No import climbs a layer or forms a cycle in {PACKAGE}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
