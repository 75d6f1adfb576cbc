"""The layering of the packages (docs/architecture.md), read from the source with ``ast``.

::

    gatewaysite            configuration: may import anything
    gateway_node, console  the runtime and the operator console: the apps and the base
    monitoring             a reader of both apps' models (and of webhooks' endpoints)
    webhooks               endpoints, outbox and sender: reads both apps, beneath the runtime
    sessions_app, push_app the two apps: neither imports the other
    gateway_core           the shared base: imports no project package

Every ``import`` and ``from ... import`` counts, at any depth (inside functions and
``TYPE_CHECKING`` blocks too), in every project Python file outside tests/, bench/ and
migrations.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway_core", "sessions_app", "push_app", "webhooks", "monitoring", "console",
            "gateway_node", "gatewaysite")
SKIPPED_DIRS = {"tests", "bench", "migrations", ".venv", "node_modules", "static"}

#: What each package must never import.
FORBIDDEN: dict[str, set[str]] = {
    "gateway_core": {"sessions_app", "push_app", "webhooks", "monitoring", "console",
                     "gateway_node", "gatewaysite"},
    "sessions_app": {"push_app", "webhooks", "monitoring", "console", "gateway_node",
                     "gatewaysite"},
    "push_app": {"sessions_app", "webhooks", "monitoring", "console", "gateway_node",
                 "gatewaysite"},
    "webhooks": {"monitoring", "console", "gateway_node", "gatewaysite"},
    "monitoring": {"console", "gateway_node", "gatewaysite"},
    "console": {"gateway_node", "gatewaysite"},
    "gateway_node": {"gatewaysite"},
}

Graph = Mapping[str, Mapping[str, list[str]]]


def project_files(root: Path = ROOT) -> Iterable[Path]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in SKIPPED_DIRS or part.startswith(".") for part in parts[:-1]):
            continue
        yield path


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            # ``from pkg import module``: the module is what is imported.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_of(module_or_path: str) -> str | None:
    top = module_or_path.split(".")[0]
    return top if top in PACKAGES else None


def import_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """package -> imported project package -> the files that import it."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for path in project_files(root):
        source = path.relative_to(root)
        importer = package_of(source.parts[0]) if len(source.parts) > 1 else None
        if importer is None:
            continue  # manage.py, scripts/: entry points, not layers
        for module in imported_modules(path):
            imported = package_of(module)
            if imported is not None and imported != importer:
                files = graph[importer].setdefault(imported, [])
                if str(source) not in files:
                    files.append(str(source))
    return graph


def layering_violations(graph: Graph) -> list[str]:
    return [
        f"{importer} imports {imported} ({', '.join(files)})"
        for importer, targets in graph.items()
        for imported, files in sorted(targets.items())
        if imported in FORBIDDEN.get(importer, set())
    ]


def cycles(graph: Graph) -> list[list[str]]:
    """The package cycles of ``graph`` (each once, as a path back to its start)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, {})):
            if nxt == start:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    found.append([*path, start])
            elif nxt not in path and nxt > start:  # each cycle from its smallest member
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_every_package_is_read():
    graph = import_graph()
    counts = {p: sum(1 for f in project_files() if f.relative_to(ROOT).parts[0] == p)
              for p in PACKAGES}
    assert all(counts.values()), counts
    # Not vacuous: the layers above do import the layers below.
    assert "gateway_core" in graph["sessions_app"] and "gateway_core" in graph["push_app"]
    assert {"sessions_app", "push_app", "webhooks"} <= set(graph["gateway_node"])
    assert {"sessions_app", "push_app"} <= set(graph["webhooks"])


def test_the_layering_holds():
    assert layering_violations(import_graph()) == []


def test_no_cycle_between_packages():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(("graph", "expected"), [
    ({"push_app": {"sessions_app": ["push_app/delivery.py"]}},
     ["push_app imports sessions_app (push_app/delivery.py)"]),
    ({"gateway_core": {"gatewaysite": ["gateway_core/x.py"]}},
     ["gateway_core imports gatewaysite (gateway_core/x.py)"]),
    ({"gatewaysite": {"gateway_node": ["gatewaysite/asgi.py"]}}, []),
])
def test_the_check_sees_a_violation(graph, expected):
    assert layering_violations(graph) == expected


def test_the_check_sees_a_cycle():
    graph = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
