"""Shared pieces of the hardening suite (issue 8).

- Hypothesis profiles: ``ci`` (150 examples per fuzzer, derandomized) and ``long``
  (``NUMAHOOK_FUZZ=long``: 5000 examples, or ``NUMAHOOK_FUZZ_EXAMPLES``, random seeds,
  and 150 race rounds instead of 10).
- :data:`FIGURES`: every fuzzer, race round, kill point and injected fault counts itself
  here; at the end of the session the counts are printed and, when ``NUMAHOOK_FIGURES``
  names a directory, written there as one JSON file per kind for docs/reliability.md.
- :class:`Host`: a host for the real hook entry point (``libvirt-hooks/numahook`` run as
  libvirtd runs it), with a config whose ``[paths]`` point at temp dirs or fixture trees,
  optionally the real sysfs (real hugepages on node0) or the real cgroup v1 tree.
- Guards that put the real kernel back whatever happens: ``real_pool`` (nr_hugepages of
  node0's 2 MiB pool) and ``rt_group`` (a cgroup v1 test group with sleeping stand-ins for
  vCPU threads, RT budgets zeroed and removed afterwards).

Test modules import the helpers with ``from .conftest import ...`` (the same module object
pytest loaded, so the counters are shared).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from numahook import NAMESPACE, config
from numahook.core import render
from numahook.host import rtsched
from numahook.ops import hostinputs
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import (
    CpuSpec,
    HostSpec,
    NodeSpec,
    build_cgroup,
    build_proc,
    build_sysfs,
)

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "libvirt-hooks" / "numahook"
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
ROOT = os.geteuid() == 0
LONG = os.environ.get("NUMAHOOK_FUZZ", "") == "long"
MODE = "long" if LONG else "ci"
PAGE_KIB = 2048
REAL_POOL = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB")
#: a hook killed by SIGKILL: the sh front exec's python at the end of a pipeline
KILLED = 128 + 9

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          database=None, suppress_health_check=_SUPPRESS)
settings.register_profile("long", deadline=None, database=None,
                          max_examples=int(os.environ.get("NUMAHOOK_FUZZ_EXAMPLES", "5000")),
                          suppress_health_check=_SUPPRESS)
#: apply to every fuzzer: ``@FUZZ`` above ``@given``
FUZZ = settings(settings.get_profile(MODE))


def scaled(ci: int, long: int) -> int:
    """A count for CI, or the larger one in the long mode."""
    return long if LONG else ci


# --------------------------------------------------------------------------- figures


class Figures:
    """Counts per kind ("fuzz", "races", "crash", "faults") and name; thread safe."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, name: str, n: int = 1) -> None:
        with self._lock:
            bucket = self.counts.setdefault(kind, {})
            bucket[name] = bucket.get(name, 0) + n

    def maximum(self, kind: str, name: str, value: int) -> None:
        with self._lock:
            bucket = self.counts.setdefault(kind, {})
            bucket[name] = max(bucket.get(name, value), value)

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for kind, counts in sorted(self.counts.items()):
            path = directory / f"{kind}.json"
            doc: dict[str, Any] = {"mode": MODE, "counts": {}}
            if path.exists():
                try:
                    old = json.loads(path.read_text())
                    if old.get("mode") == MODE and isinstance(old.get("counts"), dict):
                        doc = old  # tests run in several sessions add up to one report
                except ValueError:
                    pass
            doc["counts"].update(counts)
            doc["updated"] = now
            path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            out.append(path)
        return out


FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("NUMAHOOK_FIGURES")
    if target and FIGURES.counts:
        FIGURES.write(Path(target))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not FIGURES.counts:
        return
    terminalreporter.section(f"hardening figures ({MODE} mode)")
    for kind, counts in sorted(FIGURES.counts.items()):
        line = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        terminalreporter.write_line(f"{kind}: {line}")


# --------------------------------------------------------------------------- domains


