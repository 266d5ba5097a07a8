"""The dependency direction, read from the source with `ast` (nothing is imported to check it).

    stackspec  <-  infra, localstack, policies, tests        (stackspec: the settings contract, a leaf)
    app.gateway                                              (a leaf of its own)

stackspec imports nothing of ours but `app.gateway.settings` (the gateway's settings class is the contract
for its runtime config); the gateway imports nothing of ours; no cycle between top-level packages.
"""

from __future__ import annotations

import ast
import functools
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".venv-vllm", "build", ".git", "node_modules"}
# `app` is only a namespace: its two parts are packages of their own.
SPLIT = {"app": ("app.gateway", "app.inference")}
LEAF = "stackspec"
LEAF_MAY_IMPORT = {"app.gateway.settings"}


def python_files() -> Iterator[Path]:
    # A walk that never enters SKIP: build/ alone can hold Debian root filesystems (make images).
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP]
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    yield from sorted(found)


def packages() -> set[str]:
    found = {p.parent.name for p in REPO.glob("*/__init__.py")}
    for parent, parts in SPLIT.items():
        if parent in found:
            found = (found - {parent}) | set(parts)
    return found


def module_of(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def package_of(module: str, known: set[str]) -> str | None:
    for name in sorted(known, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    if module in SPLIT:
        return module
    return None


@functools.cache  # the tree does not change during a run; each test below reads the same graph
def graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    """Top-level package -> the packages it imports, and (from, to) -> the offending `file: module` lines."""
    known = packages()
    edges: dict[str, set[str]] = {p: set() for p in known}
    where: dict[tuple[str, str], list[str]] = {}
    for path in python_files():
        source = package_of(module_of(path), known)
        if source is None:
            continue
        for module in imported_modules(path):
            target = package_of(module, known)
            if target is None or target == source:
                continue
            edges[source].add(target)
            where.setdefault((source, target), []).append(f"{path.relative_to(REPO)}: {module}")
    return edges, where


def leaf_imports() -> list[str]:
    """What stackspec imports of ours beyond the allowed gateway settings module."""
    known = packages()
    bad = []
    for path in python_files():
        if package_of(module_of(path), known) != LEAF:
            continue
        for module in imported_modules(path):
            target = package_of(module, known)
            if target in (None, LEAF):
                continue
            if not any(module == ok or module.startswith(ok + ".") for ok in LEAF_MAY_IMPORT):
                # `from app.gateway.settings import X` also yields `app.gateway.settings.X`: allowed above.
                bad.append(f"{path.relative_to(REPO)}: {module}")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycle = [*path[path.index(nxt):], nxt]
                if sorted(cycle[:-1]) not in [sorted(c[:-1]) for c in found]:
                    found.append(cycle)
            else:
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_the_packages_are_what_the_readme_maps() -> None:
    assert {"stackspec", "infra", "app.gateway", "app.inference", "localstack", "policies", "tests",
            "verify"} <= packages()


def test_the_contract_imports_nothing_of_ours_but_the_gateway_settings() -> None:
    assert leaf_imports() == []
    edges, _ = graph()
    assert edges[LEAF] <= {"app.gateway"}


def test_the_gateway_imports_nothing_of_ours() -> None:
    edges, where = graph()
    assert edges["app.gateway"] == set(), {k: v for k, v in where.items() if k[0] == "app.gateway"}


def test_no_cycle_between_top_level_packages() -> None:
    edges, where = graph()
    found = cycles(edges)
    detail = {f"{a} -> {b}": where[(a, b)][:3] for c in found for a, b in itertools.pairwise(c)}
    assert found == [], detail


def test_dependencies_point_at_the_contract_never_from_it() -> None:
    edges, _ = graph()
    for package in ("infra", "localstack", "policies"):
        assert LEAF not in edges.get(package, set()) or package not in edges[LEAF]
    assert "policies" not in edges["infra"] or "infra" not in edges["policies"]
    assert edges["policies"] <= {LEAF}, edges["policies"]


def test_verify_reads_the_contract_and_the_local_stack_and_nothing_imports_it_but_tests() -> None:
    """`make verify` checks what a stack declared: it may read the contract (and find the local stack), never
    the Pulumi program (what runs must match the settings, not the program's own reading of them)."""
    edges, where = graph()
    assert edges["verify"] <= {LEAF, "localstack"}, {k: v for k, v in where.items() if k[0] == "verify"}
    assert [p for p, deps in edges.items() if "verify" in deps] in ([], ["tests"])


def test_the_checker_sees_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def print_graph() -> str:
    edges, _ = graph()
    return "\n".join(f"{p} -> {', '.join(sorted(d)) or '(nothing of ours)'}" for p, d in sorted(edges.items()))


if __name__ == "__main__":
    print(print_graph())
