"""The layout of rstream, read from the source: the import graph (imports inside functions
included) runs one way, the submission side stays free of torch, only the commands that start
worker code import the worker; the three folders install as ``rstream.*`` and nothing imports
them by their folder names; no folder is crowded; test files have names of their own."""

from __future__ import annotations

import ast
import re
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "producer", "worker")
HEAVY = ("torch", "torchvision", "PIL", "numpy", "safetensors", "onnxruntime")
MOST_MODULES = 12  # in one folder


def _module_name(path: Path) -> str:
    """``producer/cli/jobs.py`` -> ``rstream.producer.cli.jobs``: the installed name."""
    dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    return f"rstream.{dotted}"


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


def _wing(module: str) -> str:
    """``rstream.producer.cli`` -> ``producer``; a third-party module -> its top name."""
    parts = module.split(".")
    return parts[1] if parts[0] == "rstream" else parts[0]


def test_the_graph_was_read() -> None:
    assert "rstream.shared.storage" in GRAPH["rstream.shared.jobs.results"]
    assert "rstream.shared.storage.s3" in GRAPH["rstream.shared.storage.router"], \
        "lazy imports inside functions count too"
    assert any(t.startswith("torch") for t in GRAPH["rstream.worker.model.predict"])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _wing(m) in ("shared", "producer")))
def test_the_submission_side_imports_no_torch_pil_or_numpy(module: str) -> None:
    # The API's thumbnails re-encode images with Pillow (the api extra), in that module only.
    allowed = {"PIL"} if module == "rstream.producer.api.images.thumbnail" else set()
    heavy = sorted(t for t in GRAPH[module] if t.split(".")[0] in HEAVY
                   and t.split(".")[0] not in allowed)
    assert heavy == [], f"{module} imports {heavy}"


def test_shared_imports_neither_side() -> None:
    wrong = {m: sorted(t for t in targets if _wing(t) in ("producer", "worker"))
             for m, targets in GRAPH.items() if _wing(m) == "shared"}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_only_the_worker_commands_import_the_worker() -> None:
    importers = sorted(m for m, targets in GRAPH.items() if _wing(m) == "producer"
                       and any(_wing(t) == "worker" for t in targets))
    assert importers == ["rstream.producer.cli.worker"]


def test_serving_reaches_the_fine_tune_wing_only_through_its_task() -> None:
    # worker.tasks starts a fine-tune lazily, inside the task; nothing else in serving may.
    importers = sorted(m for m, targets in GRAPH.items()
                       if not m.startswith("rstream.worker.finetune")
                       and any(t.startswith("rstream.worker.finetune") for t in targets))
    assert importers == ["rstream.worker.tasks"]


def _python_files() -> list[Path]:
    return sorted(p for top in (*PACKAGES, "tests", "bench", "scripts")
                  for p in (ROOT / top).rglob("*.py"))


# ``import shared``, ``from worker.x import y``, or the same inside a string (a patch target, a
# Celery app path such as "worker.app"): each would load a second copy of a module.
_IMPORT = re.compile(r"(?<![\w.])(?:import|from) (?:shared|producer|worker)(?:\.|\s)")
_IN_STRING = re.compile(r"[\"'](shared|producer|worker)\.([a-z_]+)")


def _names_a_folder(line: str) -> bool:
    """Whether ``line`` imports, or names in a string, a module by its folder name."""
    if _IMPORT.search(line):
        return True
    return any((ROOT / pkg / f"{name}.py").exists() or (ROOT / pkg / name).is_dir()
               for pkg, name in _IN_STRING.findall(line))


def test_nothing_imports_a_folder_by_its_folder_name() -> None:
    this = Path(__file__).resolve()
    wrong = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in _python_files() if path != this
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if _names_a_folder(line)]
    assert wrong == [], "import rstream.shared..., rstream.worker..., rstream.producer..."


def test_the_folder_name_check_sees_each_form() -> None:
    for line in ("import shared.settings", "from worker.app import app", "from producer import x",
                 'app = "worker.app"', "monkeypatch.setattr('shared.jobs.store.time', t)"):
        assert _names_a_folder(line), line
    for line in ("from rstream.shared import settings", "the worker.app module", "x = worker.y",
                 'log = "worker.log"', 'app = "rstream.worker.app"'):
        assert not _names_a_folder(line), line


def test_pyproject_installs_every_package_under_rstream() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = sorted(_module_name(init.parent / "x.py").rsplit(".", 1)[0]
                     for pkg in PACKAGES for init in (ROOT / pkg).rglob("__init__.py"))
    assert sorted(setuptools["packages"]) == on_disk
    assert setuptools["package-dir"] == {f"rstream.{pkg}": pkg for pkg in PACKAGES}


def test_no_folder_holds_more_than_about_twelve_modules() -> None:
    crowded = {}
    for pkg in PACKAGES:
        for folder in [ROOT / pkg, *(d for d in (ROOT / pkg).rglob("*") if d.is_dir())]:
            modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            if len(modules) > MOST_MODULES:
                crowded[str(folder.relative_to(ROOT))] = len(modules)
    assert crowded == {}


def test_no_two_test_files_share_a_name() -> None:
    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []


def test_every_marker_is_declared_and_every_declared_marker_is_used() -> None:
    declared = {line.split(":")[0] for line in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]}
    builtin = {"parametrize", "usefixtures", "skipif", "skip", "xfail", "filterwarnings",
               "timeout"}
    used = {m for p in (ROOT / "tests").rglob("*.py")
            for m in re.findall(r"mark\.([a-z_]+)", p.read_text())} - builtin
    assert used <= declared, f"undeclared: {sorted(used - declared)}"
    assert declared <= used, f"declared, never used: {sorted(declared - used)}"


def test_the_checkout_imports_as_rstream_without_an_install(tmp_path: Path) -> None:
    # scripts/checkout-path.sh is what a GPU machine without pip (and mypy) use; -S leaves
    # out site-packages, so neither an installed nor the editable copy can answer.
    import subprocess
    import sys

    path = subprocess.run(["bash", str(ROOT / "scripts" / "checkout-path.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()
    result = subprocess.run([sys.executable, "-S", "-c", "import rstream.shared.names as s; "
                             "print(s.__file__)"], cwd=tmp_path, env={"PYTHONPATH": path},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(path)
