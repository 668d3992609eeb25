"""numahookd against a real libvirtd (issue 5's "Show" list).

Each test starts its own numahookd with a test config (1 s reconcile, 2 s probe), a
NOTIFY_SOCKET the test owns and a watchdog, exactly as systemd would run it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import daemons, env, guest
from lab.report import parse as parse_report
from numahook.host import procfs, rtsched
from numahook.state.statedir import StateDir
from tests.e2e.daemonharness import Daemon, running
from tests.e2e.helpers import (
    CLAIMS,
    HOLD,
    claim_files,
    hook_config,
    hugepages_2m,
    metadata,
    render_here,
    started_probe,
    wait_until,
)
from tests.support import claims

REPO = Path(__file__).resolve().parents[2]
SYSCTL = Path("/proc/sys/kernel/sched_rt_runtime_us")
NODE_JSON = Path("/run/numahook/node.json")


@pytest.fixture
def numahookd(lab: Any, tmp_path: Path) -> Iterator[Daemon]:
    with running(tmp_path, "[realtime]\nthrottled = delegate\n") as d:
        yield d


def node_json() -> dict[str, Any]:
    return json.loads(NODE_JSON.read_text())


def rt_domain(domains: Any, suffix: str, mask: str = "0") -> Any:
    xml = render_here(domains.probe_xml(suffix, vcpus=2, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata(mask=mask)))
    dom = domains.define(xml)
    domains.start(dom)
    return dom


def policy(tid: int) -> tuple[int, int]:
    policy = os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK
    return policy, os.sched_getparam(tid).sched_priority


def test_sd_notify_ready_watchdog_status_reload_stop(numahookd: Daemon) -> None:
    n = numahookd.notify
    ready = n.wait_for("READY=1")
    assert "STATUS=" in n.messages[ready]
    n.wait_for("WATCHDOG=1", timeout=5, after=ready)
    mark = len(n.messages)
    numahookd.signal(signal.SIGHUP)
    reloading = n.wait_for("RELOADING=1", after=mark)
    assert "MONOTONIC_USEC=" in n.messages[reloading]
    n.wait_for("READY=1", after=reloading)
    n.wait_for("STATUS=", after=mark)
    mark = len(n.messages)
    numahookd.signal(signal.SIGTERM)
    n.wait_for("STOPPING=1", after=mark)
    assert numahookd.proc is not None and numahookd.proc.wait(timeout=20) == 0


def test_reload_keeps_the_domain_counts_in_status(numahookd: Daemon, domains: Any) -> None:
    """Every STATUS= of a reload carries the counts: the READY=1 that ends it said
    "0 managed domains, 0 running" until the next reconcile pass."""
    xml = render_here(domains.probe_xml("status", vcpus=1, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata()))
    domains.start(domains.define(xml))
    n = numahookd.notify
    n.wait_for(", 1 running", timeout=30)  # numahookd has counted it
    mark = len(n.messages)
    numahookd.signal(signal.SIGHUP)
    ready = n.wait_for("READY=1", after=n.wait_for("RELOADING=1", after=mark))
    statuses = [m for m in n.messages[mark:ready + 1] if "STATUS=" in m]
    assert statuses, n.messages[mark:]
    assert all(", 1 running" in m for m in statuses), statuses


def test_bad_config_on_reload_keeps_the_old_one(numahookd: Daemon) -> None:
    numahookd.conf.write_text("[features]\nNUMA = perhaps\n")
    mark = len(numahookd.notify.messages)
    numahookd.signal(signal.SIGHUP)
    numahookd.notify.wait_for("READY=1", after=mark)
    assert numahookd.proc is not None and numahookd.proc.poll() is None
    assert "keeping the configuration in force" in numahookd.logtext()


def test_bad_config_at_start_stops_with_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("[realtime]\nthrottled = sometimes\n")
    proc = subprocess.run([sys.executable, "-m", "numahook.daemon.main", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 78  # EX_CONFIG: the unit's RestartPreventExitStatus=
    assert proc.stderr.strip().splitlines() == [
        f"numahookd: {conf}:2: [realtime] throttled: 'sometimes' is not valid; set it to refuse "
        "or delegate"]


def test_status_follows_the_rt_sysctl(numahookd: Daemon) -> None:
    original = SYSCTL.read_text().strip()
    try:
        for value, capable in (("-1", True), ("950000", False), ("-1", True)):
            env.set_value("kernel.sched_rt_runtime_us", value)
            numahookd.signal(signal.SIGHUP)
            wait_until(lambda c=capable: node_json()["node"]["realtime_capable"] is c,
                       timeout=10, what=f"node.json realtime_capable={capable}")
            # KubeVirt's semantics: the label exists only on a capable node
            def labelled(c: bool = capable) -> bool:
                lines = (numahookd.nfd / "numahook").read_text().splitlines()
                return ("numahook.io/realtime=true" in lines) is c

            wait_until(labelled, timeout=10, what=f"the realtime label present={capable}")
            metric = f"numahook_node_realtime_capable {1 if capable else 0}"
            wait_until(lambda m=metric: m in (numahookd.prom / "numahook.prom").read_text(),
                       timeout=10, what=metric)
    finally:
        SYSCTL.write_text(original)


def test_published_files_pass_their_linters_and_go_when_it_stops(numahookd: Daemon,
                                                                domains: Any) -> None:
    """promtool and the JSON Schema on what a real numahookd wrote; nothing stale after it."""
    from tests.support.promtool import lint
    from tests.support.schemas import validate

    rt_domain(domains, "published")  # a running managed domain in node.json and the metrics
    prom, nfd = numahookd.prom / "numahook.prom", numahookd.nfd / "numahook"
    wait_until(lambda: any(d.get("state") == "running" for d in node_json().get("domains", ())),
               timeout=20, what="node.json to list the running domain")
    wait_until(prom.exists, timeout=10, what="numahook.prom")
    text = prom.read_text()
    proc = lint(text)
    assert proc.returncode == 0, f"promtool: {proc.stdout}{proc.stderr}\n{text}"
    assert "numahook_build_info{version=" in text
    validate("node-status", node_json())
    numahookd.signal(signal.SIGTERM)
    assert numahookd.proc is not None and numahookd.proc.wait(timeout=20) == 0
    assert not prom.exists(), "numahook.prom outlived numahookd"
    assert not nfd.exists(), "the NFD labels outlived numahookd"


def test_define_ends_rendered_and_starts_first_time(numahookd: Daemon, domains: Any,
                                                    conn: Any) -> None:
    import libvirt

    xml = domains.probe_xml("define", vcpus=2, memory_mib=128, hugepage_kib=2048,
                            extra=metadata())
    assert "vcpupin" not in xml
    dom = domains.define(xml)  # plain virsh define of an opted-in, unrendered domain
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE
    wait_until(lambda: "vcpupin" in conn.lookupByName(dom.name()).XMLDesc(flags), timeout=15,
               what="numahookd to render the definition")
    persistent = conn.lookupByName(dom.name()).XMLDesc(flags)
    assert "numahook:rendered" in persistent or "rendered digest" in persistent
    domains.start(dom.name())  # the first attempt passes the hook's gate
    text = guest.wait_for_report(conn.lookupByName(dom.name()), until_off=True,
                                 timeout=guest.BOOT_TIMEOUT)
    assert parse_report(text).nodes[0].cpus == frozenset({0, 1})
    assert "redefined" in numahookd.logtext()


def test_fifo_reset_by_hand_is_reapplied(numahookd: Daemon, domains: Any) -> None:
    if not rtsched.needs_group_budget():
        pytest.skip("no RT group budget needed here")
    dom = rt_domain(domains, "reset")
    _, tids = guest.vcpu_threads(dom.name())
    assert policy(tids[0]) == (os.SCHED_FIFO, 1)
    os.sched_setscheduler(tids[0], os.SCHED_OTHER, os.sched_param(0))
    assert policy(tids[0])[0] == os.SCHED_OTHER
    wait_until(lambda: policy(tids[0]) == (os.SCHED_FIFO, 1), timeout=5,
               what="numahookd to re-apply SCHED_FIFO")
    assert policy(tids[1]) == (os.SCHED_OTHER, 0)


def test_kvm_pit_thread_moved_by_hand_is_put_back(numahookd: Daemon, domains: Any) -> None:
    """numahookd's backstop: the kvm-pit kernel thread of a dedicated KVM domain returns
    to vCPU 0's CPU at the next reconcile pass (1 s here) after someone moved it."""
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm: type='kvm' domains cannot start here")
    xml = render_here(domains.probe_xml("pitback", vcpus=1, memory_mib=128, kind="kvm",
                                        machine="q35", extra=metadata(passthrough=False)))
    dom = domains.define(xml)
    domains.start(dom)
    pid, _ = guest.vcpu_threads(dom.name())
    tid = next(int(c.parent.name) for c in Path("/proc").glob("[0-9]*/comm")
               if _comm(c) == f"kvm-pit/{pid}")
    vcpu0 = {i for i, on in enumerate(dom.vcpuPinInfo()[0]) if on}
    assert os.sched_getaffinity(tid) == vcpu0
    everywhere = set(range(os.cpu_count() or 1))
    os.sched_setaffinity(tid, everywhere)
    assert os.sched_getaffinity(tid) == everywhere != vcpu0
    wait_until(lambda: os.sched_getaffinity(tid) == vcpu0, timeout=5,
               what="numahookd to put kvm-pit back on vCPU 0's CPU")
    assert "numahookd put it back" in numahookd.logtext()


