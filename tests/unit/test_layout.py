"""The import graph of rstream's own packages, read from the source (imports inside functions
included): arrows run one way, the submission side stays free of torch, and only the commands
that start worker code import the worker."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "producer", "worker")
HEAVY = ("torch", "torchvision", "PIL", "numpy", "safetensors", "onnxruntime")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth, with relative imports resolved."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            # ``from pkg import mod`` imports a module when ``pkg.mod`` is one of ours.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = set()
        for target in _imports(path):
            if (target in files and target != name) or target.split(".")[0] in HEAVY:
                graph[name].add(target)
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_was_read() -> None:
    assert "shared.storage" in GRAPH["shared.results"]
    assert "shared.s3" in GRAPH["shared.storage"], "lazy imports inside functions count too"
    assert any(t.startswith("torch") for t in GRAPH["worker.predict"])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.split(".")[0] in
                                          ("shared", "producer")))
def test_the_submission_side_imports_no_torch_pil_or_numpy(module: str) -> None:
    heavy = sorted(t for t in GRAPH[module] if t.split(".")[0] in HEAVY)
    assert heavy == [], f"{module} imports {heavy}"


def test_shared_imports_neither_side() -> None:
    wrong = {m: sorted(t for t in targets if t.split(".")[0] in ("producer", "worker"))
             for m, targets in GRAPH.items() if m.startswith("shared")}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_only_the_worker_commands_import_the_worker() -> None:
    importers = sorted(m for m, targets in GRAPH.items() if m.startswith("producer")
                       and any(t.split(".")[0] == "worker" for t in targets))
    assert importers == ["producer.worker_commands"]


def test_serving_reaches_the_fine_tune_wing_only_through_its_task() -> None:
    # worker.tasks starts a fine-tune lazily, inside the task; nothing else in serving may.
    importers = sorted(m for m, targets in GRAPH.items()
                       if not m.startswith("worker.finetune")
                       and any(t.startswith("worker.finetune") for t in targets))
    assert importers == ["worker.tasks"]
