"""Fail when the modules of turbo_async import each other in a cycle.

The package is layered (see each module's docstring): leaves at the bottom, wiring at the top.
This reads every module's imports from its AST, module-level and function-local alike, and
reports each strongly connected group of modules that import one another. Function-local imports
of turbo_async modules are refused outside ``AppConfig.ready`` (``apps.py``): they hide cycles.

    python scripts/check_imports.py            # exit 1 with the cycles, 0 when there are none
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "turbo_async"
ROOT = Path(__file__).resolve().parent.parent
LOCAL_IMPORTS_ALLOWED = {f"{PACKAGE}.apps"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


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


def check(root: Path = ROOT) -> list[str]:
    """The problems found in ``root``'s turbo_async package, as printable lines."""
    paths = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for path in paths:
        current = module_name(path, root)
        edges = graph.setdefault(current, set())
        for target, line, in_function in imports(path, root, modules):
            if path.name == "__init__.py" and target.startswith(current + "."):
                continue  # a package's __init__ re-exporting its own submodules
            if target == PACKAGE and current != PACKAGE:
                problems.append(f"{path.relative_to(root)}:{line}: imports the package {PACKAGE} itself; "
                                "import the module that defines the name")
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
    print(f"No import cycle in {PACKAGE}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
