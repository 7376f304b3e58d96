"""Every module that the package, its tests or its benchmarks import is provided by an install step.

A package installed by hand on a developer's machine (OpenCV once) let the suite pass there and
fail at collection on a fresh clone. This test reads the import statements and checks each
top-level module against the standard library, the project's own modules, and the distributions
that ``pip install -e ".[test]"`` (or a declared extra) brings.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("swiftdet", "tests", "benchmarks")


def _imported_modules() -> dict[str, str]:
    """Top-level module name -> one file that imports it (absolute imports only)."""
    found: dict[str, str] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _local_modules() -> set[str]:
    """The project's own importable names: the package and the scripts beside the tests/benchmarks."""
    local = {"swiftdet"}
    for folder in SOURCE_DIRS[1:]:
        local |= {p.stem for p in (ROOT / folder).glob("*.py")}
    return local


def _declared_distributions() -> set[str]:
    """Distributions named by swiftdet's install metadata: dependencies and every extra."""
    names = set()
    for requirement in md.requires("swiftdet") or []:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        if match:
            names.add(_normalise(match.group(0)))
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _provided_modules(declared: set[str]) -> set[str]:
    """Top-level modules installed by the declared distributions and by what they depend on."""
    closure, todo = set(), list(declared)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # an optional extra not installed here
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
            if match:
                todo.append(_normalise(match.group(0)))
    modules = set()
    for module, dists in md.packages_distributions().items():
        if any(_normalise(d) in closure for d in dists):
            modules.add(module)
    return modules


def test_every_import_is_provided_by_the_install():
    declared = _declared_distributions()
    assert {"torch", "torchvision", "pytest"} <= declared, "swiftdet must be installed (pip install -e '.[test]')"
    allowed = set(sys.stdlib_module_names) | _local_modules() | _provided_modules(declared)
    missing = {module: where for module, where in _imported_modules().items() if module not in allowed}
    assert not missing, (
        "imported but provided by no install step of pyproject.toml (add the distribution to the dependencies "
        f"or an extra): {missing}"
    )
