"""The house's rules, checked on the import graph of harness/ (function-local imports count: an
import moved into a function to dodge a cycle is the same cycle).

* No import cycle between harness modules.
* Each folder imports only itself and the folders above it in :data:`LAYERS`; the contract at the
  top imports nothing of harness.
* Reporting never reaches the trainer, not even through another module.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent

#: Top to bottom: a module may import its own folder and the folders listed before it.
LAYERS = ("contract", "config", "cluster", "trial", "tasks", "strategies", "reporting", "driver", "simulate", "cli")
#: (importer folder, folder it must never reach, directly or through other modules)
NEVER_REACHES = (("reporting", "trial"), ("contract", "config"), ("simulate", "trial"))


def module_name(package_root: Path, path: Path) -> str:
    parts = path.relative_to(package_root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its body. Importing ``a.b.c`` also
    runs ``a`` and ``a.b``, so those count as imported too, except the packages the importer
    itself lives in (they are running already when it is imported)."""
    package = package_root.name
    files = {module_name(package_root, p): p for p in package_root.rglob("*.py")}

    def resolve(name: str) -> list[str]:
        found = [name] if name in files else []
        parts = name.split(".")
        found += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in files]
        return found

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == package:
                        targets.update(resolve(alias.name))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != package:
                    continue
                targets.update(resolve(node.module))
                for alias in node.names:  # ``from harness.x import y`` where y is a module
                    targets.update(t for t in resolve(f"{node.module}.{alias.name}") if t.count(".") > node.module.count("."))
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        graph[module] = targets - own - {module}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def violations(package_root: Path) -> list[str]:
    graph = import_graph(package_root)
    problems = []
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        problems.append("import cycle: " + " -> ".join(exc.args[1]))
    order = {name: i for i, name in enumerate(LAYERS)}
    for module, targets in sorted(graph.items()):
        own = layer(module)
        if own not in order:
            continue
        for target in sorted(targets):
            other = layer(target)
            if other in order and order[other] > order[own]:
                problems.append(f"{module} imports {target}: {own}/ may import only {', '.join(LAYERS[:order[own] + 1])}")
    for source, forbidden in NEVER_REACHES:
        for module in sorted(m for m in graph if layer(m) == source):
            bad = sorted(t for t in reachable(graph, module) if layer(t) == forbidden)
            if bad:
                problems.append(f"{module} reaches {forbidden}/ ({', '.join(bad)})")
    return problems


def test_the_harness_has_no_cycle_and_every_import_goes_up_the_house():
    assert violations(ROOT / "harness") == []


def test_every_module_lives_in_a_known_folder():
    graph = import_graph(ROOT / "harness")
    strays = sorted(m for m in graph if layer(m) not in (*LAYERS, "__main__") and m != "harness")
    assert strays == [], f"modules outside {LAYERS}: {strays}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "harness"
    for name, body in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    for folder in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return pkg


def test_a_reporting_module_that_imports_the_trainer_fails(tmp_path):
    pkg = _tree(tmp_path, {"trial/segment.py": "", "reporting/tables.py": "def f():\n    from harness.trial import segment\n"})
    assert violations(pkg) == ["harness.reporting.tables reaches trial/ (harness.trial, harness.trial.segment)"]


def test_reaching_the_trainer_through_another_module_fails_too(tmp_path):
    pkg = _tree(tmp_path, {"trial/segment.py": "", "strategies/adapter.py": "import harness.trial.segment\n",
                           "reporting/tables.py": "from harness.strategies import adapter\n"})
    assert any(p.startswith("harness.reporting.tables reaches trial/") for p in violations(pkg))


def test_a_cycle_hidden_in_a_function_local_import_fails(tmp_path):
    pkg = _tree(tmp_path, {"trial/data.py": "from harness.trial import prepare\n",
                           "trial/prepare.py": "def fetch():\n    from harness.trial.data import load\n"})
    (problem,) = violations(pkg)
    assert problem.startswith("import cycle: ") and "harness.trial.data" in problem and "harness.trial.prepare" in problem


def test_an_import_down_the_house_fails(tmp_path):
    pkg = _tree(tmp_path, {"contract/record.py": "from harness.config import settings\n", "config/settings.py": ""})
    assert "harness.contract.record imports harness.config.settings: contract/ may import only contract" in violations(pkg)
