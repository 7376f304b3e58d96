"""The layering of docs/architecture.md, enforced: each subpackage of swiftdet imports only the
subpackages below it (lazy imports inside functions and TYPE_CHECKING imports count too), and no
two modules import each other, directly or round a loop."""
from __future__ import annotations

import ast
from pathlib import Path

import swiftdet

PACKAGE = Path(swiftdet.__file__).resolve().parent

# What each part may import (besides itself). Kept in step with docs/architecture.md.
_BASE = {"errors", "utils"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "utils": {"errors"},
    "config": _BASE,
    "structures": _BASE,
    "data": _BASE | {"config", "structures"},
    "model": _BASE | {"config", "structures"},
    "evaluation": _BASE | {"structures"},
    "visualization": _BASE | {"structures"},
    "weights": _BASE | {"config", "model"},
    "engine": _BASE | {"config", "structures", "data", "model", "weights", "evaluation"},
    "inference": _BASE | {"config", "structures", "data", "model", "weights"},
    "export": _BASE | {"config", "structures", "data", "model", "weights", "inference"},
    "configs": _BASE | {"config"},
    "demo": _BASE | {"config", "configs", "structures", "data", "model", "weights", "evaluation", "engine",
                     "inference", "visualization"},
    "cli": set(),  # the top: anything (filled in below)
}
ALLOWED["cli"] = set(ALLOWED) - {"cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every swiftdet module ``path`` imports, absolute or relative, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "swiftdet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "swiftdet":
                continue
            found.add(base)
            # `from swiftdet.data import coco` imports the module swiftdet.data.coco.
            found |= {f"{base}.{a.name}" for a in node.names if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).exists()
                      or (PACKAGE.parent / (f"{base}.{a.name}".replace(".", "/") + ".py")).exists()}
    return found


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _all_modules() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_part_of_the_package_has_a_place_in_the_layers():
    parts = {_part(m) for m in _all_modules()} - {""}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to docs/architecture.md and ALLOWED"


def test_parts_import_only_the_parts_below_them():
    wrong = []
    for module, imported in _all_modules().items():
        part = _part(module)
        if not part:
            continue
        for target in imported:
            other = _part(target)
            if other and other != part and other not in ALLOWED[part]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    graph = _all_modules()
    # A package's __init__ re-exports its modules; an edge into a package stands for its __init__ only.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == node:
                continue
            if node.startswith(target + "."):
                continue  # a module importing its own package's __init__ (re-exports) is not a cycle
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