def domain_xml(name: str, uuid: str, *, pages: int = 1, vcpus: int = 1,
               isolate: bool = False, realtime: bool = False, mask: str | None = None,
               passthrough: bool = True) -> str:
    """A managed domain with 2 MiB hugepages: ``pages`` of them, split over its cells."""
    rt = ""
    if realtime:
        rt = "<numahook:realtime" + (f" mask='{mask}'" if mask else "") + " priority='1'/>"
    numa = ("<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
            if passthrough else "")
    iso = " isolateEmulatorThread='true'" if isolate else ""
    return (
        f"<domain type='kvm'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n"
        f"  <metadata>\n    <numahook:domain xmlns:numahook='{NAMESPACE}'>"
        f"<numahook:cpu dedicatedCpuPlacement='true'{iso}>{numa}{rt}</numahook:cpu>"
        "</numahook:domain>\n  </metadata>\n"
        f"  <memory unit='KiB'>{pages * PAGE_KIB}</memory>\n"
        f"  <memoryBacking><hugepages><page size='{PAGE_KIB}' unit='KiB'/></hugepages>"
        "</memoryBacking>\n"
        f"  <vcpu placement='static'>{vcpus}</vcpu>\n"
        "  <os><type arch='x86_64' machine='q35'>hvm</type></os>\n</domain>\n"
    )


def uuid_of(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012x}"


def prerender(cfg: config.Config, xml: str, cpus: frozenset[int] | set[int]) -> str:
    """Render ``xml`` as numahookd would, pinned within ``cpus`` (the hook re-checks it)."""
    doc = render.parse(xml)
    inputs, _ = hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid,
                                  cpuset_override=frozenset(cpus), devices=doc.facts.bdfs)
    return render.render_parsed(doc, inputs).xml


def status_xml(domain: str, pid: int, tids: Mapping[int, int]) -> str:
    """libvirt's status file for a running domain (the parts numahook reads)."""
    vcpus = "".join(f"<vcpu id='{v}' pid='{t}'/>" for v, t in sorted(tids.items()))
    body = domain.split("?>", 1)[1] if domain.lstrip().startswith("<?xml") else domain
    return (f"<domstatus state='running' reason='booted' pid='{pid}'>\n"
            f"  <vcpus>{vcpus}</vcpus>\n{body}</domstatus>\n")


# --------------------------------------------------------------------------- hosts


def write_config(path: Path, paths: Mapping[str, str], **sections: Mapping[str, Any]) -> Path:
    lines = ["[paths]"] + [f"{k} = {v}" for k, v in paths.items()]
    sections = {"hook": {"lock_timeout": 60}, **sections}
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def idle_pool_sysfs(root: Path, cpus: int = 4, admin_pages: int = 0) -> Path:
    """A one-node fixture sysfs whose 2 MiB pool behaves like an idle kernel pool.

    ``free_hugepages`` is a symlink to ``nr_hugepages``: nothing maps the pages, so every
    page the pool holds is free, and a write to ``nr_hugepages`` delivers in full.
    """
    spec = HostSpec("idle", [CpuSpec(i, 0, 0, 0, i) for i in range(cpus)],
                    [NodeSpec(0, list(range(cpus)), 16 << 20,
                              {PAGE_KIB: (admin_pages, admin_pages, 0)})], [[10]])
    sysfs = build_sysfs(root, spec)
    pool = sysfs / "devices/system/node/node0/hugepages/hugepages-2048kB"
    (pool / "free_hugepages").unlink()
    os.symlink("nr_hugepages", pool / "free_hugepages")
    return sysfs


def online_cpus() -> str:
    return Path("/sys/devices/system/cpu/online").read_text().strip()


