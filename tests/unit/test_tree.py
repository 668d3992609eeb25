"""Rules about the source tree that no linter checks, read with ast like test_layers.

- No test module imports another test module. One that does runs the other's module-level
  code, and leans on helpers that read as that file's own, so a change to one test file
  breaks another. Shared helpers live in tests/support/, tests/fixtures/ or a conftest.py
  (docs/architecture.md).
- Every ``# type: ignore`` in numahook/ says why, on its line or the comment line above:
  mypy (pyproject.toml, warn_unused_ignores) proves each is still needed, not that it is
  right.
- Every Python script without a ``.py`` suffix is named in pyproject.toml for ruff and
  mypy, and in scripts/test for vermin: they find only ``*.py`` files by themselves, so a
  new script would go unchecked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def _is_test_module(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].startswith("test_")


def _module_file(dotted: str) -> Path | None:
    base = REPO.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package(path: Path) -> list[str]:
    """``tests/unit/node/x.py`` -> ["tests", "unit", "node"] (what ``from .`` means)."""
    return list(path.relative_to(REPO).parent.parts)


def imported_test_modules(path: Path, source: str | None = None) -> list[str]:
    """Each test module ``path`` imports, as ``line: dotted.name``; relative imports,
    ``from pkg import test_mod`` and ``importlib.import_module("...")`` included."""
    tree = ast.parse(source if source is not None else path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = _package(path)[:len(_package(path)) - (node.level - 1)]
                module = ".".join([*pkg, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names
                                if _is_test_module(a.name) and _module_file(f"{module}.{a.name}")]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            names = [node.args[0].value]
        found += [f"{node.lineno}: {n}" for n in names if _is_test_module(n)]
    return found


def _python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _python_files(),
                         ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_module_imports_a_test_module(path: Path) -> None:
    bad = imported_test_modules(path)
    assert bad == [], (f"{path.relative_to(REPO)} imports test modules {bad}; move what they "
                       "share to tests/support/ (or a conftest.py)")


def test_the_import_check_sees_every_form() -> None:
    """Without this, a checker that found nothing would pass every file above."""
    here = TESTS / "unit" / "node" / "test_x.py"
    hits = imported_test_modules(here, "\n".join([
        "from tests.unit.node.test_publish import capability",
        "import tests.unit.core.test_render",
        "from tests.unit.node import test_publish",
        "from .test_publish import capability",
        "from .. import test_layers",
        "import importlib; importlib.import_module('tests.unit.test_layers')",
        "def f():\n    from tests.unit.test_schemas import x",
    ]))
    assert [h.split(": ")[1] for h in hits] == [
        "tests.unit.node.test_publish", "tests.unit.core.test_render",
        "tests.unit.node.test_publish", "tests.unit.node.test_publish",
        "tests.unit.test_layers", "tests.unit.test_layers", "tests.unit.test_schemas"]
    assert imported_test_modules(here, "\n".join([
        "from tests.support.nodes import capability",
        "from tests.fixtures.hosts import host_roots",
        "from .conftest import FIGURES",
        "from tests.fixtures import hosts",
        "from tests.support.cli import domain as test_domain",
    ])) == []


def _ignores(path: Path) -> list[tuple[int, str, str]]:
    """(line number, the line, the line above its statement) of every ``# type: ignore``
    in ``path``; a statement over several lines has its reason above its first line."""
    text = path.read_text()
    lines = text.splitlines()
    starts = {}
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.stmt):
            for no in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                starts[no] = max(starts.get(no, 0), node.lineno)  # the innermost statement
    out = []
    for no, line in enumerate(lines, 1):
        if "# type: ignore" in line:
            first = starts.get(no, no)
            out.append((no, line, lines[first - 2] if first > 1 else ""))
    return out


def _justified(line: str, above: str) -> bool:
    after = line.split("# type: ignore", 1)[1]
    after = after.split("]", 1)[1] if after.startswith("[") else after
    return after.strip().startswith("#") or above.strip().startswith("#")


@pytest.mark.parametrize("path", sorted((REPO / "numahook").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_type_ignore_in_numahook_says_why(path: Path) -> None:
    bare = [f"{path.relative_to(REPO)}:{no}: {line.strip()}"
            for no, line, above in _ignores(path) if not _justified(line, above)]
    assert bare == [], "say why mypy is wrong here, on the line or the comment above: " + \
        "; ".join(bare)


def test_the_ignore_check_tells_a_reason_from_none() -> None:
    assert _justified("x = 1  # type: ignore[misc]  # mypy cannot see the metaclass", "")
    assert _justified("x = 1  # type: ignore[misc]", "    # the metaclass adds it")
    assert not _justified("x = 1  # type: ignore[misc]", "y = 2")
    assert not _justified("x = 1  # type: ignore", "")


def private_imports(path: Path, source: str | None = None) -> list[str]:
    """``line: module.name`` for each underscore name ``path`` imports from another numahook
    module: a private helper used elsewhere is an interface nobody declared."""
    tree = ast.parse(source if source is not None else path.read_text(), str(path))
    return [f"{node.lineno}: {node.module}.{a.name}" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and not node.level
            and (node.module or "").split(".")[0] == "numahook"
            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]


@pytest.mark.parametrize("path", sorted((REPO / "numahook").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_numahook_module_imports_another_ones_private_names(path: Path) -> None:
    bad = private_imports(path)
    assert bad == [], (f"{path.relative_to(REPO)} imports private names {bad}; make them "
                       "public (with a docstring saying who shares them) or move them")


def test_the_private_import_check_sees_them() -> None:
    here = REPO / "numahook" / "node" / "x.py"
    assert private_imports(here, "from numahook.node.publish import a, _b\n"
                                 "def f():\n    from numahook.core import _c\n") == [
        "1: numahook.node.publish._b", "3: numahook.core._c"]
    assert private_imports(here, "from numahook import __version__\n"
                                 "from os import _exit\nfrom numahook.x import y\n") == []


#: what a checkout or a source tarball holds besides its files (hidden directories aside)
_BUILT = {"build", "dist", "__pycache__"}


def python_scripts(root: Path) -> list[str]:
    """Files under ``root`` whose first line is a Python shebang and whose name does not
    end in ``.py``, relative to ``root``; hidden and build directories are skipped."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p.startswith(".") or p in _BUILT or p.endswith(".egg-info") for p in rel.parts) \
                or path.suffix == ".py" or not path.is_file():
            continue
        with path.open("rb") as fh:
            first = fh.readline(200)
        if first.startswith(b"#!") and b"python" in first:
            out.append(rel.as_posix())
    return out


