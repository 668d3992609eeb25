"""What the packages declare against what their code and tests need.

- The .deb's build (dh_auto_test) and the RPM's %check run the unit tests; every module
  those tests import that is neither the standard library nor optional (imported under
  ``try/except ImportError``) must be a build dependency of both, or a clean build
  chroot fails at collection while this machine, which has it, passes.
- python-daemon, which only ``numahookd --daemonize`` imports, is suggested, never
  required (issue 16), in both packages.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTROL = REPO / "packaging" / "debian" / "control"
RULES = REPO / "packaging" / "debian" / "rules"
SPEC = REPO / "packaging" / "rpm" / "numahook.spec"
#: import name -> (Debian package, RPM provide) where the usual python3-NAME /
#: python3dist(NAME) rule does not hold
NAMES: dict[str, tuple[str, str]] = {}

stdlib = getattr(sys, "stdlib_module_names", None)  # Python >= 3.10; the 3.9 run skips


def _optional(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside ``try:`` blocks that catch ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {getattr(h.type, "id", None) for h in node.handlers} | {
            getattr(e, "id", None) for h in node.handlers
            if isinstance(h.type, ast.Tuple) for e in h.type.elts}
        if caught & {"ImportError", "ModuleNotFoundError"}:
            for stmt in node.body:
                lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def required_imports(paths: list[Path]) -> dict[str, str]:
    """Third-party module -> the first file that needs it."""
    assert stdlib is not None
    out: dict[str, str] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        optional = _optional(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in ("numahook", "tests", "lab", "bench") \
                        or node.lineno in optional:
                    continue
                out.setdefault(top, str(path.relative_to(REPO) if path.is_relative_to(REPO)
                                        else path))
    return out


def _tested_dirs() -> tuple[list[str], list[str]]:
    """The test directories dh_auto_test and %check run."""
    deb = re.search(r"-m pytest \\\n\s*(.*)$", RULES.read_text(), re.M)
    rpm = re.search(r"^%pytest (.*)$", SPEC.read_text(), re.M)
    assert deb and rpm, "cannot find the test runs in debian/rules and the spec"
    return ([w for w in deb.group(1).split() if w.startswith("tests/")],
            [w for w in rpm.group(1).split() if w.startswith("tests/")])


def _files(dirs: list[str]) -> list[Path]:
    # what those tests import from tests/ itself comes along (support, fixtures, golden)
    roots = [REPO / d for d in dirs] + [REPO / "tests" / "support"]
    return sorted({p for r in roots for p in r.rglob("*.py")})


def build_depends() -> set[str]:
    text = CONTROL.read_text()
    field = re.search(r"^Build-Depends:(.*?)^\S", text, re.M | re.S)
    assert field
    return {re.split(r"[\s(<\[]", item.strip())[0]
            for item in field.group(1).split(",") if item.strip()}


def spec_test_requires() -> set[str]:
    """BuildRequires, those under %if %{with tests} included."""
    return {ln.split(":", 1)[1].strip() for ln in SPEC.read_text().splitlines()
            if ln.startswith("BuildRequires:")}


@pytest.mark.skipif(stdlib is None, reason="needs sys.stdlib_module_names (Python 3.10)")
def test_the_builds_can_import_what_their_tests_import() -> None:
    deb_dirs, rpm_dirs = _tested_dirs()
    deb, rpm = build_depends(), spec_test_requires()
    for kind, dirs, have, name in (
            ("packaging/debian/control Build-Depends", deb_dirs, deb, 0),
            ("packaging/rpm/numahook.spec BuildRequires", rpm_dirs, rpm, 1)):
        needed = required_imports(_files(dirs))
        missing = {}
        for module, where in needed.items():
            package = NAMES.get(module, (f"python3-{module}", f"python3dist({module})"))[name]
            if package not in have:
                missing[package] = where
        assert missing == {}, f"{kind} lacks what the tests it runs import: {missing}"


@pytest.mark.skipif(stdlib is None, reason="needs sys.stdlib_module_names (Python 3.10)")
def test_the_import_scan_tells_required_from_optional(tmp_path: Path) -> None:
    """Without this, a scan that found nothing would pass the test above."""
    mod = tmp_path / "m.py"
    mod.write_text("import os\nimport jsonschema\nfrom lxml import etree\n"
                   "from numahook import cli\nfrom tests.support import cli as c\n"
                   "try:\n    import referencing\nexcept ImportError:\n    pass\n"
                   "try:\n    import yaml\nexcept (OSError, ModuleNotFoundError):\n    pass\n"
                   "def f():\n    import hypothesis.strategies\n")
    assert set(required_imports([mod])) == {"jsonschema", "lxml", "hypothesis"}


def test_python_daemon_is_only_suggested() -> None:
    control = CONTROL.read_text()
    fields = {m.group(1): m.group(2) for m in
              re.finditer(r"^([A-Z][A-Za-z-]*):(.*?)(?=^\S)", control + "\nEnd:", re.M | re.S)}
    assert "python3-daemon" in fields["Suggests"] + fields.get("Recommends", "")
    assert "python3-daemon" not in fields["Depends"]
    spec = SPEC.read_text()
    assert re.search(r"^(Suggests|Recommends):\s+python3dist\(python-daemon\)$", spec, re.M)
    assert not re.search(r"^Requires:.*daemon", spec, re.M)
