"""``numahook status`` shows where a running domain's memory is bound (issue 25)."""

from __future__ import annotations

from pathlib import Path

from numahook.config import Config
from numahook.ops import status
from numahook.records import replace
from tests.fixtures.hosts import host_roots
from tests.golden.cases import DATA
from tests.support.schemas import validate


def test_a_bound_domain_shows_its_memory_node(tmp_path: Path) -> None:
    roots = host_roots(tmp_path, "intel-2s-ht")
    run = tmp_path / "run"
    run.mkdir()
    xml = (DATA / "intel-hugepages-dedicated-out.xml").read_text()
    vcpus = "".join(f"<vcpu id='{v}' pid='{4243 + v}'/>" for v in range(6))
    (run / "hugepinned.xml").write_text(
        f"<domstatus state='running' reason='booted' pid='4242'><vcpus>{vcpus}</vcpus>"
        f"{xml}</domstatus>")
    cfg = replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), libvirt_run=str(run),
                  state_dir=str(tmp_path / "state"))
    doc = status.collect(cfg)
    validate("status", {"schema_version": 1, **doc})
    (dom,) = doc["running"]
    assert dom["memory"] == {"mode": "strict", "host_nodes": "1"}
    assert "  memory: strict on host node 1" in status.text(doc).splitlines()
