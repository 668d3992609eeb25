"""Is this node real-time capable, and what decides it: the probe behind every publisher.

KubeVirt labels a node real-time capable when ``kernel.sched_rt_runtime_us`` is -1 and we
publish exactly that test, so fleets can select nodes the same way. What actually decides
whether a real-time guest runs well is published next to it: RT group scheduling and the
budget it leaves, PREEMPT_RT, isolated/tickless CPUs, free hugepages per node and size,
the hugetlbfs mounts, and what numahook itself would do with a real-time start here.

Everything is read under the configured roots (``sysfs_root``, ``cgroup_root``,
``proc_root``) so fixture trees stand in for hosts we do not have. The result is plain
data: :mod:`numahook.node.publish` writes it out, the CLI prints it.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import replace
from pathlib import Path

from numahook.config import DEFAULT_PATH, Config
from numahook.core import rtbudget
from numahook.core.topology import Topology
from numahook.core.units import clip
from numahook.errors import HostError, InputError, NumahookError
from numahook.host import cgroups, fsutil, rtgroups, rtsched, sysfs
from numahook.node.cmdline import parse_cmdline
from numahook.node.model import (
    CPU_PARAMS,
    CpuParam,
    HugetlbfsMount,
    NodeCapability,
    NodeHugepages,
    NodeInfo,
    RtBudget,
    StartPolicy,
)
from numahook.node.report import reasons

log = logging.getLogger(__name__)

#: libvirt's top-level partition for domains: plain cgroupfs, then systemd.
_MACHINE_GROUPS = ("machine", "machine.slice")
_SIZE = re.compile(r"([0-9]{1,12})([KkMmGg]?)")
_OCTAL = re.compile(r"\\([0-7]{3})")



def pagesize_kib(text: str) -> int:
    """``2M``/``1G``/``2048k``/``2097152`` (bytes, as mount(8) takes it) to KiB."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise InputError(f"hugetlbfs pagesize {clip(text, 20)} is not a size like 2M or 1G")
    number, unit = int(m.group(1)), m.group(2).upper()
    kib = {"": number // 1024, "K": number, "M": number * 1024, "G": number * 1024 * 1024}[unit]
    if kib <= 0:
        raise InputError(f"hugetlbfs pagesize {clip(text, 20)} is smaller than one KiB")
    return kib


def parse_mounts(text: str, default_kib: int) -> tuple[HugetlbfsMount, ...]:
    """hugetlbfs mounts from ``/proc/mounts`` text; paths keep their octal escapes decoded."""
    mounts: list[HugetlbfsMount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs":
            continue
        path = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
        size, explicit = default_kib, False
        for opt in fields[3].split(","):
            if opt.startswith("pagesize="):
                size, explicit = pagesize_kib(opt[len("pagesize="):]), True
        mounts.append(HugetlbfsMount(path, size, explicit))
    return tuple(mounts)


# --------------------------------------------------------------------------- readers


def _children(group: Path) -> list[tuple[int, int]]:
    return [rtgroups.bandwidth(child) for child in rtgroups.children(group)]


def read_rt_budget(cgroup_root: str, runtime: int, period: int) -> RtBudget | None:
    """The RT budget at the root and the machine group; None without RT group scheduling.

    As in the kernel, the root never hands out more than the global sysctl allows. The
    groups are read through the scheduler adapter's reader (:mod:`numahook.host.rtgroups`)
    and -1 counts by its one rule, so this report and the budget numahook would delegate
    come from the same reading.
    """
    found = rtgroups.cpu_controller(cgroup_root)
    cpu = Path(found) if found is not None else None
    if cpu is None or not (cpu / rtgroups.RUNTIME).is_file():
        return None
    root_raw, root_period = rtgroups.setting(cpu)
    root_rt = rtbudget.held(root_raw, root_period)
    glob = rtbudget.held(runtime, period)
    root_cap = min(root_rt, glob if period == root_period else
                   rtbudget.to_ratio(period, glob) * root_period >> rtbudget.BW_SHIFT)
    root_free = max(0, root_cap - rtbudget.runtime_for(_children(cpu), root_period))
    machine = next((cpu / g for g in _MACHINE_GROUPS if (cpu / g / rtgroups.RUNTIME).is_file()),
                   None)
    if machine is None:
        return RtBudget(str(cpu), root_raw, root_period, root_free,
                        None, None, None, None, root_free)
    m_raw, m_period = rtgroups.setting(machine)
    m_rt = rtbudget.held(m_raw, m_period)
    m_used = rtbudget.runtime_for(_children(machine), m_period)
    m_free = max(0, m_rt - m_used)
    # The machine group can grow into the root's free share, but never past its period.
    grow = (root_free if m_period == root_period else
            rtbudget.to_ratio(root_period, root_free) * m_period >> rtbudget.BW_SHIFT)
    available = max(0, min(m_free + grow, m_period - m_used))
    return RtBudget(str(cpu), root_raw, root_period, root_free,
                    machine.name, m_raw, m_period, m_free, available)


def _optional(path: Path, warnings: list[str], what: str) -> str | None:
    """Read a file whose absence is normal; other failures become a warning."""
    if not path.exists():
        return None
    try:
        return fsutil.read_text(path)
    except NumahookError as exc:
        warnings.append(f"{what} could not be read: {exc}")
        return None


def start_policy(cfg: Config) -> StartPolicy:
    """What a real-time domain gets here: the hook's own gate, plus the feature gate."""
    if not cfg.realtime_gate:
        return StartPolicy(False, "disabled", (
            f"real-time domains are refused because the Realtime feature gate is off; set "
            f"realtime = true under [features] in {cfg.path}"))
    check = rtsched.realtime_gate(cfg)
    if not check.ok:
        mode = "refuse"
    elif rtgroups.needs_group_budget(cfg.cgroup_root, cfg.proc_root):
        mode = "delegate"
    else:
        mode = "vcpusched"
    return StartPolicy(bool(check.ok), mode, check.reason)


def probe(cfg: Config, libvirt_reachable: bool | None = None) -> NodeCapability:
    """Read every fact under the configured roots.

    Raises HostError only when the essentials (the RT sysctls, the CPU topology) cannot be
    read; anything else missing lands in ``warnings``. ``libvirt_reachable`` comes from the
    caller (the daemon knows; the CLI asks :func:`check_libvirt`), None meaning unknown.
    """
    warnings: list[str] = []
    try:
        runtime, period = rtgroups.rt_sysctl(cfg.proc_root)
        topo = sysfs.read_topology(cfg.sysfs_root)
        policy = start_policy(cfg)
        needs_budget = rtgroups.needs_group_budget(cfg.cgroup_root, cfg.proc_root)
    except NumahookError as exc:
        raise HostError(str(exc)) from None

    budget: RtBudget | None = None
    group_sched = False
    try:
        cpu = rtgroups.cpu_controller(cfg.cgroup_root)
        group_sched = cpu is not None and (Path(cpu) / rtgroups.RUNTIME).is_file()
        budget = read_rt_budget(cfg.cgroup_root, runtime, period)
    except (NumahookError, OSError) as exc:
        warnings.append(f"the RT group budget could not be read: {exc}")

    sys_root, proc_root = Path(cfg.sysfs_root), Path(cfg.proc_root)
    preempt = (_optional(sys_root / "kernel/realtime", warnings, "PREEMPT_RT flag") or "").strip()
    release = _optional(proc_root / "sys/kernel/osrelease", warnings, "the kernel release")
    cmdline_text = _optional(proc_root / "cmdline", warnings, "the kernel command line") or ""
    online = frozenset(topo.cpus)
    try:
        cmdline = parse_cmdline(cmdline_text, online)
    except InputError as exc:
        warnings.append(f"the kernel command line could not be parsed: {exc}")
        cmdline = {k: CpuParam(None) for k in CPU_PARAMS}

    default_kib = sysfs.default_page_kib(cfg.proc_root) or topo.default_page_kib
    mounts: tuple[HugetlbfsMount, ...] = ()
    mounts_text = _optional(proc_root / "mounts", warnings, "the mount table")
    if mounts_text is not None:
        try:
            mounts = parse_mounts(mounts_text, default_kib)
        except InputError as exc:
            warnings.append(f"the hugetlbfs mounts could not be parsed: {exc}")

    cgroup_version = cgroups.version(cfg.cgroup_root)
    cap = NodeCapability(
        sched_rt_runtime_us=runtime,
        sched_rt_period_us=period,
        realtime_capable=runtime == -1,
        rt_group_sched=group_sched,
        needs_group_budget=needs_budget,
        rt_budget=budget,
        preempt_rt=preempt == "1",
        kernel_release=release.strip() if release else None,
        cmdline=cmdline,
        cgroup_version=cgroup_version,
        online_cpus=online,
        nodes=_nodes(topo),
        hugepages=_pools(topo),
        default_hugepage_kib=default_kib,
        hugetlbfs=mounts,
        libvirt_uri=cfg.libvirt_uri,
        libvirt_reachable=libvirt_reachable,
        start_policy=policy,
        reasons=(),
        warnings=tuple(warnings),
        shared_cpus=cfg.shared_cpus,
    )
    path = cfg.source if cfg.source.startswith("/") else DEFAULT_PATH
    return replace(cap, reasons=tuple(reasons(cap, path)))


def _nodes(topo: Topology) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(n.id, frozenset(n.cpus), n.memory_kib)
                 for n in sorted(topo.nodes.values(), key=lambda n: n.id))


def _pools(topo: Topology) -> tuple[NodeHugepages, ...]:
    return tuple(NodeHugepages(n.id, p.size_kib, p.nr, p.free, p.surplus)
                 for n in sorted(topo.nodes.values(), key=lambda n: n.id)
                 for p in sorted(n.hugepages.values(), key=lambda p: p.size_kib))


# --------------------------------------------------------------------------- libvirt


def check_libvirt(uri: str, timeout: float = 3.0) -> bool | None:
    """Can a read-only libvirt connection be opened within ``timeout`` seconds?

    None when python3-libvirt is not installed. For the CLI only: it silences libvirt's
    default error printer for the whole process. The attempt runs in a daemon thread so a
    wedged libvirtd cannot hang the caller; it is abandoned, not killed, on timeout.
    """
    try:
        import libvirt
    except ImportError:
        return None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    result: list[bool] = []

    def attempt() -> None:
        try:
            conn = libvirt.openReadOnly(uri)
        except libvirt.libvirtError as exc:
            log.debug("libvirt at %s is not reachable: %s", uri, exc)
            result.append(False)
            return
        result.append(conn is not None)
        if conn is not None:
            conn.close()

    worker = threading.Thread(target=attempt, name="numahook-libvirt-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("libvirt at %s did not answer within %g s", uri, timeout)
        return False
    return bool(result and result[0])