@dataclass
class Host:
    """Paths and config for running the real hook; see :func:`make_host`."""

    tmp: Path
    sysfs: Path
    cgroup: Path
    proc: Path
    run: Path
    state: Path
    config: Path
    log: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    def cfg(self) -> config.Config:
        return config.load(self.config)

    def statedir(self) -> StateDir:
        return StateDir(str(self.state))

    @property
    def pool(self) -> Path:
        return self.sysfs / "devices/system/node/node0/hugepages/hugepages-2048kB"

    def nr(self) -> int:
        return int((self.pool / "nr_hugepages").read_text())

    def free(self) -> int:
        return int((self.pool / "free_hugepages").read_text())

    def claims(self) -> list[Claim]:
        sd = self.statedir()
        return sd.list_claims() if os.path.isdir(sd.claims_dir) else []

    def claim_files(self) -> list[str]:
        d = self.state / "claims"
        return sorted(os.listdir(d)) if d.is_dir() else []

    def env(self, fault: str | None = None) -> dict[str, str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NUMAHOOK_CONFIG": str(self.config),
               "NUMAHOOK_PYTHONPATH": str(REPO), "NUMAHOOK_HOOK_LOG": str(self.log),
               "LANG": "C.UTF-8", **self.env_extra}
        if fault:
            env["NUMAHOOK_FAULT"] = fault
        return env

    def hook(self, xml: str, name: str, op: str, subop: str,
             fault: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``libvirt-hooks/numahook NAME OP SUBOP -`` with ``xml`` on stdin."""
        return subprocess.run(["/bin/sh", str(HOOK), name, op, subop, "-"], input=xml,
                              capture_output=True, text=True, env=self.env(fault),
                              timeout=300, check=False)

    def start(self, xml: str, name: str, op: str, subop: str,
              fault: str | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["/bin/sh", str(HOOK), name, op, subop, "-"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(fault))
        return proc


def make_host(tmp: Path, *, sysfs: str = "fixture", cgroup: str = "fixture",
              proc: str = "fixture", cpus: int = 4, admin_pages: int = 0,
              sections: Mapping[str, Mapping[str, Any]] | None = None) -> Host:
    """A host for the hook. ``sysfs``/``cgroup``/``proc``: "fixture" trees or the "real" ones.

    With the real sysfs the topology is this machine's and the hugepages are real; the
    fixture cgroup's /machine cpuset then holds this machine's online CPUs.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    if sysfs == "real":
        sys_root, online = Path("/sys"), online_cpus()
    else:
        sys_root, online = idle_pool_sysfs(tmp / "sys", cpus, admin_pages), f"0-{cpus - 1}"
    if cgroup == "real":
        cg_root = Path("/sys/fs/cgroup")
    else:
        cg_root = build_cgroup(tmp / "cgroup", 1, {"": online, "machine": online})
    if proc == "real":
        proc_root = Path("/proc")
    else:
        one = HostSpec("p", [CpuSpec(0, 0, 0, 0, 0)], [NodeSpec(0, [0], 16 << 20)], [[10]])
        proc_root = build_proc(tmp / "proc", one)
    run = tmp / "libvirt-run"
    run.mkdir(exist_ok=True)
    state = tmp / "state"
    cfg_path = write_config(tmp / "numahook.conf", {
        "state_dir": str(state), "sysfs_root": str(sys_root), "cgroup_root": str(cg_root),
        "proc_root": str(proc_root), "libvirt_run": str(run)}, **(sections or {}))
    return Host(tmp, sys_root, cg_root, proc_root, run, state, cfg_path, tmp / "hook.log")


# --------------------------------------------------------------------------- the real kernel


#: processes that change node 0's hugepage pool behind our back
_POOL_USERS = ("scripts/package-test", "scripts/lab", "tests/e2e", "tests/pkg", "bench/",
               "qemu-system")


def other_hugepage_user() -> str | None:
    """Why real hugepages cannot be used now (something else changes the pool), or None."""
    for pattern in _POOL_USERS:
        try:
            out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                                 timeout=10, check=False).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return None
        others = [p for p in out if int(p) != os.getpid()]
        if others:
            return f"{pattern} is running (pid {others[0]})"
    return None


def skip_if_disturbed(what: str) -> None:
    """Called when a real-kernel check failed: if another user of the pool showed up
    meanwhile, its writes explain the failure; skip rather than blame numahook."""
    busy = other_hugepage_user()
    if busy:
        pytest.skip(f"{what}: {busy} started meanwhile and changed the real hugepage pool")


#: one hardening session at a time may use the real pool and RT budget
_SESSION_LOCK = Path("/run/lock/numahook-hardening.lock")
_held: dict[str, int] = {}


