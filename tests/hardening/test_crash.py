"""Crashes: the hook killed with SIGKILL at every step of prepare, started and release
(issue 8, part 3).

``NUMAHOOK_FAULT`` (numahook.faults) makes the real hook (``libvirt-hooks/numahook``) kill
itself at a named point. After each kill the test checks that the claim record is an
honest journal of what the dead process changed, then lets one of the three things that
follow a crash on a host restore a consistent state:

- ``libvirt``: what libvirtd does next by itself: after a failed ``prepare`` or
  ``started`` it stops the domain and runs ``stopped end -`` and ``release end -``;
- ``next-start``: the same domain is started again (``prepare`` rolls the old claim back
  first), then stopped;
- ``daemon``: numahookd's orphan pass (``Reconciler.orphans``) once the start grace is over.

Afterwards: ``nr_hugepages`` at its starting value, no claim left, every
``cpu.rt_runtime_us`` we raised back at 0. Hugepages run on a fixture sysfs whose pool
behaves like an idle kernel pool, and again on this machine's real node-0 pool; RT budget
runs on a real cgroup v1 group with ``sleep`` processes standing in for vCPU threads.

Restarting libvirtd and numahookd under running VMs needs the lab; the lead runs that.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from numahook.daemon.reconcile import Reconciler
from numahook.host import hugepages
from tests.support import claims

from .conftest import (
    FIGURES,
    KILLED,
    LONG,
    PAGE_KIB,
    Host,
    RealPool,
    RtGroup,
    domain_xml,
    make_host,
    prerender,
    scaled,
    skip_if_disturbed,
    status_xml,
    uuid_of,
)

POOL = (0, PAGE_KIB)
PAGES = 3
UUID = uuid_of(200)
NAME = "crash"

#: (phase the kill happens in, fault point) for the hugepage side
PREPARE_POINTS = ["admit.claimed", "hugepages.pending", "hugepages.written", "admit.reserved",
                  "admit.phase-reserved"]
RELEASE_POINTS = ["release.before-rollback", "hugepages.pending", "hugepages.written",
                  "rollback.hugepages-undone", "release.after-rollback"]
#: killed while a second prepare rolls back the claim a first one left
REPREPARE_POINTS = ["hugepages.pending", "hugepages.written", "rollback.hugepages-undone"]


@dataclass
class Pool:
    """nr_hugepages of node 0's 2 MiB pool, fixture or real."""

    host: Host
    baseline: int

    def nr(self) -> int:
        return self.host.nr()


