"""The shape of the code: the module graph, read from the source, has no cycle and only goes down the layers, and
docs/architecture.md names every module.

Every `import` counts, the ones inside functions too (a lazy import is still an arrow between two modules).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ncshared", "ncflow", "analysis")
# Bottom to top. A module may import its own layer's modules and any layer below, never one above.
LAYERS = ("ncshared", "ncflow", "ncflow.collapse", "ncflow.engine", "ncflow.record", "ncflow.tracked", "ncflow.library",
          "ncflow.grokking", "ncflow.sweeps", "ncflow.cli")
# The one arrow from training to the analysis: `ncflow reproduce` writes the paper's report.
ANALYSIS_CALLERS = ("ncflow.cli.reproduction_report",)


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its source (`from P import m` counts as P.m when m is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in targets if target in known and target != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int:
    return max(index for index, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + "."))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_reads_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("")
    source = package / "high.py"
    source.write_text("def f():\n    from . import low\n")
    assert imported_modules("pkg.high", source, {"pkg", "pkg.low", "pkg.high"}) == {"pkg.low"}


def test_no_import_cycle_anywhere():
    assert find_cycle(import_graph()) is None


def test_imports_only_go_down_the_layers():
    upward = [
        f"{module} → {target}"
        for module, targets in import_graph().items() if module.split(".")[0] != "analysis"
        for target in targets if target.split(".")[0] != "analysis" and layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_the_analysis_imports_only_the_shared_layer_and_training_calls_it_from_one_place():
    graph = import_graph()
    for module, targets in graph.items():
        roots = {target.split(".")[0] for target in targets}
        if module.startswith("analysis"):
            assert roots <= {"analysis", "ncshared"}, module
        elif module.startswith("ncshared"):
            assert roots <= {"ncshared"}, module
        elif module not in ANALYSIS_CALLERS:
            assert "analysis" not in roots, module


@pytest.mark.parametrize("package", ["ncshared", "analysis"])
def test_the_shared_layer_and_the_analysis_never_import_torch(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {name for name in names if name.split(".")[0] == "torch"}, path


def test_architecture_doc_names_every_module_tool_and_benchmark():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([\w/.]+\.(?:py|sh))`", text))
    expected = {path.relative_to(ROOT).as_posix() for path in module_files().values()
                if path.name != "__init__.py" or path.stat().st_size > 400}  # a package's docstring: its heading says it
    expected |= {path.relative_to(ROOT).as_posix() for folder in ("tools", "benchmarks")
                 for path in (ROOT / folder).iterdir() if path.suffix in (".py", ".sh")}
    assert sorted(expected - named) == []
    assert sorted(name for name in named - expected if not (ROOT / name).exists()) == []  # nothing stale
