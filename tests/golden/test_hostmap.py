"""Golden host maps (issue 31): ``numahook status``'s picture of fixture hosts with golden
domains running, as ``map/<case>.txt``. ``NUMAHOOK_UPDATE_GOLDEN=1`` rewrites.

The layout is the point: a node's cores as columns and their threads as rows, in bands
that fit the width, each CPU's holder and role, and the key. Each map's JSON is held to
docs/schemas/status.schema.json as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from numahook.config import Config
from numahook.core import hostmap
from numahook.host import procfs
from numahook.ops import holders, status
from numahook.records import replace
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import host_roots
from tests.golden.cases import DATA, MAP_CASES, MAPS, MapCase
from tests.support.schemas import validate

UPDATE = os.environ.get("NUMAHOOK_UPDATE_GOLDEN") == "1"


def draw(tmp_path: Path, case: MapCase, monkeypatch: pytest.MonkeyPatch) -> hostmap.HostMap:
    roots = host_roots(tmp_path, case.host, case.cgroup_version, case.cpusets)
    run = tmp_path / "run"
    run.mkdir()
    policies: dict[int, tuple[str, int]] = {}
    for i, source in enumerate(case.running):
        xml = (DATA / f"{source}-out.xml").read_text()
        doc = status.render.parse(xml)
        tids = {v: 10000 * (i + 1) + v for v in range(doc.facts.vcpus)}
        rt = status.view.realtime_vcpus(doc)
        for v, tid in tids.items():
            lost = (doc.facts.name, v) in case.lost
            policies[tid] = ("fifo", 1) if v in rt and not lost else ("other", 0)
        threads = "".join(f"<vcpu id='{v}' pid='{t}'/>" for v, t in tids.items())
        (run / f"{source}.xml").write_text(
            f"<domstatus state='running' reason='booted' pid='{9000 + i}'><vcpus>{threads}"
            f"</vcpus>{xml}</domstatus>")
    monkeypatch.setattr(procfs, "sched_of", lambda tid, *_: policies[tid])
    cfg = replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), libvirt_run=str(run),
                  state_dir=str(tmp_path / "state"))
    state = StateDir(cfg.state_dir)
    state.ensure()
    for j, (name, cpus) in enumerate(case.claims):
        state.save(Claim(uuid=f"5e1b1a5e-0000-4000-8000-{j:012x}", name=name,
                         cpus=status.cpulist.parse(cpus), phase="reserved"))
    doc = status.collect(cfg)
    m = holders.host_map(cfg, doc)
    validate("status", {"schema_version": 1, **doc, "host": hostmap.to_json(m)})
    return m


@pytest.mark.parametrize("case", MAP_CASES, ids=[c.id for c in MAP_CASES])
def test_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: MapCase) -> None:
    lines = hostmap.text(draw(tmp_path, case, monkeypatch), width=case.width)
    assert all(len(line) <= case.width for line in lines), "a line is wider than asked"
    got = "\n".join(lines) + "\n"
    path = MAPS / f"{case.id}.txt"
    if UPDATE or not path.exists():
        MAPS.mkdir(exist_ok=True)
        path.write_text(got)
        if not UPDATE:
            pytest.fail(f"wrote missing golden file map/{path.name}; review and commit it")
    assert got == path.read_text()


def test_map_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON of the smallest map, whole: every CPU with its place and role."""
    (case,) = [c for c in MAP_CASES if c.id == "single-numavm"]
    got = json.dumps(hostmap.to_json(draw(tmp_path, case, monkeypatch)), indent=1,
                     sort_keys=True) + "\n"
    path = MAPS / "single-numavm.json"
    if UPDATE or not path.exists():
        path.write_text(got)
        if not UPDATE:
            pytest.fail(f"wrote missing golden file map/{path.name}; review and commit it")
    assert got == path.read_text()
