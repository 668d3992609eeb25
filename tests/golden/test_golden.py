"""Golden in/out tests on fixture hosts (virtinst style). ``NUMAHOOK_UPDATE_GOLDEN=1`` rewrites.

Each output must be stable, idempotent under re-rendering and, where the tool exists,
valid against libvirt's own RNG schema (virt-xml-validate).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from numahook import config
from numahook.config import Config
from numahook.core import render
from numahook.ops import hostinputs
from numahook.records import replace
from tests.fixtures.hosts import HOSTS, host_roots
from tests.golden.cases import CASES, DATA, Case

UPDATE = os.environ.get("NUMAHOOK_UPDATE_GOLDEN") == "1"


def host_config(tmp_path: Path, case: Case) -> Config:
    roots = host_roots(tmp_path, case.host, case.cgroup_version, case.cpusets)
    run = tmp_path / "libvirt-run"
    run.mkdir()
    base = config.parse(case.config) if case.config else Config()
    return replace(base, sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                   proc_root=str(roots["proc"]), libvirt_run=str(run),
                   state_dir=str(tmp_path / "state"))


def render_case(tmp_path: Path, case: Case, xml: str) -> render.Result:
    cfg = host_config(tmp_path, case)
    doc = render.parse(xml)
    inp, _ = hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid,
                              devices=doc.facts.bdfs)
    return render.render_parsed(doc, inp)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden(tmp_path: Path, case: Case) -> None:
    assert case.host in HOSTS
    source = (DATA / f"{case.source}-in.xml").read_text()
    result = render_case(tmp_path, case, source)
    out_path = DATA / f"{case.id}-out.xml"
    if UPDATE or not out_path.exists():
        out_path.write_text(result.xml + "\n")
        if not UPDATE:
            pytest.fail(f"wrote missing golden file {out_path.name}; review and commit it")
    assert result.xml + "\n" == out_path.read_text()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden_idempotent(tmp_path: Path, case: Case) -> None:
    out = (DATA / f"{case.id}-out.xml").read_text()
    again = render_case(tmp_path, case, out)
    assert again.xml + "\n" == out
    assert again.plan.kept_pinning


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
                    reason="virt-xml-validate/xmllint not installed (libvirt-clients, "
                    "libxml2-utils)")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden_validates(case: Case) -> None:
    path = DATA / f"{case.id}-out.xml"
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
