"""``numahook status`` shows where a running domain's memory is bound (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.config import Config
from numahook.host import procfs
from numahook.ops import holders, status
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


# --------------------------------------------------------------------------- next start

UUID = "5e1b1a5e-0000-4000-8000-000000000002"
LIVE = (DATA / "intelrt-realtime-out.xml").read_text()


class Dom:
    """What status asks of a libvirt domain: its persistent definition."""

    def __init__(self, xml: str | None) -> None:
        self.xml = xml

    def isPersistent(self) -> bool:
        return self.xml is not None

    def XMLDesc(self, flags: int) -> str:
        assert self.xml is not None
        return self.xml


class Conn:
    def __init__(self, xml: str | None) -> None:
        self.dom = Dom(xml)

    def lookupByUUIDString(self, uuid: str) -> Dom:
        assert uuid == UUID
        return self.dom

    def listAllDomains(self, flags: int) -> list[Dom]:
        return []


@pytest.fixture
def realtime_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """fedora-realtime (the golden case) runs on intel-2s-ht-rt, as rendered there."""
    pytest.importorskip("libvirt")
    roots = host_roots(tmp_path, "intel-2s-ht-rt", 1, {"": "0-79", "machine": "2-19,42-59"})
    run = tmp_path / "run"
    run.mkdir()
    vcpus = "".join(f"<vcpu id='{v}' pid='{4243 + v}'/>" for v in range(4))
    (run / "fedora-realtime.xml").write_text(
        f"<domstatus state='running' reason='booted' pid='4242'><vcpus>{vcpus}</vcpus>"
        f"{LIVE}</domstatus>")
    monkeypatch.setattr(procfs, "sched_of", lambda tid, *_: ("fifo", 1))
    return replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                   proc_root=str(roots["proc"]), libvirt_run=str(run),
                   state_dir=str(tmp_path / "state"))


def test_an_edited_mask_is_marked_with_what_changes(realtime_runs: Config) -> None:
    """Issue 31 item 6: the mask of a running domain edited; status says the next start
    differs, and how, in the same words for the JSON and the text."""
    edited = LIVE.replace('mask="0-3,^1"', 'mask="0-3"')
    assert edited != LIVE
    doc = status.collect(realtime_runs, Conn(edited))
    validate("status", {"schema_version": 1, **doc})
    (dom,) = doc["running"]
    # libvirt's own <vcpusched> names the old mask: the hook would refuse it as stale
    assert dom["next_start"] == {"changes": ["real-time vCPUs 0,2-3 -> 0-3"], "refused": None,
                                 "rendered": False}
    lines = status.text(doc).splitlines()
    assert lines[0].endswith("  [changes at its next start]")
    assert lines[-3:] == [
        "  at its next start (its persistent definition renders differently now):",
        "    real-time vCPUs 0,2-3 -> 0-3",
        "    (not rendered yet: numahookd renders it, or run `numahook apply fedora-realtime`)"]
    # and in the map's legend
    assert holders.host_map(realtime_runs, doc).holders[0].note == "changes at its next start"


def test_an_unchanged_definition_is_not_marked(realtime_runs: Config) -> None:
    doc = status.collect(realtime_runs, Conn(LIVE))
    assert doc["running"][0]["next_start"] == {"changes": [], "refused": None,
                                               "rendered": True}
    assert "next start" not in status.text(doc)


def test_a_next_start_that_would_be_refused_says_why(realtime_runs: Config) -> None:
    doc = status.collect(realtime_runs, Conn(LIVE.replace('mask="0-3,^1"', 'mask="7"')))
    ns = doc["running"][0]["next_start"]
    assert ns["changes"] == [] and ns["refused"].startswith("realtime mask item '7' names")
    assert status.text(doc).splitlines()[0].endswith("[its next start is refused]")


def test_a_pinning_edited_by_hand_and_still_valid_is_kept_at_the_next_start(
        realtime_runs: Config) -> None:
    moved = LIVE.replace("<vcpupin vcpu='1' cpuset='3'/>", "<vcpupin vcpu='1' cpuset='5'/>")
    ns = status.collect(realtime_runs, Conn(moved))["running"][0]["next_start"]
    assert ns["changes"] == ["vCPU 1: CPU 3 -> 5"]


def test_opting_out_and_transient_domains(realtime_runs: Config) -> None:
    start, end = LIVE.index("<metadata>"), LIVE.index("</metadata>") + len("</metadata>")
    doc = status.collect(realtime_runs, Conn(LIVE[:start] + LIVE[end:]))
    assert doc["running"][0]["next_start"]["changes"] == [
        "numahook stops managing it: its definition has no <numahook:domain> metadata"]
    # a transient domain has no next start; without libvirt, it is not known
    assert status.collect(realtime_runs, Conn(None))["running"][0]["next_start"] is None
    assert status.collect(realtime_runs)["running"][0]["next_start"] is None
