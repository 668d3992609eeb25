"""Who holds what (numahook/ops/holders.py): the map and node's rows from the host's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.config import Config
from numahook.ops import holders, status
from numahook.records import replace
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import host_roots
from tests.fixtures.status import MANAGED_STATUS


def host(tmp_path: Path, cpusets: dict[str, str] | None = None, **config: object) -> Config:
    """single (CPUs 0-3), where "other" runs on CPUs 0 and 1 and a start claims CPU 2."""
    roots = host_roots(tmp_path / "host", "single", 1, cpusets)
    run = tmp_path / "run"
    run.mkdir()
    (run / "other.xml").write_text(MANAGED_STATUS)
    cfg = replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), libvirt_run=str(run),
                  state_dir=str(tmp_path / "state"), **config)
    state = StateDir(cfg.state_dir)
    state.ensure()
    state.save(Claim(uuid="5e1b1a5e-0000-4000-8000-0000000000cc", name="starting",
                     cpus=frozenset({2})))
    return cfg


def test_the_map_and_node_rows_agree_with_status(tmp_path: Path) -> None:
    cfg = host(tmp_path, {"": "0-3", "machine": "0-2"})
    m = holders.host_map(cfg, status.collect(cfg))
    assert [(s.cpu, s.code()) for n in m.nodes for s in n.slots] == [
        (0, "A0"), (2, "Bc"), (1, "A1"), (3, "-")]
    assert holders.node_rows(m) == [
        ("dedicated node0", "none free (0 of the 3 CPUs of /machine's cpuset here; other "
                            "holds 0-1; starting holds 2)")]
    assert holders.node_json(m) == {"partition": "/machine", "nodes": [
        {"id": 0, "cpus": "0-2", "free": "", "held": {"other": "0-1", "starting": "2"}}]}


def test_the_shared_set_comes_from_the_configuration(tmp_path: Path) -> None:
    cfg = host(tmp_path, shared_cpus=frozenset({3}))
    m = holders.host_map(cfg, status.collect(cfg))
    assert m.shared == frozenset({3})
    assert holders.node_json(m)["nodes"][0]["cpus"] == "0-2"  # the dedicated pool


def test_an_unreadable_cpuset_draws_every_unheld_cpu_free(tmp_path: Path) -> None:
    cfg = replace(host(tmp_path), cgroup_root=str(tmp_path / "no-cgroups"))
    m = holders.host_map(cfg, status.collect(cfg))
    assert m.partition_cpus is None
    assert [s.state for n in m.nodes for s in n.slots if s.key is None] == ["free"]


def test_node_goes_on_without_the_map_when_the_state_cannot_be_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """numahook node's report stands without the holders (logged), as without libvirt."""
    import shutil

    cfg = host(tmp_path)
    claims = Path(cfg.state_dir) / "claims"
    shutil.rmtree(claims)
    claims.write_text("not a directory\n")  # listing the claims fails
    assert holders.of_host(cfg) is None
    assert "cannot tell which domains hold CPUs" in caplog.text
