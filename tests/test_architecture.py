"""The code's structure: one dependency direction (import-linter contracts in pyproject.toml), no import
cycles between modules (imports inside functions included), and no reference to files the repository
does not have."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold() -> None:
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, no_cache=True))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's algorithm, iterative (the import graph is deep enough to hit Python's recursion limit)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    result: List[List[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def test_no_import_cycles() -> None:
    g = grimp.build_graph("segret_zoo")
    modules = sorted(m for m in g.modules if m.startswith("segret_zoo"))
    graph = {m: {i for i in g.find_modules_directly_imported_by(m) if i.startswith("segret_zoo")} for m in modules}
    # a package's __init__ re-exporting its own submodules is not a cycle between jobs
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not t.startswith(m + ".")}
    cycles = _strongly_connected(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_cycle_finder_finds_a_cycle() -> None:
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", ["segret_zoo", "tests", "benchmarks", "docs", "weights", "."])
def test_no_citation_of_files_outside_the_repository(folder: str) -> None:
    """Every Markdown file the code or docs cite by its upper-case name exists in the repository."""
    root = REPO / folder
    files = [root / n for n in ("README.md", "MODEL_CARD.md", "hubconf.py")] if folder == "." else [
        p for p in root.rglob("*") if p.suffix in (".py", ".md", ".txt", ".json") and p.is_file()]
    known = {p.name for p in REPO.rglob("*.md") if ".git" not in p.parts}
    pattern = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")
    missing = []
    for path in files:
        if not path.is_file():
            continue
        for name in pattern.findall(path.read_text(encoding="utf-8", errors="replace")):
            if name not in known:
                missing.append(f"{path.relative_to(REPO)} cites {name}")
    assert not missing, missing
