"""The shape of the package (issue #15): no import circle anywhere in ``src/inspectkit``,
function-level imports included, and each command-line module short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "inspectkit"


def _modules(root: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: dict
) -> list[str]:
    """The package modules an import statement loads (``from pkg import name`` loads
    ``pkg.name`` when that is a module, else ``pkg``)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            parent = ".".join(base + ([node.module] if node.module else []))
        else:
            parent = node.module or ""
        names = [
            f"{parent}.{a.name}" if f"{parent}.{a.name}" in known else parent for a in node.names
        ]
    out = []
    for name in names:
        if name.split(".")[0] != PACKAGE:
            continue
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known and name != module:
            out.append(name)
    return out


def import_graph(root: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module → the package modules it imports, at module level or inside functions
    (``if TYPE_CHECKING:`` blocks do not run and are left out)."""
    known = _modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, module: str = module, is_package: bool = is_package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    graph[module].update(_targets(module, is_package, child, known))
                elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    visit(ast.Module(body=child.orelse, type_ignores=[]))
                else:
                    visit(child)

        visit(ast.parse(path.read_text(encoding="utf-8")))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
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


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from inspectkit.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from inspectkit import a\n"
    )
    assert circles(import_graph(tmp_path)) == [["inspectkit.a", "inspectkit.sub.b"]]


def test_no_import_circle_in_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 100 and "inspectkit.cli.main" in graph
    assert "inspectkit.xai.base" in graph["inspectkit.xai.gradcam"] or any(
        m.startswith("inspectkit.xai") for m in graph["inspectkit.xai.gradcam"]
    )
    assert circles(graph) == []


@pytest.mark.parametrize("path", sorted((SRC / PACKAGE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_each_command_line_module_is_under_300_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines < 300, f"{path.name}: {lines} lines"
