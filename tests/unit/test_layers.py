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
BASE = {"numahook", "errors", "records", "log", "faults", "config", "ini"}

#: layer -> the layers it may import besides itself and BASE (docs/architecture.md)
ALLOWED = {
    "xml": set(),
    "core": {"xml"},
    "host": {"xml", "core"},
    # the registry of what a domain changes on the host; its entries are journalled in
    # claims, so state sits above it
    "tunables": {"xml", "core", "host"},
    "state": {"xml", "core", "host", "tunables"},
    "node": {"xml", "core", "host", "tunables"},
    "ops": {"xml", "core", "host", "tunables", "state"},
    "hook": {"xml", "core", "host", "tunables", "state", "ops"},
    # the daemon borrows cli.epilog for its --help only (one text for both shells)
    "daemon": {"xml", "core", "host", "tunables", "state", "node", "ops", "cli"},
    "cli": {"xml", "core", "host", "tunables", "state", "node", "ops"},
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


# --------------------------------------------------------------------------- circles

def module_edges(path: Path, package: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that the module at ``path`` (in ``package``) imports.

    Sharper than :func:`imports`, which is enough for layers: ``from numahook.core import
    plan`` is an edge to ``numahook.core.plan``, not to the package, and relative imports
    resolve. Every import counts, those under ``if TYPE_CHECKING:`` and lazy ones inside
    functions too. A lazy import does not fail at import time, but it is still a
    dependency: a circle through one means the two modules cannot be understood, tested
    or moved apart, and the lazy import usually hides a record in the wrong module (as
    ``DeviceReport`` was in core/placement.py). There is none today, so none is exempt.
    """
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    out.add(f"{base}.{a.name}")
                elif base in known:
                    out.add(base)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle of ``graph`` as a path that starts and ends at one module: one
    per strongly connected component (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1 or v in graph.get(v, ()):
                    found.append(_cycle_through(v, component, graph))
    return found


def _cycle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """One path from ``start`` back to itself inside ``component`` (breadth first, so the
    shortest), for a failure message a reader can follow."""
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if v != start else [start, start]
            if w in component and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def test_no_import_circle_within_numahook() -> None:
    mods = dict(modules())
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = module_edges(path, package, known) - {name}
    found = circles(graph)
    assert found == [], "import circles: " + "; ".join(" -> ".join(c) for c in found) + \
        " (move the shared records down, e.g. into core/plan.py; docs/architecture.md)"


def test_the_circle_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The check above is only as good as its edges: a TYPE_CHECKING import, a lazy one,
    ``from package import module`` and a relative import each make an edge, and a circle
    through any of them is reported."""
    src = {
        "a": "from p import b\n",
        "b": "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from p.c import X\n",
        "c": "def f():\n    from . import d\n",
        "d": "from .a import thing\n",
        "e": "import p.a\n",
    }
    known = {"p", *(f"p.{m}" for m in src)}
    graph = {}
    for m, text in src.items():
        (tmp_path / f"{m}.py").write_text(text)
        graph[f"p.{m}"] = module_edges(tmp_path / f"{m}.py", "p", known)
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.d"}, "p.d": {"p.a"},
                     "p.e": {"p.a"}}
    assert circles(graph) == [["p.a", "p.b", "p.c", "p.d", "p.a"]]
    assert circles({"x": {"x"}, "y": set()}) == [["x", "x"]]
    assert circles({"x": {"y"}, "y": set()}) == []


# --------------------------------------------------------------------------- the maps

#: the packages whose modules the README's map lists one by one (the shells' modules are in
#: docs/architecture.md only)
README_LISTS_MODULES = {"xml", "core", "host", "state", "node", "ops"}


def _map(doc: Path, first: str) -> dict[str, str]:
    """The tree drawn in ``doc``'s fenced block that starts with ``first``: each entry (a
    line indented at most two columns) -> its text with its continuation lines."""
    blocks = doc.read_text().split("```")[1::2]
    (block,) = [b for b in blocks if b.lstrip("\n").startswith(first)]
    entries: dict[str, str] = {}
    key = ""
    for line in block.strip("\n").splitlines():
        if len(line) - len(line.lstrip()) <= 2:
            key = line.split()[0].rstrip(",")
            entries[key] = line
        else:
            entries[key] += "\n" + line
    return entries


def _words(text: str) -> set[str]:
    return {w.strip(",.:;()") for w in text.split()}


def _layout() -> dict[str, list[str]]:
    """package -> its modules (without .py and __init__); "" -> the root's modules."""
    out = {"": sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")}
    for pkg in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        out[pkg.name] = sorted(p.stem for p in pkg.glob("*.py") if p.stem != "__init__")
    return out


def test_docs_architecture_names_every_module_in_its_package() -> None:
    entries = _map(REPO / "docs" / "architecture.md", "numahook/")
    everything = "\n".join(entries.values())
    for pkg, mods in _layout().items():
        if not pkg:
            missing = [m for m in mods if f"{m}.py" not in _words(everything)]
        else:
            assert f"{pkg}/" in entries, f"docs/architecture.md's tree has no {pkg}/"
            words = _words(entries[f"{pkg}/"])
            missing = [m for m in mods if m not in words and f"{m}.py" not in words]
        assert missing == [], f"docs/architecture.md's tree lacks {pkg or 'root'}: {missing}"


def test_readme_map_matches_the_tree() -> None:
    entries = _map(REPO / "README.md", "numahook/ ")
    words = _words("\n".join(entries.values()))
    tracked = _tracked_top_level()
    missing = [d for d in tracked if f"{d}/" not in words and d not in words]
    assert missing == [], f"the README's map (Development) does not name {missing}"
    layout = _layout()
    for pkg, mods in layout.items():
        if not pkg:
            absent = [m for m in mods if f"{m}.py" not in words]
            assert absent == [], f"the README's map lacks numahook/{absent}"
            continue
        assert f"{pkg}/" in words, f"the README's map lacks numahook/{pkg}/"
        if pkg in README_LISTS_MODULES:
            listed = _words(entries[f"{pkg}/"])
            absent = [m for m in mods if m not in listed]
            assert absent == [], f"the README's map of numahook/{pkg}/ lacks {absent}"
    tests = _words(entries["tests/"])
    subdirs = sorted(p.name for p in (REPO / "tests").iterdir()
                     if p.is_dir() and p.name != "__pycache__")
    absent = [d for d in subdirs if f"{d}/" not in tests]
    assert absent == [], f"the README's map of tests/ lacks {absent}"


def _tracked_top_level() -> list[str]:
    """The repository's top-level directories (hidden ones aside) and setup files."""
    built = ("dist", "build", "__pycache__")  # what builds leave in a checkout
    dirs = [p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")
            and p.name not in built and not p.name.endswith(".egg-info")]
    return sorted([*dirs, "setup.cfg", "setup.py", "LICENSE"])