def test_every_python_script_is_linted_and_type_checked() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the 3.9 run skips this test
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    scripts = python_scripts(REPO)
    assert "scripts/gen-man" in scripts, "the shebang search finds nothing"
    ruff = set(tool["ruff"].get("extend-include", []))
    mypy = set(tool["mypy"]["files"])
    assert [s for s in scripts if s not in ruff] == [], \
        "add these to [tool.ruff] extend-include in pyproject.toml"
    assert [s for s in scripts if s not in mypy] == [], \
        "add these to [tool.mypy] files in pyproject.toml"
    assert tool["mypy"].get("scripts_are_modules") is True, \
        "without scripts_are_modules, mypy takes every script for __main__ and stops"
    vermin = (REPO / "scripts" / "test").read_text().split('"$TOOLS/bin/vermin"', 1)[1]
    vermin = vermin.split("\n\n", 1)[0]
    assert [s for s in scripts if s not in vermin.split()] == [], \
        "add these to the vermin call in scripts/test (the Python 3.9 floor)"


def test_the_script_search_skips_modules_and_other_files(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("#!/usr/bin/python3\n")
    (tmp_path / "bin" / "env-tool").write_text("#!/usr/bin/env python3\n")
    (tmp_path / "bin" / "shell").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "module.py").write_text("#!/usr/bin/python3\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "hook").write_text("#!/usr/bin/python3\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "copy").write_text("#!/usr/bin/python3\n")
    (tmp_path / "data").write_bytes(b"\x00" * 300)
    assert python_scripts(tmp_path) == ["bin/env-tool", "bin/tool"]
