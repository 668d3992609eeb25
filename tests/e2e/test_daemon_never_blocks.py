"""numahookd's loop never waits without a bound, shown on a real libvirtd (issue 12).

Each test starts numahookd as systemd would (NOTIFY_SOCKET, a 1 s watchdog) and breaks
one thing the old daemon waited on: a NOTIFY_SOCKET nobody reads, a DEFINED event that
never arrives, a vCPU-watch thread that dies or hangs, a libvirtd that does not answer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from numahook.host import rtsched
from tests.e2e.daemonharness import Daemon
from tests.e2e.helpers import hook_config, metadata, wait_until

NODE_JSON = Path("/run/numahook/node.json")


def daemon_counter(key: str) -> int:
    try:
        return int(json.loads(NODE_JSON.read_text())["daemon"].get(key, 0))
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture
def run(lab: Any, tmp_path: Path) -> Iterator[Any]:
    """Start a numahookd with the given options; it is stopped and its log shown after."""
    started: list[Daemon] = []

    def start(journal: bool = False, **kwargs: Any) -> Daemon:
        d = Daemon(tmp_path, **kwargs)
        started.append(d)
        d.start(journal=journal)
        return d

    with hook_config("[realtime]\nthrottled = delegate\n"):
        yield start
        for d in started:
            d.stop()
            d.notify.close()
            print(d.logtext()[-3000:], file=sys.stderr)


def rendered(dom: Any) -> bool:
    import libvirt

    return "vcpupin" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_an_unread_notify_socket_never_stops_the_loop(run: Any, domains: Any) -> None:
    """The red e2e runs: once ~10 datagrams filled the harness's unread queue, the old
    sd_notify blocked and with it every event. Now the sends are dropped and counted."""
    d = run(read_notify=False)
    wait_until(lambda: time.monotonic() - d.started_at >= 10
               and daemon_counter("sd_notify_dropped") >= 5,
               timeout=60, what="numahookd to run 10 s into a full NOTIFY_SOCKET queue")
    dom = domains.define(domains.probe_xml("unread", vcpus=1, memory_mib=128,
                                           hugepage_kib=2048, extra=metadata()))
    wait_until(lambda: rendered(dom), timeout=2.0,
               what="the definition rendered within 2 s while sd_notify cannot send")
    assert d.proc is not None and d.proc.poll() is None
    assert "sd_notify: dropped" in d.logtext()


def test_a_lost_defined_event_is_rendered_within_resync_interval(run: Any,
                                                                 domains: Any) -> None:
    """The periodic pass's cached inputs never list definitions again; the resync does."""
    resync = 3
    d = run(extra_conf=f"resync_interval = {resync}\n", fault="daemon.drop-defined")
    dom = domains.define(domains.probe_xml("lostevent", vcpus=1, memory_mib=128,
                                           hugepage_kib=2048, extra=metadata()))
    wait_until(lambda: "dropped the DEFINED event" in d.logtext(), timeout=10,
               what="the fault to drop the DEFINED event")
    wait_until(lambda: rendered(dom), timeout=resync + 10,
               what=f"the definition rendered within resync_interval ({resync} s)")
    # numahookd's log lines reach the file through its writer thread (daemon/logs.py), so
    # the redefinition can be seen in libvirt before its line is in the log
    wait_until(lambda: f"redefined {dom.name()}" in d.logtext(), timeout=10,
               what="the redefinition's log line")
    log = d.logtext()
    assert "resync: 1 definition changed without an event reaching numahookd" in log
    assert log.index("resync: 1 definition") < log.index(f"redefined {dom.name()}")


def _needs_vcpu_watch() -> None:
    if rtsched.cpu_controller() is None:
        pytest.skip("no cgroup v1 cpu controller: numahookd runs no vCPU watch here")


def test_a_dead_vcpu_watch_thread_is_restarted_and_logged(run: Any) -> None:
    _needs_vcpu_watch()
    d = run(fault="vcpuwatch.die")
    wait_until(lambda: "ERROR the vcpu watch thread died; starting it again" in d.logtext(),
               timeout=20, what="the death logged at error level")
    wait_until(lambda: daemon_counter("vcpu_watch_restarts") == 1, timeout=20,
               what="node.json to count the restart")
    mark = len(d.notify.messages)
    d.notify.wait_for("WATCHDOG=1", timeout=5, after=mark)  # the daemon stays healthy


def test_a_hung_vcpu_watch_thread_withholds_the_watchdog_ping(run: Any) -> None:
    """systemd then kills and restarts numahookd after WatchdogSec (the host lab shows
    that part); here, the pings stop while the loop itself goes on."""
    _needs_vcpu_watch()
    d = run(extra_conf="[hook]\nlock_timeout = 1\n", fault="vcpuwatch.hang")
    wait_until(lambda: "withholding the watchdog ping" in d.logtext(), timeout=30,
               what="the hang noticed")
    mark = len(d.notify.messages)
    after = mark
    for _ in range(3):  # the loop still publishes: STATUS= comes with every pass
        after = d.notify.wait_for("STATUS=", timeout=10, after=after) + 1
    assert d.notify.count("WATCHDOG=1", after=mark) == 0, d.notify.messages[mark:]


def test_log_lines_reach_the_journal_with_their_priority(run: Any) -> None:
    d = run(journal=True)
    d.conf.write_text("[features]\nNUMA = perhaps\n")
    mark = len(d.notify.messages)
    d.signal(signal.SIGHUP)
    d.notify.wait_for("READY=1", after=mark)
    wait_until(lambda: any(line.startswith("<3>ERROR") and "keeping the configuration" in line
                           for line in d.logtext().splitlines()),
               timeout=10, what="the reload error at priority 3")
    lines = d.logtext().splitlines()
    assert any(line.startswith("<6>INFO") for line in lines)
    assert all(line[:1] == "<" for line in lines if line), lines


def test_a_libvirtd_that_does_not_answer_does_not_hold_the_loop(run: Any) -> None:
    """A stopped libvirtd accepts the connection and never answers: the old daemon hung
    in virConnectOpen before READY, with no watchdog ping."""
    pid = int(Path("/run/libvirtd.pid").read_text().strip())
    os.kill(pid, signal.SIGSTOP)
    try:
        d = run()  # READY comes while libvirtd is stopped
        after = d.notify.wait_for("READY=1")
        for _ in range(3):
            after = d.notify.wait_for("WATCHDOG=1", timeout=5, after=after) + 1
        assert "connected to" not in d.logtext()
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: "connected to qemu:///system" in d.logtext(), timeout=30,
               what="numahookd to connect once libvirtd answers")
