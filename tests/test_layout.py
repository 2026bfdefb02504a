"""The package layout stays honest: stages never import report/ or devtools/, core imports no
stage, no import cycle, no oversized module, each contract definition exists once.

Imports are found by walking every module's syntax tree (``ast``), including imports inside
functions, so a lazy import cannot hide a forbidden edge or a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import seglake
from seglake import registry
from seglake.core import contracts

PACKAGE_DIR = Path(seglake.__file__).resolve().parent
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The seglake module an imported name lives in (the longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def imports_of(module: str) -> set[str]:
    """The seglake modules ``module`` imports anywhere in its source."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import name`: name is a sub-module when one exists, else an attribute of pkg
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "seglake" or target.startswith("seglake."):
                resolved = _resolve(target)
                if resolved and resolved != module:
                    found.add(resolved)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _in(module: str, layer: str) -> bool:
    return module == f"seglake.{layer}" or module.startswith(f"seglake.{layer}.")


def test_the_walker_sees_known_imports():
    # guards the checks below against a walker that finds nothing
    assert "seglake.core.tables" in GRAPH["seglake.core.contracts"]
    assert "seglake.core.contracts" in GRAPH["seglake.stages.clean"]
    assert any(_in(m, "stages") for m in MODULES) and any(_in(m, "devtools") for m in MODULES)


def test_stages_never_import_report_or_devtools():
    bad = sorted((m, t) for m, targets in GRAPH.items() if _in(m, "stages")
                 for t in targets if _in(t, "report") or _in(t, "devtools"))
    assert bad == []


def test_core_imports_no_stage_report_or_devtools():
    bad = sorted((m, t) for m, targets in GRAPH.items() if _in(m, "core")
                 for t in targets if _in(t, "stages") or _in(t, "report") or _in(t, "devtools"))
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_no_module_over_the_size_limit():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("job", registry.PIPELINE + ("erase",))
def test_every_job_lives_under_stages(job):
    assert registry.JOBS[job].startswith("seglake.stages.")
    assert registry.JOBS[job] in MODULES


def _literal_assignments() -> dict[str, list[tuple[str, object]]]:
    """module -> [(name, value)] of every module-level tuple/list/str constant."""
    out: dict[str, list[tuple[str, object]]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                names = [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                         if isinstance(t, ast.Name)]
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                out.setdefault(module, []).extend((n, value) for n in names)
    return out


def test_contract_definitions_exist_once():
    contract_values = {
        "RAW_FIELDS": tuple(contracts.RAW_FIELDS),
        "IDENTIFIER_FIELDS": tuple(contracts.IDENTIFIER_FIELDS),
        "IDENTIFIER_COLUMNS": tuple(contracts.IDENTIFIER_COLUMNS),
        "IDENTIFIERS": tuple(contracts.IDENTIFIERS),
        "BRONZE_META_FIELDS": tuple(contracts.BRONZE_META_FIELDS),
    }
    copies = []
    for module, assigned in _literal_assignments().items():
        if module == "seglake.core.contracts":
            continue
        for name, value in assigned:
            if name in contract_values or name == "KNOWN_TABLES":
                copies.append((module, name))
            elif isinstance(value, (tuple, list)) and tuple(value) in contract_values.values():
                copies.append((module, name))
    assert copies == []


def test_known_tables_cover_every_table_name_constant():
    names = {v for k, v in vars(contracts).items() if k.isupper() and isinstance(v, str) and "." in v
             and v.split(".")[0] in contracts.LAYERS}
    assert names == set(contracts.KNOWN_TABLES)
    assert len(contracts.KNOWN_TABLES) == len(set(contracts.KNOWN_TABLES))
