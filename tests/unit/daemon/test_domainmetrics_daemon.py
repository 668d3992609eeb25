"""numahookd's metrics per domain through its own code paths (issue 31, item 4): libvirt's
in-process test driver defines and undefines as libvirtd does, and sends the events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from numahook.config import Config
from numahook.node import metrics
from numahook.ops import refusals
from tests.fixtures.hosts import host_roots
from tests.support.cli import domain

libvirt = pytest.importorskip("libvirt")
daemon_main = pytest.importorskip("numahook.daemon.main")


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Daemon (not run) on the one-node fixture, connected to libvirt's in-process test
    driver, which sends DEFINED and UNDEFINED as libvirtd does; its textfile dir exists."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.setattr(libvirt.virConnect, "setKeepAlive", lambda _self, *_a: 0)
    roots = host_roots(tmp_path / "host", "single")
    (tmp_path / "libvirt-run").mkdir()
    (tmp_path / "prom").mkdir()
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    cfg = Config(sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                 proc_root=str(roots["proc"]), libvirt_run=str(tmp_path / "libvirt-run"),
                 state_dir=str(tmp_path / "state"), nfd_dir=str(tmp_path / "no-nfd"),
                 textfile_dir=str(tmp_path / "prom"), libvirt_uri=f"test://{node}")
    d = daemon_main.Daemon(cfg, None)
    d.state.ensure()
    d.conn.open()
    assert d.loop.run_until(lambda: d.conn.up, 10), "the test driver did not connect"
    yield d
    d.publisher.close()
    d.conn.close()
    d.loop.close()


def test_numahookd_exports_a_definition_and_drops_it_when_undefined(daemon: Any) -> None:
    prom = Path(daemon.cfg.textfile_dir) / metrics.METRICS_FILE

    def exported(line: str) -> bool:
        return prom.exists() and line in prom.read_text()

    # eight dedicated vCPUs on a four-CPU host: numahookd cannot render it
    daemon.conn.conn.defineXML(domain(vcpus=8))
    daemon.on_connected()
    assert daemon.loop.run_until(lambda: exported('numahook_domain_running{domain="vm"} 0'),
                                 10), prom.read_text() if prom.exists() else "no file"
    text = prom.read_text()
    assert "numahook_managed_domains_defined 1\n" in text
    assert "numahook_managed_domains_unrenderable 1\n" in text
    assert 'numahook_dedicated_cpus_free{node="0"} 4\n' in text
    daemon.conn.conn.lookupByName("vm").undefine()
    assert daemon.loop.run_until(lambda: exported("numahook_managed_domains_defined 0"), 10)
    assert 'domain="vm"' not in prom.read_text()


def test_numahookd_counts_a_render_refusal_once_per_reason(daemon: Any) -> None:
    daemon.conn.conn.defineXML(domain(vcpus=8))
    daemon.on_connected()
    daemon.reconciler.rerender_inactive(daemon.conn.conn, force=True)  # the same reason
    assert refusals.counts(daemon.cfg.state_dir) == {("render", "dedicated-cpus"): 1}