def _host(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> tuple[Host, Pool]:
    if kind == "real":
        real: RealPool = request.getfixturevalue("real_pool")
        host = make_host(tmp_path / "host", sysfs="real")
        return host, Pool(host, real.baseline)
    host = make_host(tmp_path / "host", admin_pages=1)
    return host, Pool(host, host.nr())


def _domain(host: Host) -> str:
    """A domain that needs more pages than are free, so every start writes the pool."""
    cpus = {0} if host.sysfs == Path("/sys") else {1}
    return prerender(host.cfg(), domain_xml(NAME, UUID, pages=host.free() + PAGES - 1), cpus)


def _journal_is_honest(host: Host, pool: Pool) -> None:
    """After a kill, the claim (if any) accounts for exactly the pages the pool gained."""
    held = host.claims()
    assert [c.uuid for c in held] in ([], [UUID])
    gained = pool.nr() - pool.baseline
    if not held:
        assert gained == 0
        return
    c = held[0]
    settled = hugepages.settle(claims.added(c), claims.pending(c), str(host.sysfs))
    assert settled.get(POOL, 0) == gained, (c, pool.nr(), pool.baseline)


def _recover(host: Host, xml: str, how: str) -> None:
    if how == "libvirt":
        assert host.hook(xml, NAME, "stopped", "end").returncode == 0
        assert host.hook(xml, NAME, "release", "end").returncode == 0
    elif how == "next-start":
        again = host.hook(xml, NAME, "prepare", "begin")
        assert again.returncode == 0, again.stderr
        claim = host.statedir().load(UUID)
        assert claim is not None and claim.phase == "reserved"
        assert host.hook(xml, NAME, "stopped", "end").returncode == 0
        assert host.hook(xml, NAME, "release", "end").returncode == 0
    else:
        Reconciler(host.cfg(), host.statedir()).orphans(now=time.time() + 10_000)


def _consistent(host: Host, pool: Pool, name: str) -> None:
    FIGURES.add("crash", "recoveries-checked")
    leaked = pool.nr() - pool.baseline
    left = host.claim_files()
    if leaked and host.sysfs == Path("/sys"):
        skip_if_disturbed(name)
    FIGURES.add("crash", "pages-leaked", abs(leaked))
    FIGURES.add("crash", "claims-left", len(left))
    assert leaked == 0, f"{name}: {leaked} pages not given back"
    assert left == [], f"{name}: claims left {left}"


def _killed(proc_rc: int, name: str) -> None:
    assert proc_rc == KILLED, f"{name}: the hook was not killed at its point (exit {proc_rc})"
    FIGURES.add("crash", "kills")


@pytest.mark.parametrize("sysfs", ["fixture", "real"])
@pytest.mark.parametrize("how", ["libvirt", "next-start", "daemon"])
@pytest.mark.parametrize("point", PREPARE_POINTS)
def test_killed_during_prepare(request: pytest.FixtureRequest, tmp_path: Path, sysfs: str,
                               how: str, point: str) -> None:
    host, pool = _host(request, tmp_path, sysfs)
    xml = _domain(host)
    FIGURES.add("crash", f"point:prepare:{point}")
    _killed(host.hook(xml, NAME, "prepare", "begin", fault=point).returncode, point)
    _journal_is_honest(host, pool)
    _recover(host, xml, how)
    _consistent(host, pool, f"prepare {point} then {how}")


@pytest.mark.parametrize("sysfs", ["fixture", "real"])
@pytest.mark.parametrize("how", ["libvirt", "next-start", "daemon"])
@pytest.mark.parametrize("point", RELEASE_POINTS)
def test_killed_during_release(request: pytest.FixtureRequest, tmp_path: Path, sysfs: str,
                               how: str, point: str) -> None:
    """``stopped end -`` is the first teardown call and does the work; ``release`` follows."""
    host, pool = _host(request, tmp_path, sysfs)
    xml = _domain(host)
    ok = host.hook(xml, NAME, "prepare", "begin")
    assert ok.returncode == 0, ok.stderr
    assert host.hook(xml, NAME, "started", "begin").returncode == 0
    FIGURES.add("crash", f"point:release:{point}")
    _killed(host.hook(xml, NAME, "stopped", "end", fault=point).returncode, point)
    _journal_is_honest(host, pool)
    if how == "libvirt":  # libvirt ignores a failed stopped hook and runs release
        assert host.hook(xml, NAME, "release", "end").returncode == 0
    else:
        _recover(host, xml, how)
    _consistent(host, pool, f"release {point} then {how}")


@pytest.mark.parametrize("sysfs", ["fixture", "real"])
@pytest.mark.parametrize("how", ["libvirt", "next-start", "daemon"])
@pytest.mark.parametrize("point", REPREPARE_POINTS)
def test_killed_while_a_new_start_rolls_back_an_old_claim(
        request: pytest.FixtureRequest, tmp_path: Path, sysfs: str, how: str,
        point: str) -> None:
    host, pool = _host(request, tmp_path, sysfs)
    xml = _domain(host)
    assert host.hook(xml, NAME, "prepare", "begin").returncode == 0  # release never ran
    FIGURES.add("crash", f"point:re-prepare:{point}")
    _killed(host.hook(xml, NAME, "prepare", "begin", fault=point).returncode, point)
    _journal_is_honest(host, pool)
    _recover(host, xml, how)
    _consistent(host, pool, f"re-prepare {point} then {how}")


def test_every_fault_point_is_exercised() -> None:
    from numahook import faults

    covered = set(PREPARE_POINTS) | set(RELEASE_POINTS) | set(REPREPARE_POINTS) | {
        p.split("@")[0] for p in RT_STARTED_POINTS + RT_RELEASE_POINTS + POWER_PREPARE_POINTS
        + POWER_RELEASE_POINTS}
    assert covered == set(faults.POINTS)


# --------------------------------------------------------------------------- CPU power

#: each write of the power tunable, the second of each kind too (two CPUs)
POWER_PREPARE_POINTS = ["power.saved", "power.latency-written", "power.latency-written@2",
                        "power.governor-written", "power.governor-written@2"]
#: the power entry is undone first, before the hugepages
POWER_RELEASE_POINTS = ["rollback.power-undone"]
POWER_EL = "<numahook:power idleStates='disable' governor='performance'/>"


def _power_host(tmp_path: Path) -> tuple[Host, str]:
    from tests.fixtures import power

    host = make_host(tmp_path / "host", admin_pages=1)
    power.add_power(host.sysfs, range(4))
    power.add_cpufreq(host.sysfs, [[c] for c in range(4)])
    xml = domain_xml(NAME, UUID, pages=2, vcpus=2).replace(
        "</numahook:cpu>", POWER_EL + "</numahook:cpu>")
    return host, prerender(host.cfg(), xml, {0, 1})


def _power_files(host: Host) -> list[tuple[str, str]]:
    from tests.fixtures import power

    return [(power.latency(host.sysfs, c), power.governor(host.sysfs, c)) for c in range(4)]


def _power_journal_is_honest(host: Host) -> None:
    """Every file the dead process changed has its old value in the claim."""
    from tests.fixtures import power

    held = host.claims()
    changed = [c for c, files in enumerate(_power_files(host)) if files != ("0", "powersave")]
    if not held:
        assert changed == []
        return
    entry = held[0].entry("power")
    if entry is None:  # killed before its intent: nothing was written
        assert changed == []
        return
    assert set(changed) <= set(entry.saved_latency) & set(entry.saved_governor)
    assert set(entry.saved_latency.values()) <= {"0"}
    assert power.latency(host.sysfs, 2) == "0"  # never the CPUs it does not hold


@pytest.mark.parametrize("how", ["libvirt", "next-start", "daemon"])
@pytest.mark.parametrize("point", POWER_PREPARE_POINTS)
def test_killed_while_prepare_sets_the_cpu_power(tmp_path: Path, how: str, point: str) -> None:
    host, xml = _power_host(tmp_path)
    FIGURES.add("crash", f"point:power:{point}")
    _killed(host.hook(xml, NAME, "prepare", "begin", fault=point).returncode, point)
    # (latency files, governors) written when the process died: latencies first
    written = {"power.saved": (0, 0), "power.latency-written": (1, 0),
               "power.latency-written@2": (2, 0), "power.governor-written": (2, 1),
               "power.governor-written@2": (2, 2)}[point]
    files = _power_files(host)
    assert (sum(lat == "n/a" for lat, _ in files),
            sum(gov == "performance" for _, gov in files)) == written
    _power_journal_is_honest(host)
    _recover(host, xml, how)
    assert _power_files(host) == [("0", "powersave")] * 4, f"{point} then {how}"
    assert host.claim_files() == []


@pytest.mark.parametrize("how", ["libvirt", "next-start", "daemon"])
@pytest.mark.parametrize("point", POWER_RELEASE_POINTS)
def test_killed_while_release_puts_the_cpu_power_back(tmp_path: Path, how: str,
                                                      point: str) -> None:
    host, xml = _power_host(tmp_path)
    ok = host.hook(xml, NAME, "prepare", "begin")
    assert ok.returncode == 0, ok.stderr
    assert _power_files(host)[:2] == [("n/a", "performance")] * 2
    FIGURES.add("crash", f"point:power-release:{point}")
    _killed(host.hook(xml, NAME, "stopped", "end", fault=point).returncode, point)
    assert _power_files(host) == [("0", "powersave")] * 4  # undone before the kill
    if how == "libvirt":
        assert host.hook(xml, NAME, "release", "end").returncode == 0
    else:
        _recover(host, xml, how)
    assert _power_files(host) == [("0", "powersave")] * 4
    assert host.claim_files() == []
    assert host.nr() == 1, "the hugepages were given back too"


# --------------------------------------------------------------------------- realtime

RT_STARTED_POINTS = ["tune.journalled", "rtsched.intent", "rtsched.intent@3", "rtsched.written",
                     "rtsched.written@2", "rtsched.written@4", "tune.applied"]
#: the RT domain has hugepages too, so the kill lands between the realtime entry's undo
#: (budget given back) and the hugepage entry's, and after both with the claim still there
RT_RELEASE_POINTS = ["release.before-rollback", "rollback.realtime-undone",
                     "rollback.hugepages-undone", "release.after-rollback"]
RT_CONFIG = {"realtime": {"throttled": "delegate", "max_budget_us": 20000}}


def _rt_host(tmp_path: Path) -> Host:
    return make_host(tmp_path / "host", cgroup="real", proc="real", admin_pages=1,
                     sections=RT_CONFIG)


def _rt_domain(host: Host) -> str:
    return prerender(host.cfg(), domain_xml(NAME, UUID, pages=2, vcpus=2, realtime=True),
                     {0, 1})


def _rt_start(host: Host, group: RtGroup, xml: str, fault: str | None = None) -> int:
    ok = host.hook(xml, NAME, "prepare", "begin")
    assert ok.returncode == 0, ok.stderr
    (host.run / f"{NAME}.xml").write_text(status_xml(xml, group.procs[0].pid, group.tids))
    return host.hook(xml, NAME, "started", "begin", fault=fault).returncode


def _vm_gone(host: Host, group: RtGroup) -> None:
    """libvirt stops QEMU (its threads go) and drops the status file."""
    group.stop_vcpus()
    (host.run / f"{NAME}.xml").unlink(missing_ok=True)


def _rt_consistent(host: Host, group: RtGroup, baseline: int, name: str) -> None:
    _consistent(host, Pool(host, baseline), name)
    left = sum(group.runtimes())
    FIGURES.add("crash", "rt-budget-left-us", left)
    assert group.runtimes() == [0, 0, 0, 0], f"{name}: RT budget left {group.runtimes()}"


@pytest.mark.parametrize("how", ["libvirt", "daemon"])
@pytest.mark.parametrize("point", RT_STARTED_POINTS)
def test_killed_during_started(tmp_path: Path, rt_group: RtGroup, how: str, point: str) -> None:
    host = _rt_host(tmp_path)
    baseline = host.nr()
    xml = _rt_domain(host)
    FIGURES.add("crash", f"point:started:{point}")
    _killed(_rt_start(host, rt_group, xml, fault=point), point)
    claim = host.statedir().load(UUID)
    assert claim is not None
    if point.startswith("rtsched.written") or point == "tune.applied":
        assert sum(rt_group.runtimes()) > 0  # budget really was handed down
    # the started hook died, so libvirt fails the start: QEMU is killed, then the hooks
    _vm_gone(host, rt_group)
    if how == "libvirt":
        _recover(host, xml, "libvirt")
    else:
        Reconciler(host.cfg(), host.statedir()).orphans(now=time.time() + 10_000)
    _rt_consistent(host, rt_group, baseline, f"started {point} then {how}")


@pytest.mark.parametrize("how", ["libvirt", "next-start", "daemon"])
@pytest.mark.parametrize("point", RT_RELEASE_POINTS)
def test_killed_during_release_of_a_realtime_domain(tmp_path: Path, rt_group: RtGroup, how: str,
                                                    point: str) -> None:
    host = _rt_host(tmp_path)
    baseline = host.nr()
    xml = _rt_domain(host)
    assert _rt_start(host, rt_group, xml) == 0
    assert sum(rt_group.runtimes()) > 0
    _vm_gone(host, rt_group)
    FIGURES.add("crash", f"point:rt-release:{point}")
    _killed(host.hook(xml, NAME, "stopped", "end", fault=point).returncode, point)
    if how == "libvirt":
        assert host.hook(xml, NAME, "release", "end").returncode == 0
    elif how == "next-start":
        # a new start of the same domain rolls the old claim back, then runs normally
        assert host.hook(xml, NAME, "prepare", "begin").returncode == 0
        assert host.hook(xml, NAME, "release", "end").returncode == 0
    else:
        Reconciler(host.cfg(), host.statedir()).orphans(now=time.time() + 10_000)
    _rt_consistent(host, rt_group, baseline, f"rt release {point} then {how}")


# --------------------------------------------------------------------------- crash x race

OTHER = "other"
OTHER_UUID = uuid_of(201)


def _two(request: pytest.FixtureRequest, tmp_path: Path, sysfs: str) -> tuple[Host, Pool, str,
                                                                               str]:
    host, pool = _host(request, tmp_path, sysfs)
    if sysfs == "real":  # one free admin page, as on the fixture
        Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages") \
            .write_text(str(pool.baseline + 1))
        pool = Pool(host, pool.baseline + 1)
    cfg = host.cfg()
    pages = host.free() + 2  # both need every free page and 2 more
    a = prerender(cfg, domain_xml(NAME, UUID, pages=pages), {0})
    b = prerender(cfg, domain_xml(OTHER, OTHER_UUID, pages=pages), {1})
    return host, pool, a, b


@pytest.mark.parametrize("sysfs", ["fixture", "real"])
def test_crashed_pending_write_does_not_take_another_domains_pages(
        request: pytest.FixtureRequest, tmp_path: Path, sysfs: str) -> None:
    host, pool, a, b = _two(request, tmp_path, sysfs)
    FIGURES.add("crash", "point:interleaved:hugepages.pending")
    need = host.free() + 2
    _killed(host.hook(a, NAME, "prepare", "begin", fault="hugepages.pending").returncode,
            "hugepages.pending")
    assert host.hook(b, OTHER, "prepare", "begin").returncode == 0  # before A's release runs
    assert host.hook(a, NAME, "release", "end").returncode == 0  # libvirt, after A failed
    short = need - host.free()
    assert short <= 0, f"{OTHER} (admitted) lost {short} of its {need} reserved pages"
    assert host.hook(b, OTHER, "release", "end").returncode == 0
    assert pool.nr() == pool.baseline, "the administrator's pages were taken"


@pytest.mark.parametrize("sysfs", ["fixture", "real"])
def test_pages_of_a_crashed_start_are_not_promised_twice(
        request: pytest.FixtureRequest, tmp_path: Path, sysfs: str) -> None:
    host, _pool, a, b = _two(request, tmp_path, sysfs)
    need = host.free() + 2
    FIGURES.add("crash", "point:interleaved:admit.reserved")
    _killed(host.hook(a, NAME, "prepare", "begin", fault="admit.reserved").returncode,
            "admit.reserved")
    assert host.hook(b, OTHER, "prepare", "begin").returncode == 0
    assert host.hook(a, NAME, "release", "end").returncode == 0
    short = need - host.free()
    try:
        assert short <= 0, f"{OTHER} (admitted) lost {short} of its {need} reserved pages"
    finally:
        host.hook(b, OTHER, "release", "end")


def test_fault_points_cost_nothing_when_unset() -> None:
    """Production never sets NUMAHOOK_FAULT: point() returns at once (no kill, no state)."""
    from numahook import faults

    assert os.environ.get(faults.ENV) is None
    for name in faults.POINTS:
        faults.point(name)
    assert faults._ARMED == {} and faults._HITS == {}
    assert faults._parse("a, b@3 ,c@x,,@2") == {"a": 1, "b": 3, "c": 1}


# --------------------------------------------------------------------------- random kills

RANDOM_KILLS = scaled(24, 400)


def _kill_after(host: Host, xml: str, op: str, subop: str, delay: float) -> int:
    proc = host.start(xml, NAME, op, subop)
    assert proc.stdin is not None
    try:
        proc.stdin.write(xml)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    time.sleep(delay)
    proc.kill()  # the sh front exec'd python: this is SIGKILL to the hook itself
    proc.wait(timeout=120)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.read()
            stream.close()
    return proc.returncode


@pytest.mark.parametrize("sysfs", ["fixture", "real"])
def test_killed_at_random_moments(request: pytest.FixtureRequest, tmp_path: Path,
                                  sysfs: str) -> None:
    """SIGKILL from outside after a random delay, anywhere in a start or a stop (imports,
    parsing, an atomic write, a knob write), then one of the three recoveries."""
    host, pool = _host(request, tmp_path, sysfs)
    xml = _domain(host)
    seed = random.randrange(1 << 30) if LONG else 8
    rng = random.Random(seed)
    print(f"random kills seed {seed}")
    # how long each call takes here, so the kills land inside it (a calibration only)
    span = {}
    for op, sub in (("prepare", "begin"), ("stopped", "end")):
        t0 = time.monotonic()
        assert host.hook(xml, NAME, op, sub).returncode == 0
        span[op] = time.monotonic() - t0
    for i in range(RANDOM_KILLS):
        op = rng.choice(["prepare", "stopped"])
        if op == "stopped":
            assert host.hook(xml, NAME, "prepare", "begin").returncode == 0
        rc = _kill_after(host, xml, op, "begin" if op == "prepare" else "end",
                         rng.uniform(0.0, span[op]))
        FIGURES.add("crash", "random-kills" if rc == -9 else "random-kills-too-late")
        _journal_is_honest(host, pool)
        how = rng.choice(["libvirt", "next-start", "daemon"])
        if op == "stopped" and how == "libvirt":
            assert host.hook(xml, NAME, "release", "end").returncode == 0
        else:
            _recover(host, xml, how)
        _consistent(host, pool, f"random kill {i} (seed {seed}) in {op}, then {how}")
