"""Faults: each gives one clear message and leaves a clean state (issue 8, part 4).

Real faults where the machine can make them without mocks: an immutable file (EPERM even
for root), a full tmpfs for the state dir, a directory or a dangling link where a sysfs
file should be, a real EINVAL from the kernel's cgroup bandwidth rules. Failure injection
(monkeypatch) only where nothing real can make the fault: a kernel delivering fewer
hugepages than asked, a journal write failing at an exact position, a libvirt connection
dropping in the middle of a call.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from numahook import cli
from numahook.daemon.reconcile import Reconciler
from numahook.errors import HostError, NumahookError, Refusal, StateError
from numahook.host import fsutil, hugepages, rtsched
from numahook.node import probe, report
from numahook.ops import domains, lifecycle, redefine
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.support import claims

from .conftest import (
    FIGURES,
    PAGE_KIB,
    PY,
    ROOT,
    Host,
    RtGroup,
    domain_xml,
    make_host,
    prerender,
    status_xml,
    uuid_of,
)

POOL = (0, PAGE_KIB)
UUID = uuid_of(300)
NAME = "fault"


def fault(name: str) -> None:
    FIGURES.add("faults", name)


@contextlib.contextmanager
def logged(level: int = logging.INFO) -> Iterator[list[str]]:
    """The messages numahook logs meanwhile (independent of pytest's logging plugin)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Keep(level)
    logger = logging.getLogger("numahook")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def one_line_refusal(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("numahook: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    return proc.stderr


def clean(host: Host, baseline: int) -> None:
    assert host.claim_files() == [], host.claim_files()
    assert host.nr() == baseline
    leftovers = [p.name for p in host.state.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path / "host", admin_pages=1)


def rendered(host: Host, pages: int = 3, cpus: frozenset[int] = frozenset({1}), **kw: Any) -> str:
    return prerender(host.cfg(), domain_xml(NAME, UUID, pages=pages, **kw), cpus)


# --------------------------------------------------------------------------- hugepages


def test_kernel_delivers_fewer_pages_than_asked(host: Host,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel finds only 1 more page, even after compaction: refuse, give it back."""
    fault("hugepages-short-delivery")
    baseline = host.nr()
    xml = rendered(host, pages=4)
    real = fsutil.write_knob
    compactions = []

    def stingy(path: fsutil.PathLike, value: str, hint: Any = None) -> None:
        p = Path(path)
        if p.name == "compact_memory":
            compactions.append(value)
        if p.name == "nr_hugepages":
            now = int(p.read_text())
            value = str(min(int(value), max(now, baseline + 1)))
        real(path, value, hint)

    monkeypatch.setattr(hugepages.fsutil, "write_knob", stingy)
    with pytest.raises(Refusal) as exc:
        lifecycle.admit(xml, host.cfg(), host.statedir())
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("not enough 2048 kB hugepages: node 0 needs 4 and has 2 free "
                          "(the kernel gave 1 of 3 asked)"), msg
    assert compactions == ["1"]  # compacted once and retried
    clean(host, baseline)


def test_immutable_nr_hugepages_refuses_with_eperm(host: Host) -> None:
    """A real EPERM for root: the knob file is immutable (chattr +i)."""
    fault("hugepages-write-eperm")
    baseline = host.nr()
    xml = rendered(host)
    knob = host.pool / "nr_hugepages"
    if subprocess.run(["chattr", "+i", str(knob)], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip("this file system has no immutable attribute (chattr +i)")
    try:
        proc = host.hook(xml, NAME, "prepare", "begin")
    finally:
        subprocess.run(["chattr", "-i", str(knob)], check=True)
    one_line_refusal(proc, "nr_hugepages failed: Operation not permitted")
    clean(host, baseline)


@pytest.mark.parametrize("how", ["directory", "dangling-link"])
@pytest.mark.parametrize("what", ["devices/system/cpu/online",
                                  "devices/system/node/node0/hugepages/hugepages-2048kB/"
                                  "free_hugepages"])
def test_unreadable_sysfs_file_at_prepare(host: Host, how: str, what: str) -> None:
    fault(f"sysfs-unreadable-{how}")
    baseline = host.nr()
    xml = rendered(host)
    path = host.sysfs / what
    path.unlink()
    if how == "directory":
        path.mkdir()
    else:
        os.symlink("no-such-file", path)
    msg = one_line_refusal(host.hook(xml, NAME, "prepare", "begin"))
    assert what.rsplit("/", 1)[1] in msg, msg
    clean(host, baseline)


def test_unreadable_pool_at_release_keeps_an_honest_claim(host: Host) -> None:
    """Release cannot read the pool: it exits 0 (libvirt ignores it), keeps the claim as
    it is, and the daemon gives everything back once the file is readable again."""
    fault("sysfs-unreadable-at-release")
    baseline = host.nr()
    xml = rendered(host)
    assert host.hook(xml, NAME, "prepare", "begin").returncode == 0
    held = host.nr() - baseline
    assert held == 2
    knob = host.pool / "nr_hugepages"
    keep = knob.read_text()
    knob.unlink()
    knob.mkdir()
    try:
        proc = host.hook(xml, NAME, "release", "end")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        claim = host.statedir().load(UUID)
        assert claim is not None and claims.added(claim) == {POOL: held}
        assert "giving back" in host.log.read_text()
    finally:
        knob.rmdir()
        knob.write_text(keep)
    Reconciler(host.cfg(), host.statedir()).orphans(now=time.time() + 10_000)
    clean(host, baseline)


def test_missing_hugetlbfs_mount_is_reported_and_leaves_nothing_behind(host: Host) -> None:
    """numahook cannot see the mount at prepare (it does not check it); the node report
    names it with the fix, libvirt refuses the start itself, and release cleans up."""
    fault("hugetlbfs-missing")
    baseline = host.nr()
    (host.proc / "mounts").write_text("sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\n")
    cap = probe.probe(host.cfg(), libvirt_reachable=None)
    why = [r for r in report.reasons(cap, str(host.config)) if "hugetlbfs" in r]
    assert len(why) == 1 and "hugetlbfs /dev/hugepages hugetlbfs pagesize=2M" in why[0], \
        report.reasons(cap)
    xml = rendered(host)
    assert host.hook(xml, NAME, "prepare", "begin").returncode == 0
    # libvirt: "hugetlbfs filesystem is not mounted or disabled by administrator config"
    assert host.hook(xml, NAME, "stopped", "end").returncode == 0
    assert host.hook(xml, NAME, "release", "end").returncode == 0
    clean(host, baseline)


# --------------------------------------------------------------------------- state dir


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "numahook-test",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Fill the file system to the last byte."""
    ballast = fs / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return ballast


def _host_on(tmp_path: Path, fs: Path) -> Host:
    h = make_host(tmp_path / "host", admin_pages=1)
    text = h.config.read_text().replace(f"state_dir = {h.state}", f"state_dir = {fs}/state")
    h.config.write_text(text)
    h.state = fs / "state"
    return h


def test_full_state_filesystem_refuses_the_start_cleanly(tmp_path: Path) -> None:
    fault("state-dir-full-at-prepare")
    with small_tmpfs(tmp_path / "fs") as fs:
        h = _host_on(tmp_path, fs)
        baseline = h.nr()
        xml = rendered(h)
        fill(fs)
        proc = h.hook(xml, NAME, "prepare", "begin")
        one_line_refusal(proc, "No space left on device", "free space in")
        clean(h, baseline)


def test_full_state_filesystem_at_release_keeps_the_claim_until_space_returns(
        tmp_path: Path) -> None:
    fault("state-dir-full-at-release")
    with small_tmpfs(tmp_path / "fs") as fs:
        h = _host_on(tmp_path, fs)
        baseline = h.nr()
        xml = rendered(h)
        assert h.hook(xml, NAME, "prepare", "begin").returncode == 0
        ballast = fill(fs)
        proc = h.hook(xml, NAME, "release", "end")
        assert proc.returncode == 0 and proc.stderr == ""
        claim = h.statedir().load(UUID)
        assert claim is not None, "the claim went away although its pages are still held"
        assert h.nr() - baseline == claims.added(claim).get(POOL, 0) == 2
        ballast.unlink()  # the operator frees space; the daemon's next pass cleans up
        Reconciler(h.cfg(), h.statedir()).orphans(now=time.time() + 10_000)
        clean(h, baseline)


class JournalFault:
    """StateDir.save fails with ENOSPC at the Nth call (once, or from then on)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int, persistent: bool) -> None:
        self.at, self.persistent, self.calls, self.fired = at, persistent, 0, 0
        self.on = True
        real = StateDir.save

        def save(sd: StateDir, claim: Claim) -> None:
            self.calls += 1
            if self.on and (self.calls == at or (persistent and self.calls > at)):
                self.fired += 1
                raise StateError(f"writing {sd.claims_dir}/{claim.uuid}.json failed: No space "
                                 f"left on device; free space in {sd.claims_dir} or fix its "
                                 "permissions")
            real(sd, claim)

        monkeypatch.setattr(StateDir, "save", save)


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("phase", ["prepare", "release"])
def test_journal_write_failing_at_every_position(host: Host, monkeypatch: pytest.MonkeyPatch,
                                                 phase: str, persistent: bool) -> None:
    """ENOSPC at the 1st, 2nd, ... claim write of a start or a stop; every time the record
    stays an honest account of the pool, and the next pass gives everything back."""
    baseline = host.nr()
    xml = rendered(host)
    positions = 0
    for at in range(1, 20):
        sd, cfg = host.statedir(), host.cfg()
        if phase == "release":
            lifecycle.admit(xml, cfg, sd)
        jf = JournalFault(monkeypatch, at, persistent)
        try:
            if phase == "prepare":
                lifecycle.admit(xml, cfg, sd)
            else:
                lifecycle.release(UUID, NAME, cfg, sd)
        except NumahookError as exc:
            assert "No space left on device" in str(exc) and "\n" not in str(exc)
        jf.on = False
        if not jf.fired:
            lifecycle.release(UUID, NAME, cfg, sd)
            clean(host, baseline)
            break
        positions += 1
        fault(f"journal-enospc-{phase}-{'once' if not persistent else 'persistent'}")
        claim = sd.load(UUID)
        gained = host.nr() - baseline
        if claim is None:
            assert gained == 0
        else:
            settled = hugepages.settle(claims.added(claim), claims.pending(claim),
                                       str(host.sysfs))
            assert settled.get(POOL, 0) == gained, (at, claim, gained)
        Reconciler(cfg, sd).orphans(now=time.time() + 10_000)
        clean(host, baseline)
    assert positions >= 2


# --------------------------------------------------------------------------- cgroups


def test_immutable_rt_runtime_file_refuses_with_eperm(tmp_path: Path) -> None:
    """A cgroup file that refuses the write (EPERM), on a fixture cpu tree; real threads."""
    fault("cgroup-write-eperm")
    h = make_host(tmp_path / "host", admin_pages=1,
                  sections={"realtime": {"throttled": "delegate", "max_budget_us": 20000}})
    cpu = h.cgroup / "cpu,cpuacct"
    dom = "machine/qemu-1-fault.libvirt-qemu"
    for g in ("", "machine", dom, f"{dom}/vcpu0", f"{dom}/vcpu1"):
        d = cpu / g
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.shares").write_text("1024\n")
        (d / "cpu.rt_runtime_us").write_text("950000\n" if not g else "0\n")
        (d / "cpu.rt_period_us").write_text("1000000\n")
    assert rtsched.needs_group_budget(str(h.cgroup), str(h.proc))
    sleeps = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    victim = cpu / dom / "vcpu1" / "cpu.rt_runtime_us"
    try:
        for i, p in enumerate(sleeps):
            d = h.proc / str(p.pid)
            d.mkdir()
            (d / "cgroup").write_text(f"4:cpu,cpuacct:/{dom}/vcpu{i}\n0::/\n")
        xml = prerender(h.cfg(), domain_xml(NAME, UUID, pages=1, vcpus=2, realtime=True),
                        {0, 1})
        (h.run / f"{NAME}.xml").write_text(status_xml(xml, sleeps[0].pid,
                                                      {0: sleeps[0].pid, 1: sleeps[1].pid}))
        if subprocess.run(["chattr", "+i", str(victim)], capture_output=True,
                          check=False).returncode != 0:
            pytest.skip("this file system has no immutable attribute (chattr +i)")
        try:
            ok = h.hook(xml, NAME, "prepare", "begin")
            assert ok.returncode == 0, ok.stderr
            proc = h.hook(xml, NAME, "started", "begin")
        finally:
            subprocess.run(["chattr", "-i", str(victim)], check=True)
        one_line_refusal(proc, "cpu.rt_runtime_us failed: Operation not permitted")
        rt = [int((cpu / g / "cpu.rt_runtime_us").read_text())
              for g in ("machine", dom, f"{dom}/vcpu0", f"{dom}/vcpu1")]
        assert rt == [0, 0, 0, 0], rt
        assert [os.sched_getscheduler(p.pid) for p in sleeps] == [os.SCHED_OTHER] * 2
        claim = h.statedir().load(UUID)
        assert claim is not None and claims.budget(claim) == ()
        (h.run / f"{NAME}.xml").unlink()
        assert h.hook(xml, NAME, "release", "end").returncode == 0  # libvirt stops the VM
        assert h.claim_files() == []
    finally:
        for p in sleeps:
            p.kill()
            p.wait()


def test_cgroup_write_einval_from_the_kernel(tmp_path: Path, rt_group: RtGroup,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A real EINVAL: between planning and writing, the domain group's period shrinks
    below the runtime to be written (as if another tool changed it meanwhile)."""
    fault("cgroup-write-einval")
    h = make_host(tmp_path / "host", cgroup="real", proc="real", admin_pages=1,
                  sections={"realtime": {"throttled": "delegate", "max_budget_us": 20000}})
    baseline = h.nr()
    xml = prerender(h.cfg(), domain_xml(NAME, UUID, pages=1, vcpus=2, realtime=True), {0, 1})
    assert h.hook(xml, NAME, "prepare", "begin").returncode == 0
    (h.run / f"{NAME}.xml").write_text(status_xml(xml, rt_group.procs[0].pid, rt_group.tids))
    real_plan = rtsched.plan_budget
    dom_period = rt_group.groups[1] / rtsched.PERIOD

    def plan_then_meddle(*args: Any, **kwargs: Any) -> rtsched.BudgetPlan:
        out = real_plan(*args, **kwargs)
        dom_period.write_text("10000")  # 10 ms: the planned 40 ms no longer fits
        return out

    monkeypatch.setattr(rtsched, "plan_budget", plan_then_meddle)
    try:
        with pytest.raises(HostError) as exc:
            lifecycle.tune(xml, h.cfg(), h.statedir())
    finally:
        rt_group.stop_vcpus()
        dom_period.write_text("1000000")
    msg = str(exc.value)
    assert "Invalid argument" in msg and "retry" in msg and "\n" not in msg, msg
    assert rt_group.runtimes() == [0, 0, 0, 0]
    claim = h.statedir().load(UUID)
    assert claim is not None and claims.budget(claim) == ()
    (h.run / f"{NAME}.xml").unlink()
    assert h.hook(xml, NAME, "release", "end").returncode == 0
    clean(h, baseline)


# --------------------------------------------------------------------------- libvirt


def _libvirt() -> Any:
    """libvirt-python, or skip (the fault tests of the daemon and CLI need its error type)."""
    return pytest.importorskip("libvirt")


def dropped() -> Exception:
    """What libvirt-python raises when the daemon's socket goes away mid-call."""
    libvirt = _libvirt()
    exc = libvirt.libvirtError("internal error: client socket is closed")
    exc.err = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC,
               "internal error: client socket is closed", libvirt.VIR_ERR_ERROR, None, None,
               None, -1, -1)
    return exc


class FakeDom:
    def __init__(self, xml: str, drop_in: str = "") -> None:
        self.xml, self.drop_in = xml, drop_in

    def name(self) -> str:
        return NAME

    def UUIDString(self) -> str:
        return UUID

    def XMLDesc(self, flags: int = 0) -> str:
        if self.drop_in == "XMLDesc":
            raise dropped()
        return self.xml


class FakeConn:
    def __init__(self, dom: FakeDom, drop_in: str = "") -> None:
        self.dom, self.drop_in = dom, drop_in
        self.defined: list[str] = []

    def lookupByName(self, name: str) -> FakeDom:
        return self.dom

    def listAllDomains(self, flags: int = 0) -> list[FakeDom]:
        if self.drop_in == "listAllDomains":
            raise dropped()
        return [self.dom]

    def defineXML(self, xml: str) -> None:
        if self.drop_in == "defineXML":
            raise dropped()
        self.defined.append(xml)

    def close(self) -> None:
        pass


def _unrendered(host: Host) -> str:
    return domain_xml(NAME, UUID, pages=1)


@pytest.mark.parametrize("where", ["XMLDesc", "defineXML"])
def test_daemon_rerender_survives_a_connection_dropping(host: Host, where: str) -> None:
    _libvirt()
    fault(f"libvirt-drop-daemon-{where}")
    dom = FakeDom(_unrendered(host), where)
    conn = FakeConn(dom, where)
    r = Reconciler(host.cfg(), host.statedir())
    with logged() as messages:
        r.rerender_inactive(conn, force=True)
    assert conn.defined == [] and r.stats.redefined == 0
    if where == "defineXML":
        assert any("redefining failed: internal error: client socket is closed" in m
                   for m in messages), messages
    assert host.claim_files() == []


def test_daemon_pass_survives_a_connection_dropping_during_listing(host: Host) -> None:
    _libvirt()
    fault("libvirt-drop-daemon-listAllDomains")
    conn = FakeConn(FakeDom(_unrendered(host)), "listAllDomains")
    r = Reconciler(host.cfg(), host.statedir())
    with logged() as messages:
        r.pass_(conn)  # the connection dropped: logged in one line, the pass completes
    assert r.stats.passes == 1
    assert all("\n" not in m for m in messages), messages


@pytest.mark.parametrize("where", ["XMLDesc", "defineXML"])
def test_cli_apply_reports_a_dropped_connection_in_one_line(
        host: Host, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    _libvirt()
    fault(f"libvirt-drop-cli-{where}")
    conn = FakeConn(FakeDom(_unrendered(host), where), where)
    monkeypatch.setattr(domains, "connect", lambda uri, readonly=False: conn)
    args = argparse.Namespace(config=str(host.config), uri=None, name=NAME, sysfs_root=None,
                              cgroup_root=None, proc_root=None, state_dir=None,
                              libvirt_run=None)
    with pytest.raises(HostError):
        cli.cmd_apply(args)


def test_redefine_apply_leaves_no_claim_when_the_connection_drops(host: Host) -> None:
    fault("libvirt-drop-redefine")
    conn = FakeConn(FakeDom(_unrendered(host), "defineXML"), "defineXML")
    with pytest.raises(_libvirt().libvirtError):
        redefine.apply(conn, conn.dom, host.cfg(), host.statedir())
    assert host.claim_files() == []


class FakeLoop:
    def __init__(self) -> None:
        self.timers: dict[int, tuple[float, Any]] = {}

    def every(self, seconds: float, callback: Any, name: str) -> int:
        self.timers[len(self.timers) + 1] = (seconds, callback)
        return len(self.timers)

    def cancel(self, timer: int) -> None:
        self.timers.pop(timer, None)

    def watch_fd(self, fd: int, callback: Any, name: str) -> int:
        self.fds = getattr(self, "fds", {})
        self.fds[fd] = callback
        return fd

    def unwatch(self, watch: int) -> None:
        self.fds.pop(watch, None)


def test_daemon_connection_drops_and_reconnects_with_backoff(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fault("libvirt-drop-daemon-connection")
    libvirt = _libvirt()
    from numahook.daemon import connection as connmod

    attempts: list[str] = []

    def refuse(uri: str) -> Any:
        attempts.append(uri)
        raise libvirt.libvirtError("Failed to connect socket to '/var/run/libvirt/"
                                   "libvirt-sock': Connection refused")

    monkeypatch.setattr(connmod.libvirt, "open", refuse)
    loop = FakeLoop()
    events: list[str] = []
    c = connmod.Connection("qemu:///system", loop, lambda *a: None,  # type: ignore[arg-type]
                           lambda: events.append("up"), lambda: events.append("lost"))
    def attempt() -> None:
        """Each attempt runs in a thread (connecting can wait without a bound) and the
        loop takes its outcome from the pipe: do what the loop would."""
        pending = c._pending
        assert pending is not None
        pending[0].join(timeout=30)
        ((finish),) = loop.fds.values()
        finish()

    with logged(logging.WARNING) as messages:
        c.open()
        attempt()
        delays = []
        for _ in range(7):  # each retry fires, fails and schedules the next, longer one
            ((_timer, (delay, retry)),) = loop.timers.items()
            delays.append(delay)
            retry()
            attempt()
    assert delays == [1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0]
    assert not c.up and events == [] and len(attempts) == 8
    assert len(messages) == 8 and all("\n" not in m for m in messages), messages
    c.conn = object()
    c._closed(None, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)  # dropped while up
    assert not c.up and events == ["lost"] and len(loop.timers) >= 1


def test_a_libvirtd_that_never_answers_does_not_hold_the_daemon_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """virConnectOpen waits for the server's answer without a bound (a stopped libvirtd
    accepts and never answers): the attempt runs in its thread, the loop goes on, and a
    retry timer that fires meanwhile reports the wait instead of stacking attempts."""
    fault("libvirt-daemon-connect-hangs")
    libvirt = _libvirt()
    from numahook.daemon import connection as connmod

    answer = threading.Event()
    attempts: list[str] = []

    def hang(uri: str) -> Any:
        attempts.append(uri)
        answer.wait(timeout=60)
        raise libvirt.libvirtError("Cannot recv data: Connection reset by peer")

    monkeypatch.setattr(connmod.libvirt, "open", hang)
    loop = FakeLoop()
    c = connmod.Connection("qemu:///system", loop, lambda *a: None,  # type: ignore[arg-type]
                           lambda: None, lambda: None)
    with logged(logging.WARNING) as messages:
        c.open()  # returns at once: the loop is free
        assert c.connecting_for is not None and not c.up
        ((_timer, (delay, retry)),) = loop.timers.items()
        assert delay == connmod.CONNECT_WARN
        retry()
        assert len(attempts) == 1, "a second attempt was stacked on the hung one"
        assert any("has not answered" in m for m in messages), messages
        answer.set()
        pending = c._pending
        assert pending is not None
        pending[0].join(timeout=30)
        ((finish),) = loop.fds.values()
        finish()
    assert c.connecting_for is None and not c.up
    assert any("cannot reach libvirt" in m for m in messages), messages
    c.close()


def test_hook_never_calls_libvirt(host: Host) -> None:
    """No connection can drop under the hook: it never imports libvirt (docs/architecture.md)."""
    fault("libvirt-hook-no-connection")
    xml = rendered(host)
    code = ("import io, sys\n"
            "from numahook.hook import main\n"
            "for op, sub in (('prepare', 'begin'), ('started', 'begin'), ('release', 'end')):\n"
            "    sys.stdin = io.StringIO(sys.argv[1])\n"
            "    assert main.main(['fault', op, sub, '-']) == 0, op\n"
            "print('libvirt' in sys.modules)\n")
    env = host.env()
    out = subprocess.run([PY, "-c", code, xml],
                         env={**env, "PYTHONPATH": env["NUMAHOOK_PYTHONPATH"]},
                         capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "False", out.stderr
    assert host.claim_files() == []
