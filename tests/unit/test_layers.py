"""The layers of docs/architecture.md, read from the source: who may import whom.

Static, like ruff: the imports are read with ast, nothing is imported. Lazy imports inside
functions count too, since they are dependencies all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "numahook"

#: modules at the package root that everything may use (and that use only each other)
BASE = {"numahook", "errors", "records", "log", "faults", "config"}

#: layer -> the layers it may import besides itself and BASE (docs/architecture.md)
ALLOWED = {
    "xml": set(),
    "core": {"xml"},
    "host": {"xml", "core"},
    "state": {"xml", "core", "host"},
    "node": {"xml", "core", "host"},
    "ops": {"xml", "core", "host", "state"},
    "hook": {"xml", "core", "host", "state", "ops"},
    # the daemon borrows cli.epilog for its --help only (one text for both shells)
    "daemon": {"xml", "core", "host", "state", "node", "ops", "cli"},
    "cli": {"xml", "core", "host", "state", "node", "ops"},
}
#: at most this many modules at the package root (the rest live in their layer)
MAX_ROOT_MODULES = 8
#: no module longer than this many lines
MAX_LINES = 400
#: known exceptions, each with its reason; the list only shrinks
OVER_LIMIT: dict[str, int] = {}


def layer_of(module: str) -> str:
    """``numahook.core.render`` -> ``core``; root modules name themselves, and names
    defined in numahook/__init__.py (``numahook.NAMESPACE``) are ``numahook``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "numahook"
    top = PACKAGE / parts[1]
    return parts[1] if top.is_dir() or top.with_suffix(".py").is_file() else "numahook"


def imports(path: Path) -> set[str]:
    """Every numahook module ``path`` imports, as dotted names."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "numahook")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "numahook":
            if node.module == "numahook":
                out.update(f"numahook.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return out


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append((".".join(parts), path))
    return out


def test_the_tree_has_the_layers_and_a_small_root() -> None:
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED) - {"cli"}


@pytest.mark.parametrize("module, path", modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_module_imports_only_its_own_layer_and_those_below(module: str, path: Path) -> None:
    mine = layer_of(module)
    allowed = BASE if mine in BASE else BASE | {mine} | ALLOWED[mine]
    bad = sorted(m for m in imports(path) if layer_of(m) not in allowed)
    assert not bad, f"{module} ({mine}) imports {bad}; see docs/architecture.md"


@pytest.mark.parametrize("module, path", modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_module_is_over_400_lines(module: str, path: Path) -> None:
    lines = len(path.read_text().splitlines())
    limit = OVER_LIMIT.get(module, MAX_LINES)
    assert lines <= limit, f"{module} has {lines} lines; split it along a seam"
    if module in OVER_LIMIT:
        assert lines > MAX_LINES, f"{module} is within {MAX_LINES} lines: drop its exception"
