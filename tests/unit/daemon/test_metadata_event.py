"""numahookd renders a definition opted in with `virsh metadata --set` (issue 31, item 1).

libvirt sends VIR_DOMAIN_EVENT_ID_METADATA_CHANGE for virDomainSetMetadata, never DEFINED,
so before this numahookd saw such a change only at its next resync. libvirt's in-process
test driver sends the same event, on a node file of our own: a shut-off domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook import NAMESPACE
from numahook.config import Config
from tests.fixtures.hosts import host_roots
from tests.support.cli import domain

libvirt = pytest.importorskip("libvirt")
daemon_main = pytest.importorskip("numahook.daemon.main")

#: what an operator passes to `virsh metadata vm --config --uri NS --key numahook --set`
OPT_IN = ("<domain><cpu dedicatedCpuPlacement='true'><numa><guestMappingPassthrough/>"
          "</numa></cpu></domain>")
TEST_NS = "xmlns:test='http://libvirt.org/schemas/domain/test/1.0'"


def plain_shut_off_domain() -> str:
    """The CLI tests' domain with no numahook metadata, shut off (the test driver's
    runstate 5), in the test driver's node file format."""
    xml = domain(vcpus=2)
    start, end = xml.index("<metadata>"), xml.index("</metadata>") + len("</metadata>")
    xml = xml[:start] + xml[end:]
    xml = xml.replace("<domain type='kvm'>", f"<domain type='kvm' {TEST_NS}>", 1)
    return "<node>" + xml.replace("</domain>", "<test:runstate>5</test:runstate></domain>") \
        + "</node>"


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[daemon_main.Daemon]:
    """A Daemon (not run) on a one-node fixture host, connected to a test driver whose one
    domain, vm, is defined, shut off and not opted in."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    # the test driver has no keepalive (a remote connection's), the one call it lacks
    monkeypatch.setattr(libvirt.virConnect, "setKeepAlive", lambda _self, *_a: 0)
    roots = host_roots(tmp_path / "host", "single")
    (tmp_path / "libvirt-run").mkdir()
    node = tmp_path / "node.xml"
    node.write_text(plain_shut_off_domain())
    cfg = Config(sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                 proc_root=str(roots["proc"]), libvirt_run=str(tmp_path / "libvirt-run"),
                 state_dir=str(tmp_path / "state"), nfd_dir=str(tmp_path / "no-nfd"),
                 textfile_dir=str(tmp_path / "no-textfile"), libvirt_uri=f"test://{node}")
    d = daemon_main.Daemon(cfg, None)
    d.state.ensure()
    d.conn.open()
    assert d.loop.run_until(lambda: d.conn.up, 10), "the test driver did not connect"
    yield d
    d.publisher.close()
    d.conn.close()
    d.loop.close()


def persistent(d: daemon_main.Daemon) -> str:
    return str(d.conn.conn.lookupByName("vm").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_virsh_metadata_set_is_rendered_as_a_define_is(daemon: daemon_main.Daemon) -> None:
    assert "vcpupin" not in persistent(daemon)
    dom = daemon.conn.conn.lookupByName("vm")
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OPT_IN, "numahook", NAMESPACE,
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert daemon.loop.run_until(lambda: "vcpupin" in persistent(daemon), 10), \
        "numahookd did not render the definition after the metadata change"
    assert "<numahook:rendered" in persistent(daemon)
    assert daemon.reconciler.stats.redefined == 1
    # what our own defineXML sends back (DEFINED) finds it rendered: no second redefine
    daemon.on_metadata(dom)
    assert daemon.reconciler.stats.redefined == 1


def test_other_namespaces_and_the_description_are_not_ours(
        daemon: daemon_main.Daemon) -> None:
    seen: list[str] = []
    daemon.conn.on_metadata = lambda dom: seen.append(dom.name())
    dom = daemon.conn.conn.lookupByName("vm")
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "a plain VM", None, None,
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<app/>", "other",
                    "https://example.org/other/1", libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OPT_IN, "numahook", NAMESPACE,
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    # events arrive in order: once ours is here, the two before it were passed over
    assert daemon.loop.run_until(lambda: bool(seen), 10), "no metadata change arrived"
    assert seen == ["vm"]



def test_one_definition_rendered_does_not_hide_an_input_change_from_the_others(
        tmp_path: Path) -> None:
    """A DEFINED or metadata event renders that one definition. It used to record the
    host's inputs as seen, so the next pass skipped the others: after the partition's
    cpuset changed, only the domain that happened to send an event followed it."""
    from numahook.daemon.reconcile import Reconciler
    from numahook.state.statedir import StateDir

    roots = host_roots(tmp_path / "host", "single")
    two = [domain(vcpus=1).replace("<name>vm</name>", f"<name>{n}</name>")
           .replace("0000000000aa", f"0000000000{n}").replace(
               "<domain type='kvm'>", f"<domain type='kvm' {TEST_NS}>", 1)
           .replace("</domain>", "<test:runstate>5</test:runstate></domain>")
           for n in ("a1", "b2")]
    (tmp_path / "node.xml").write_text("<node>" + "".join(two) + "</node>")
    cfg = Config(sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                 proc_root=str(roots["proc"]), libvirt_run=str(tmp_path),
                 state_dir=str(tmp_path / "state"))
    rec = Reconciler(cfg, StateDir(cfg.state_dir))
    conn = libvirt.open(f"test://{tmp_path / 'node.xml'}")
    try:
        def pinned(name: str) -> bool:
            xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            return "cpuset='2'" in xml or 'cpuset="2"' in xml

        rec.rerender_inactive(conn, force=True)
        assert rec.stats.redefined == 2 and not pinned("a1") and not pinned("b2")
        for name in ("cpuset.cpus", "cpuset.effective_cpus"):
            (roots["cgroup"] / "cpuset" / "machine" / name).write_text("2-3\n")
        rec.rerender_inactive(conn, only=conn.lookupByName("a1"))  # its event came first
        assert pinned("a1")
        rec.rerender_inactive(conn, cached=True)  # the reconcile pass
        assert pinned("b2")
    finally:
        conn.close()