def _comm(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def test_kill9_and_restart_reconciles_every_time(numahookd: Daemon, domains: Any) -> None:
    dom = rt_domain(domains, "kill9")
    _, tids = guest.vcpu_threads(dom.name())
    state = StateDir()
    pages_running = hugepages_2m()
    node0 = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages")
    for round_ in range(3):
        numahookd.kill9()
        # what a crash mid-prepare leaves: pages added and a claim of a domain never started
        orphan = f"00000000-0000-4000-8000-00000000000{round_}"
        node0.write_text(str(int(node0.read_text()) + 2))
        with state.lock(5):
            state.save(claims.make(uuid=orphan, name=f"crashed{round_}", cpus=frozenset(),
                             hugepages_added={(0, 2048): 2}, phase="running"))
        os.sched_setscheduler(tids[0], os.SCHED_OTHER, os.sched_param(0))
        numahookd.start()
        wait_until(lambda o=orphan: not (CLAIMS / f"{o}.json").exists(), timeout=10,
                   what="the orphaned claim to be released")
        wait_until(lambda: hugepages_2m() == pages_running, timeout=10,
                   what="the orphan's hugepages to be given back")
        wait_until(lambda: policy(tids[0]) == (os.SCHED_FIFO, 1), timeout=10,
                   what="realtime back in force")
        assert dom.isActive()
        assert [p for p in claim_files() if dom.name() in p.read_text()]


def test_daemon_survives_a_libvirtd_restart(numahookd: Daemon, domains: Any) -> None:
    import libvirt

    daemons.restart_daemon("libvirtd")
    domains.conn = daemons.connect()
    wait_until(lambda: numahookd.logtext().count("connected to qemu:///system") >= 2,
               timeout=40, what="numahookd to reconnect")
    # libvirt's close reason in words (it said "(reason 1)")
    assert ("lost the connection to libvirt: libvirtd closed it (stopped or restarted); "
            "reconnecting") in numahookd.logtext()
    dom = domains.define(domains.probe_xml("afterrestart", vcpus=1, memory_mib=128,
                                           hugepage_kib=2048, extra=metadata()))
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE
    wait_until(lambda: "vcpupin" in dom.XMLDesc(flags), timeout=15,
               what="a DEFINED event handled after the restart")


@pytest.mark.parametrize("throttled", ["refuse", "delegate"])
def test_sysctl_flip_under_fifo_threads_never_stalls_them(lab: Any, tmp_path: Path,
                                                          domains: Any, throttled: str) -> None:
    """-1 -> 950000 under FIFO vCPUs in zero-budget groups: delegate at once, or demote."""
    if rtsched.cpu_controller() is None:
        pytest.skip("no cgroup v1 cpu controller: RT group scheduling is not in play")
    original = SYSCTL.read_text().strip()
    d = Daemon(tmp_path, throttled=throttled)
    try:
        env.set_value("kernel.sched_rt_runtime_us", "-1")
        with hook_config(f"[realtime]\nthrottled = {throttled}\n"):
            xml = render_here(domains.probe_xml("flip", vcpus=2, memory_mib=128,
                                                hugepage_kib=2048, cmdline=HOLD,
                                                extra=metadata(mask="0")))
            assert "<vcpusched" in xml  # a real-time capable node: libvirt sets FIFO itself
            dom = domains.define(xml)
            domains.start(dom)
            _, tids = guest.vcpu_threads(dom.name())
            assert policy(tids[0]) == (os.SCHED_FIFO, 1)
            d.start()
            SYSCTL.write_text("950000")
            if throttled == "delegate":
                wait_until(lambda: not rtsched.unbudgeted_rt_threads([tids[0]]), timeout=5,
                           what="a budget delegated to the FIFO vCPU")
                assert policy(tids[0]) == (os.SCHED_FIFO, 1)
            else:
                wait_until(lambda: policy(tids[0])[0] == os.SCHED_OTHER, timeout=5,
                           what="the stalled FIFO vCPU to be demoted")
                assert "demoted to SCHED_OTHER" in d.logtext()
    finally:
        SYSCTL.write_text(original)
        d.stop()
        d.notify.close()


def test_realtime_vcpus_are_fifo_before_the_started_hook_runs(numahookd: Daemon, domains: Any,
                                                             tmp_path: Path) -> None:
    """On a throttled node the daemon applies realtime as libvirt moves the vCPU threads
    into their cgroups, so FIFO does not wait ~100 ms for the started hook's Python.

    It races libvirt, which goes on to the started hook without waiting (about 25 ms
    later here), so a loaded host may lose a round: then the hook does the work as
    before. One start in three must show the daemon ahead; every start must end right.
    """
    if not rtsched.needs_group_budget():
        pytest.skip("needs RT group scheduling with throttling on (sysctl >= 0)")
    rounds = []
    for attempt in range(3):
        with started_probe(tmp_path / f"started-{attempt}.log") as log:
            dom = rt_domain(domains, f"early{attempt}", mask="0")
        seen = dict(line.split(" ")[1:3] for line in log.read_text().splitlines()
                    if line.startswith(dom.name() + " "))
        assert seen.keys() == {"vcpu0", "vcpu1"}, log.read_text()
        assert seen["vcpu1"] == "SCHED_OTHER", seen  # never a vCPU outside the mask
        _, tids = guest.vcpu_threads(dom.name())
        assert policy(tids[0]) == (os.SCHED_FIFO, 1) and policy(tids[1])[0] == os.SCHED_OTHER
        assert not rtsched.unbudgeted_rt_threads([tids[0]])
        claim = StateDir().load(dom.UUIDString())
        assert claim is not None and claim.phase == "running" and claims.budget(claim)
        rounds.append(seen["vcpu0"].startswith("SCHED_FIFO"))
        if rounds[-1]:  # numahookd applied it: it says so for the hook's fast path
            assert claim.verified_pid == guest.vcpu_threads(dom.name())[0]
        domains.stop(dom)
        if rounds[-1]:
            break
    assert any(rounds), f"vCPU 0 was not FIFO yet when started began, in {len(rounds)} starts"
    assert "action=realtime-early" in numahookd.logtext()


def test_early_realtime_covers_the_isolated_emulator_thread(numahookd: Daemon,
                                                            domains: Any) -> None:
    """The daemon budgets the emulator's group with the vCPUs', as the started hook would:
    budgeting the vCPUs alone first would leave the emulator nothing when the hook runs."""
    if not rtsched.needs_group_budget():
        pytest.skip("needs RT group scheduling with throttling on (sysctl >= 0)")
    xml = render_here(domains.probe_xml("earlyemu", vcpus=1, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata(mask="0", isolate=True)))
    dom = domains.define(xml)
    domains.start(dom)  # the started hook fails the start if it cannot apply both
    pid, tids = guest.vcpu_threads(dom.name())
    assert pid is not None
    for tid in (tids[0], pid):
        assert policy(tid) == (os.SCHED_FIFO, 1)
    assert not rtsched.unbudgeted_rt_threads([tids[0], pid])
    wait_until(lambda: f"domain={dom.name()} action=realtime-early" in numahookd.logtext(),
               timeout=5, what="the daemon's early apply")
    line = next(ln for ln in numahookd.logtext().splitlines()
                if f"domain={dom.name()} action=realtime-early" in ln)
    assert "emulator=True" in line
    # what numahookd's sysctl watch relies on: the kernel refuses to zero the budget of a
    # group holding a real-time thread, so a stall can only begin at a sysctl flip
    found = rtsched.cpu_controller()
    assert found is not None
    group = Path(found) / procfs.cgroup_of(tids[0], "cpu").lstrip("/")
    with pytest.raises(OSError) as refused:
        (group / "cpu.rt_runtime_us").write_text("0")
    assert refused.value.errno == errno.EBUSY


def _start_with_vcpu0(domains: Any) -> Any:
    """A real-time domain (mask 0-1) started with vCPU 0 of 2 (``<vcpu current='1'>``)."""
    xml = domains.probe_xml("hotplug", vcpus=2, memory_mib=128, hugepage_kib=2048,
                            cmdline=HOLD, extra=metadata(mask="0-1"))
    assert "<vcpu placement='static'>2</vcpu>" in xml
    xml = xml.replace("<vcpu placement='static'>2</vcpu>",
                      "<vcpu placement='static' current='1'>2</vcpu>")
    dom = domains.define(render_here(xml))
    domains.start(dom)
    _, tids = guest.vcpu_threads(dom.name())
    assert set(tids) == {0} and policy(tids[0]) == (os.SCHED_FIFO, 1)
    return dom


def _hot_plug_vcpu1(domains: Any, dom: Any = None) -> tuple[Any, dict[int, int]]:
    """vCPU 1 plugged live into ``dom`` (by default one just started with vCPU 0 only);
    returns it with its vCPU threads once the daemon made vCPU 1 FIFO."""
    import libvirt

    dom = dom or _start_with_vcpu0(domains)
    dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def plugged_and_fifo() -> bool:
        now = guest.vcpu_threads(dom.name())[1]
        return 1 in now and policy(now[1]) == (os.SCHED_FIFO, 1)

    wait_until(plugged_and_fifo, timeout=10, what="the hot-plugged vCPU 1 at FIFO 1")
    return dom, guest.vcpu_threads(dom.name())[1]


def test_a_hot_plugged_real_time_vcpu_becomes_fifo(numahookd: Daemon, domains: Any) -> None:
    """vCPU 1 is plugged after start: the daemon's pass makes it FIFO, with a budget of
    its own where one must be delegated."""
    _, tids = _hot_plug_vcpu1(domains)
    assert policy(tids[0]) == (os.SCHED_FIFO, 1)
    assert not rtsched.unbudgeted_rt_threads([tids[0], tids[1]])


def test_a_hot_plugged_vcpu_gets_an_even_share_of_the_budget(numahookd: Daemon,
                                                             domains: Any) -> None:
    if not rtsched.needs_group_budget():
        pytest.skip("needs RT group scheduling with throttling on (sysctl >= 0)")
    _, tids = _hot_plug_vcpu1(domains)
    cpu = rtsched.cpu_controller()
    assert cpu is not None
    budgets = [int((Path(cpu) / procfs.cgroup_of(t, "cpu").lstrip("/") / "cpu.rt_runtime_us")
                   .read_text()) for t in (tids[0], tids[1])]
    assert budgets[0] == budgets[1], budgets


def test_the_vcpu_watch_covers_domains_running_before_numahookd(lab: Any, domains: Any,
                                                                tmp_path: Path) -> None:
    """A domain started before numahookd: its hot-plugged vCPU is made FIFO by the vCPU
    watch. The reconcile pass runs once an hour here, so it cannot be what did it."""
    if not rtsched.needs_group_budget():
        pytest.skip("needs RT group scheduling with throttling on (sysctl >= 0)")
    with hook_config("[realtime]\nthrottled = delegate\n"):
        dom = _start_with_vcpu0(domains)
        d = Daemon(tmp_path, reconcile=3600)
        d.start()  # READY=1: the vCPU watch is up by then
        try:
            _, tids = _hot_plug_vcpu1(domains, dom)
            assert not rtsched.unbudgeted_rt_threads([tids[0], tids[1]])
            assert "not SCHED_FIFO 1; re-applying" in d.logtext()
        finally:
            d.stop()
            d.notify.close()
            print(d.logtext()[-3000:], file=sys.stderr)
