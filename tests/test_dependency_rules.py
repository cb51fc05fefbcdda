"""The layout's dependency rules, read from the source (AST), every import counted, also those inside functions:
``common`` imports none of our packages; producers and workers never import each other; nothing outside the bench
package imports it; no two modules import each other, directly or around a longer loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNTIME = ("common", "producers", "workers", "model", "vigil_results", "vigil_ops")
BENCH = "vigil_bench"
OURS = (*RUNTIME, BENCH)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (``from a.b import c`` counts as ``a.b``, or ``a.b.c`` where that
    is a module)."""
    files = {module_name(root, p): p for pkg in OURS if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}
        graph[name] = {m for m in found if m.split(".")[0] in OURS and m != name}
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def rule_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            pair = (_top(module), _top(dep))
            if pair[0] == "common" and pair[1] != "common":
                out.append(f"{module} imports {dep}: common imports none of our other packages")
            elif pair in (("producers", "workers"), ("workers", "producers")):
                out.append(f"{module} imports {dep}: producers and workers never import each other")
            elif pair[1] == BENCH and pair[0] != BENCH:
                out.append(f"{module} imports {dep}: nothing outside {BENCH} imports it")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_repository_keeps_the_dependency_rules() -> None:
    assert rule_violations(imports_of(REPO)) == []


def test_the_repository_has_no_import_cycle() -> None:
    assert cycles(imports_of(REPO)) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in OURS:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize(("files", "rule"), [
    ({"common/cli.py": "def f():\n    from workers.pool import Pool\n"}, "common imports none"),
    ({"producers/cli.py": "import workers.writer\n", "workers/writer.py": ""}, "never import each other"),
    ({"workers/pool.py": "from producers.files import producer\n", "producers/files/producer.py": ""},
     "never import each other"),
    ({"vigil_results/cli.py": "from vigil_bench.runner import PipelineRun\n"}, "nothing outside vigil_bench"),
])
def test_a_planted_violation_is_reported(tmp_path: Path, files: dict[str, str], rule: str) -> None:
    [violation] = rule_violations(imports_of(_tree(tmp_path, files)))
    assert rule in violation


def test_a_planted_cycle_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"vigil_bench/a.py": "from vigil_bench.b import x\n",
                            "vigil_bench/b.py": "def f():\n    from vigil_bench.c import y\n",
                            "vigil_bench/c.py": "import vigil_bench.a\n"})
    assert cycles(imports_of(root)) == [["vigil_bench.a", "vigil_bench.b", "vigil_bench.c"]]
