"""The registry of tunables (numahook/tunables/): every tunable is complete, and the code
that runs them names none.

docs/architecture.md, "Adding a tunable", promises that a new tunable is its module, its
test, its fixture and a README row. These tests hold the rest of the tree to that: a part
missing from a tunable, or a lifecycle module that imports one tunable's module or host
adapter instead of iterating the registry, fails here.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from numahook import records, tunables
from numahook.core import render, schema
from numahook.core.plan import Plan
from numahook.tunables.base import PARTS, Tunable
from tests.golden.cases import CASES, DATA

REPO = Path(__file__).resolve().parents[3]

#: the modules that run tunables: lifecycle, recovery, reconcile, status, check (the CLI)
#: and the started hook's fast path
RUNNERS = ("numahook/ops/lifecycle.py", "numahook/state/recovery.py",
           "numahook/daemon/reconcile.py", "numahook/ops/status.py", "numahook/hook/fast.py",
           "numahook/cli.py")
#: modules a runner may import from the tunables package: the registry, the protocol, the view
SHARED = {"numahook.tunables", "numahook.tunables.base", "numahook.tunables.view"}
#: host adapters that belong to one tunable each
OWNED = {"numahook.host.hugepages": "hugepages", "numahook.host.rtsched": "realtime",
         "numahook.host.rtgroups": "realtime", "numahook.host.cpupower": "power"}


@pytest.mark.parametrize("tunable", tunables.REGISTRY, ids=lambda t: t.name)
def test_every_tunable_defines_every_part(tunable: Tunable) -> None:
    for part in PARTS:
        owner = next(c for c in type(tunable).__mro__ if part in vars(c))
        assert owner is not Tunable, f"{tunable.name} does not define {part}"
    assert tunable.step in ("prepare", "started")


def test_names_are_unique_and_match_the_claims_keys() -> None:
    names = [t.name for t in tunables.REGISTRY]
    assert len(names) == len(set(names))
    assert all(tunables.by_name(n).name == n for n in names)


def _metadata_names() -> set[str]:
    """What core/schema.py declares inside <numahook:cpu>, as tunables name it: an
    attribute of cpu by its name, an element or its attribute by its path from cpu."""
    cpu = next(c for c in schema.DOMAIN.children if c.name == "cpu")
    out = {a.name for a in cpu.attrs}

    def down(el: schema.Element, path: str) -> None:
        out.add(path)
        out.update(f"{path}.{a.name}" for a in el.attrs)
        for c in el.children:
            down(c, f"{path}.{c.name}")

    for c in cpu.children:
        down(c, c.name)
    return out


@pytest.mark.parametrize("tunable", tunables.REGISTRY, ids=lambda t: t.name)
def test_declared_attributes_and_plan_fields_exist(tunable: Tunable) -> None:
    known = _metadata_names()
    assert {"realtime", "realtime.mask", "isolateEmulatorThread"} <= known
    assert set(tunable.attributes) <= known
    assert set(tunable.plan_fields) <= set(records.field_names(Plan))


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("runner", RUNNERS)
def test_no_runner_names_a_tunable(runner: str) -> None:
    imported = _imports(REPO / runner)
    own = {f"numahook.tunables.{m}" for m in ("hugepages", "realtime", "kvmpit", "emulator")}
    own |= {f"numahook.tunables.{t.__module__.rsplit('.', 1)[1]}"
            for t in map(type, tunables.REGISTRY)}
    assert not (imported & own), f"{runner} imports a tunable's module: {imported & own}"
    assert not (imported & set(OWNED)), \
        f"{runner} imports a tunable's host adapter: {imported & set(OWNED)}"
    tunables_used = {m for m in imported if m.startswith("numahook.tunables")}
    assert all(m in SHARED or m.rsplit(".", 1)[0] in SHARED - {"numahook.tunables"}
               or m in ("numahook.tunables.REGISTRY", "numahook.tunables.host_wide")
               for m in tunables_used), tunables_used


@pytest.mark.parametrize("runner", [r for r in RUNNERS if not r.endswith("fast.py")])
def test_each_runner_iterates_the_registry(runner: str) -> None:
    assert "REGISTRY" in (REPO / runner).read_text()


def test_the_fast_path_imports_no_tunable_at_all() -> None:
    """It confirms the checks the tunables declared at prepare (fast_checks), as data."""
    imported = _imports(REPO / "numahook/hook/fast.py")
    assert not {m for m in imported if m.startswith("numahook.tunables")}


@pytest.mark.parametrize("case", [c for c in CASES if "realtime" in c.id or "rt" in c.id
                                  or "emulator" in c.id or "hugepages" in c.id][:8],
                         ids=lambda c: c.id)
def test_declared_fast_checks_are_kinds_the_fast_path_knows(tmp_path: Path, case: Any) -> None:
    from numahook import config
    from numahook.hook import fast
    from numahook.ops import hostinputs
    from tests.fixtures.hosts import host_roots

    roots = host_roots(tmp_path, case.host, case.cgroup_version, case.cpusets)
    cfg = records.replace(config.parse(case.config), sysfs_root=str(roots["sysfs"]),
                          cgroup_root=str(roots["cgroup"]), proc_root=str(roots["proc"]),
                          state_dir=str(tmp_path / "state"))
    source = render.parse((DATA / f"{case.source}-in.xml").read_text())
    inp, _ = hostinputs.gather(cfg, source.facts.partition, source.facts.uuid,
                               devices=source.facts.bdfs)
    result = render.render_parsed(source, inp)
    doc = render.parse(result.xml, readonly=True)
    for tunable in tunables.REGISTRY:
        if not tunable.wanted(doc):
            continue
        checks = tunable.fast_checks(doc, result.plan)
        assert checks is None or set(checks) <= fast.CHECK_KINDS, (tunable.name, checks)
        json.dumps(checks)  # stored in the claim as is


def test_the_check_test_above_would_catch_a_runner_that_names_one(tmp_path: Path) -> None:
    """The scan is not vacuous: lifecycle as it was (it imported host.hugepages and
    ops.kvmpit) fails it."""
    old = tmp_path / "lifecycle.py"
    old.write_text("from numahook.host import fsutil, hugepages, rtsched\n"
                   "from numahook.tunables import kvmpit\n")
    imported = _imports(old)
    assert "numahook.host.hugepages" in imported and "numahook.tunables.kvmpit" in imported


def test_the_readme_has_a_row_for_each_tunable_and_no_other() -> None:
    text = (REPO / "README.md").read_text()
    table = text[text.index("### What numahook changes on the host"):]
    table = table[:table.index("\n\n", table.index("| tunable |"))]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines()
            if line.startswith("| `")]
    assert rows == [t.name for t in tunables.REGISTRY]