def real_kernel_turn(wait: float = 900.0) -> None:
    """Take the host-wide lock for the real-kernel parts (once per session), or skip.

    Two hardening runs at once would each see the other's pages in their balance checks.
    """
    if "fd" in _held:
        return
    import fcntl
    import time

    fd = os.open(_SESSION_LOCK if _SESSION_LOCK.parent.is_dir() else "/tmp/numahook-hardening"
                 ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _held["fd"] = fd  # held until this process exits
            return
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                pytest.skip("another hardening run holds the real hugepages and RT budget")
            time.sleep(1)


@dataclass
class RealPool:
    baseline: int

    def nr(self) -> int:
        return int((REAL_POOL / "nr_hugepages").read_text())

    def free(self) -> int:
        return int((REAL_POOL / "free_hugepages").read_text())

    def surplus(self) -> int:
        return int((REAL_POOL / "surplus_hugepages").read_text())


@pytest.fixture
def real_pool() -> Iterator[RealPool]:
    """node0's real 2 MiB pool; its nr_hugepages is put back whatever the test did."""
    if not ROOT or not REAL_POOL.is_dir():
        pytest.skip("needs root and /sys/devices/system/node/node0/hugepages/hugepages-2048kB")
    busy = other_hugepage_user()
    if busy:
        pytest.skip(f"real hugepages are in use by another test: {busy}")
    real_kernel_turn()
    knob = REAL_POOL / "nr_hugepages"
    pool = RealPool(int(knob.read_text()))
    try:
        yield pool
    finally:
        # Give back what a failed test left in the pool, but never raise it: pages that
        # went away meanwhile were taken by someone else (the lab's teardown restores its
        # own snapshot, for one), and putting them back would leak them.
        if pool.nr() > pool.baseline and not other_hugepage_user():
            knob.write_text(str(pool.baseline))


_FOUND = rtsched.cpu_controller()
CPU_CTL = Path(_FOUND) if _FOUND is not None else None


@dataclass
class RtGroup:
    base: Path
    groups: list[Path]
    procs: list[subprocess.Popen[bytes]]

    @property
    def tids(self) -> dict[int, int]:
        return {i: p.pid for i, p in enumerate(self.procs)}

    def runtimes(self) -> list[int]:
        return [int((g / rtsched.RUNTIME).read_text()) if g.is_dir() else 0
                for g in self.groups]

    def stop_vcpus(self) -> None:
        """What libvirt does when a start fails or the VM stops: QEMU's threads go away."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def sysctl_rt() -> int:
    return int(Path("/proc/sys/kernel/sched_rt_runtime_us").read_text())


@pytest.fixture
def rt_group() -> Iterator[RtGroup]:
    """``numahook-hard-<pid>/dom/vcpu{0,1}`` in the cpu controller, a ``sleep`` in each vcpu
    group standing in for a vCPU thread. Budgets are zeroed and the groups removed after."""
    if not ROOT or CPU_CTL is None or not (CPU_CTL / rtsched.RUNTIME).is_file():
        pytest.skip("needs root and the cgroup v1 cpu controller with RT group scheduling")
    if sysctl_rt() < 0:
        pytest.skip("RT throttling is off here (kernel.sched_rt_runtime_us is -1)")
    busy = other_hugepage_user()
    if busy:
        pytest.skip(f"another test uses the RT budget and real VMs now: {busy}")
    real_kernel_turn()
    base = CPU_CTL / f"numahook-hard-{os.getpid()}"
    groups = [base, base / "dom", base / "dom" / "vcpu0", base / "dom" / "vcpu1"]
    made: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    sysctl = sysctl_rt()
    try:
        for g in groups:
            g.mkdir()
            made.append(g)
        for g in groups[2:]:
            p = subprocess.Popen(["sleep", "600"])
            procs.append(p)
            (g / "tasks").write_text(str(p.pid))
        yield RtGroup(base, groups, procs)
    finally:
        for p in procs:
            try:
                os.sched_setscheduler(p.pid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
            if p.poll() is None:
                p.kill()
                p.wait()
        if sysctl_rt() != sysctl:
            Path("/proc/sys/kernel/sched_rt_runtime_us").write_text(str(sysctl))
        for g in reversed(made):  # children first: a parent cannot drop below them
            try:
                (g / rtsched.RUNTIME).write_text("0")
            except OSError:
                pass
        for g in reversed(made):
            if g.is_dir():
                g.rmdir()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
