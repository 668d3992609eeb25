"""Is this node real-time capable, and what decides it: the probe behind every publisher.

KubeVirt labels a node real-time capable when ``kernel.sched_rt_runtime_us`` is -1 and we
publish exactly that test, so fleets can select nodes the same way. What actually decides
whether a real-time guest runs well is published next to it: RT group scheduling and the
budget it leaves, PREEMPT_RT, isolated/tickless CPUs, free hugepages per node and size,
the hugetlbfs mounts, and what numahook itself would do with a real-time start here.

Everything is read under the configured roots (``sysfs_root``, ``cgroup_root``,
``proc_root``) so fixture trees stand in for hosts we do not have. The result is plain
data: :mod:`numahook.publish` writes it out, the CLI prints it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from numahook import cgroups, cpulist, fsutil, lifecycle, rtsched, sysfs
from numahook.config import DEFAULT_PATH, Config
from numahook.errors import HostError, InputError, NumahookError
from numahook.topology import Topology

log = logging.getLogger(__name__)

#: Kernel command-line parameters that take a CPU list and matter for real-time guests.
CPU_PARAMS = ("isolcpus", "nohz_full", "rcu_nocbs")
#: ``isolcpus=`` flags (Documentation/admin-guide/kernel-parameters.txt).
ISOLCPUS_FLAGS = ("nohz", "domain", "managed_irq")
#: libvirt's top-level partition for domains: plain cgroupfs, then systemd.
_MACHINE_GROUPS = ("machine", "machine.slice")
_SIZE = re.compile(r"([0-9]{1,12})([KkMmGg]?)")
_STRIDE = re.compile(r"([0-9]{1,5})-([0-9]{1,5}):([0-9]{1,5})/([0-9]{1,5})")
_OCTAL = re.compile(r"\\([0-7]{3})")


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class CpuParam:
    """One CPU-list kernel parameter as booted: raw text, the CPUs, and flags (isolcpus)."""

    raw: str | None  # None: the parameter is not on the command line
    cpus: frozenset[int] = frozenset()
    flags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"raw": self.raw, "cpus": cpulist.format(self.cpus), "count": len(self.cpus),
                "flags": list(self.flags)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CpuParam:
        return cls(d["raw"], cpulist.parse(d["cpus"]), tuple(d["flags"]))


@dataclass(frozen=True)
class RtBudget:
    """RT bandwidth at the top of the cgroup v1 cpu hierarchy, in microseconds per period.

    ``*_free_us`` is what a group's children leave unallocated; ``available_us`` is the
    most a new domain under the machine group could be given (the machine group's free
    budget plus what the root could still hand to it), in the machine group's period.
    """

    controller: str
    root_runtime_us: int
    root_period_us: int
    root_free_us: int
    machine_group: str | None
    machine_runtime_us: int | None
    machine_period_us: int | None
    machine_free_us: int | None
    available_us: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RtBudget:
        return cls(**d)


@dataclass(frozen=True)
class Pool:
    """Hugepages of one size on one NUMA node."""

    node: int
    size_kib: int
    nr: int
    free: int
    surplus: int = 0


@dataclass(frozen=True)
class NodeInfo:
    """One online NUMA node."""

    id: int
    cpus: frozenset[int]
    memory_kib: int


@dataclass(frozen=True)
class HugetlbfsMount:
    path: str
    pagesize_kib: int
    #: False when the mount has no pagesize= option and uses the default size
    explicit: bool = True


@dataclass(frozen=True)
class StartPolicy:
    """What a real-time domain gets here under the config.

    ``mode``: ``vcpusched`` (libvirt sets FIFO, no budget needed), ``delegate`` (numahook
    hands RT group budget down), ``refuse`` (throttled node, delegation off) or
    ``disabled`` (the Realtime feature gate is off).
    """

    ok: bool
    mode: str
    reason: str


@dataclass(frozen=True)
class NodeCapability:
    """Everything the probe found. ``realtime_capable`` is KubeVirt's test, nothing more."""

    sched_rt_runtime_us: int
    sched_rt_period_us: int
    realtime_capable: bool
    rt_group_sched: bool
    needs_group_budget: bool
    rt_budget: RtBudget | None
    preempt_rt: bool
    kernel_release: str | None
    cmdline: Mapping[str, CpuParam]
    cgroup_version: int
    online_cpus: frozenset[int]
    nodes: tuple[NodeInfo, ...]
    hugepages: tuple[Pool, ...]
    default_hugepage_kib: int
    hugetlbfs: tuple[HugetlbfsMount, ...]
    libvirt_uri: str
    libvirt_reachable: bool | None
    start_policy: StartPolicy
    reasons: tuple[str, ...]
    #: facts that could not be read (the rest of the probe still stands)
    warnings: tuple[str, ...] = ()

    @property
    def isolcpus(self) -> frozenset[int]:
        return self.cmdline["isolcpus"].cpus

    @property
    def nohz_full(self) -> frozenset[int]:
        return self.cmdline["nohz_full"].cpus

    @property
    def rcu_nocbs(self) -> frozenset[int]:
        return self.cmdline["rcu_nocbs"].cpus

    def free_pages(self, size_kib: int) -> int:
        """Free hugepages of ``size_kib`` summed over all nodes."""
        return sum(p.free for p in self.hugepages if p.size_kib == size_kib)

    def page_sizes(self) -> list[int]:
        return sorted({p.size_kib for p in self.hugepages})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (CPU sets as kernel cpulists); see docs/status-schema.md."""
        return {
            "realtime_capable": self.realtime_capable,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "sched_rt": {
                "runtime_us": self.sched_rt_runtime_us,
                "period_us": self.sched_rt_period_us,
                "throttling": self.sched_rt_runtime_us >= 0,
                "group_sched": self.rt_group_sched,
                "needs_group_budget": self.needs_group_budget,
                "budget": self.rt_budget.to_json() if self.rt_budget else None,
            },
            "kernel": {
                "release": self.kernel_release,
                "preempt_rt": self.preempt_rt,
                "cmdline": {k: self.cmdline[k].to_json() for k in CPU_PARAMS},
            },
            "cgroup_version": self.cgroup_version,
            "cpus": {"online": cpulist.format(self.online_cpus), "count": len(self.online_cpus)},
            "numa_nodes": [
                {
                    "id": n.id,
                    "cpus": cpulist.format(n.cpus),
                    "memory_kib": n.memory_kib,
                    "hugepages": [
                        {"size_kib": p.size_kib, "nr": p.nr, "free": p.free, "surplus": p.surplus}
                        for p in self.hugepages
                        if p.node == n.id
                    ],
                }
                for n in self.nodes
            ],
            "hugepages_default_kib": self.default_hugepage_kib,
            "hugetlbfs": [
                {"path": m.path, "pagesize_kib": m.pagesize_kib, "explicit": m.explicit}
                for m in self.hugetlbfs
            ],
            "libvirt": {"uri": self.libvirt_uri, "reachable": self.libvirt_reachable},
            "start_policy": {
                "ok": self.start_policy.ok,
                "mode": self.start_policy.mode,
                "reason": self.start_policy.reason,
            },
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NodeCapability:
        """The inverse of :meth:`to_json`, so managers can load what the daemon wrote."""
        rt, kernel = d["sched_rt"], d["kernel"]
        return cls(
            sched_rt_runtime_us=rt["runtime_us"],
            sched_rt_period_us=rt["period_us"],
            realtime_capable=d["realtime_capable"],
            rt_group_sched=rt["group_sched"],
            needs_group_budget=rt["needs_group_budget"],
            rt_budget=RtBudget.from_json(rt["budget"]) if rt["budget"] else None,
            preempt_rt=kernel["preempt_rt"],
            kernel_release=kernel["release"],
            cmdline={k: CpuParam.from_json(kernel["cmdline"][k]) for k in CPU_PARAMS},
            cgroup_version=d["cgroup_version"],
            online_cpus=cpulist.parse(d["cpus"]["online"]),
            nodes=tuple(NodeInfo(n["id"], cpulist.parse(n["cpus"]), n["memory_kib"])
                        for n in d["numa_nodes"]),
            hugepages=tuple(Pool(n["id"], p["size_kib"], p["nr"], p["free"], p["surplus"])
                            for n in d["numa_nodes"] for p in n["hugepages"]),
            default_hugepage_kib=d["hugepages_default_kib"],
            hugetlbfs=tuple(HugetlbfsMount(m["path"], m["pagesize_kib"], m["explicit"])
                            for m in d["hugetlbfs"]),
            libvirt_uri=d["libvirt"]["uri"],
            libvirt_reachable=d["libvirt"]["reachable"],
            start_policy=StartPolicy(**d["start_policy"]),
            reasons=tuple(d["reasons"]),
            warnings=tuple(d["warnings"]),
        )


# --------------------------------------------------------------------------- parsers


def _kernel_cpus(text: str, what: str, online: frozenset[int]) -> frozenset[int]:
    """A kernel cpulist as bootparams accept it: plain lists plus ``A-B:U/G``, ``N``, ``all``.

    ``N`` is the last CPU; we only know online CPUs, so it is the highest online one.
    """
    last = max(online) if online else 0
    out: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            out |= online
            continue
        item = re.sub(r"(?<![0-9])N(?![0-9])", str(last), item)
        m = _STRIDE.fullmatch(item)
        if m:
            lo, hi, used, group = map(int, m.groups())
            if hi < lo or not 0 < used <= group or hi > cpulist.MAX_CPU:
                raise InputError(f"{what} item {item!r} is not a valid A-B:used/group range")
            out.update(c for c in range(lo, hi + 1) if (c - lo) % group < used)
            continue
        out |= cpulist.parse(item, what)
    return frozenset(out)


def parse_cmdline(text: str, online: frozenset[int] = frozenset()) -> dict[str, CpuParam]:
    """isolcpus/nohz_full/rcu_nocbs from a kernel command line; the last occurrence wins.

    Arguments after a bare ``--`` belong to init, not the kernel, and are ignored. A bare
    ``rcu_nocbs`` (no list) offloads every CPU.
    """
    found: dict[str, str] = {}
    for word in text.split():
        if word == "--":
            break
        key, eq, value = word.partition("=")
        if key in CPU_PARAMS:
            found[key] = value if eq else ""
    out = {k: CpuParam(None) for k in CPU_PARAMS}
    for key, raw in found.items():
        value, flags = raw, []
        if key == "isolcpus":
            items = raw.split(",")
            while items and items[0] in ISOLCPUS_FLAGS:
                flags.append(items.pop(0))
            value = ",".join(items)
        if key == "rcu_nocbs" and raw == "":
            cpus = online
        else:
            cpus = _kernel_cpus(value, f"{key}= on the kernel command line", online)
        out[key] = CpuParam(raw, cpus, tuple(flags))
    return out


def pagesize_kib(text: str) -> int:
    """``2M``/``1G``/``2048k``/``2097152`` (bytes, as mount(8) takes it) to KiB."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise InputError(f"hugetlbfs pagesize {text[:20]!r} is not a size like 2M or 1G")
    number, unit = int(m.group(1)), m.group(2).upper()
    kib = {"": number // 1024, "K": number, "M": number * 1024, "G": number * 1024 * 1024}[unit]
    if kib <= 0:
        raise InputError(f"hugetlbfs pagesize {text[:20]!r} is smaller than one KiB")
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


def size_name(size_kib: int) -> str:
    """Kubernetes' resource spelling of a page size: ``2Mi``, ``1Gi``, ``64Ki``."""
    for unit, factor in (("Gi", 1024 * 1024), ("Mi", 1024)):
        if size_kib % factor == 0:
            return f"{size_kib // factor}{unit}"
    return f"{size_kib}Ki"


# --------------------------------------------------------------------------- readers


def _bandwidth(group: Path) -> tuple[int, int]:
    """(runtime, period) with -1 (unlimited) read as the whole period."""
    runtime = fsutil.read_int(group / rtsched.RUNTIME)
    period = fsutil.read_int(group / rtsched.PERIOD)
    return (period if runtime < 0 else runtime), period


def _in_period(pairs: list[tuple[int, int]], period: int) -> int:
    """Runtime per ``period`` that ``pairs`` ((runtime, period)) add up to.

    With one period throughout (the normal case) that is the plain sum an operator can
    check by hand; otherwise the kernel's ratio, rounded up so free budget is never
    overstated.
    """
    if all(p == period for _, p in pairs):
        return sum(r for r, _ in pairs)
    ratio = sum(rtsched.to_ratio(p, r) for r, p in pairs)
    return -(-ratio * period >> rtsched.BW_SHIFT)


def _children(group: Path) -> list[tuple[int, int]]:
    return [_bandwidth(child) for child in sorted(group.iterdir())
            if child.is_dir() and (child / rtsched.RUNTIME).is_file()]


def read_rt_budget(cgroup_root: str, runtime: int, period: int) -> RtBudget | None:
    """The RT budget at the root and the machine group; None without RT group scheduling.

    As in the kernel, the root never hands out more than the global sysctl allows.
    """
    cpu = rtsched.cpu_controller(cgroup_root)
    if cpu is None or not (cpu / rtsched.RUNTIME).is_file():
        return None
    root_raw = fsutil.read_int(cpu / rtsched.RUNTIME)
    root_rt, root_period = _bandwidth(cpu)
    glob = period if runtime < 0 else runtime
    root_cap = min(root_rt, glob if period == root_period else
                   rtsched.to_ratio(period, glob) * root_period >> rtsched.BW_SHIFT)
    root_free = max(0, root_cap - _in_period(_children(cpu), root_period))
    machine = next((cpu / g for g in _MACHINE_GROUPS if (cpu / g / rtsched.RUNTIME).is_file()),
                   None)
    if machine is None:
        return RtBudget(str(cpu), root_raw, root_period, root_free,
                        None, None, None, None, root_free)
    m_raw = fsutil.read_int(machine / rtsched.RUNTIME)
    m_rt, m_period = _bandwidth(machine)
    m_used = _in_period(_children(machine), m_period)
    m_free = max(0, m_rt - m_used)
    # The machine group can grow into the root's free share, but never past its period.
    grow = (root_free if m_period == root_period else
            rtsched.to_ratio(root_period, root_free) * m_period >> rtsched.BW_SHIFT)
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
    check = lifecycle.realtime_gate(cfg)
    if not check.ok:
        mode = "refuse"
    elif rtsched.needs_group_budget(cfg.cgroup_root, cfg.proc_root):
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
        runtime, period = rtsched.rt_sysctl(cfg.proc_root)
        topo = sysfs.read_topology(cfg.sysfs_root)
        policy = start_policy(cfg)
        needs_budget = rtsched.needs_group_budget(cfg.cgroup_root, cfg.proc_root)
    except NumahookError as exc:
        raise HostError(str(exc)) from None

    budget: RtBudget | None = None
    group_sched = False
    try:
        cpu = rtsched.cpu_controller(cfg.cgroup_root)
        group_sched = cpu is not None and (cpu / rtsched.RUNTIME).is_file()
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
    )
    path = cfg.source if cfg.source.startswith("/") else DEFAULT_PATH
    return replace(cap, reasons=tuple(reasons(cap, path)))


def _nodes(topo: Topology) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(n.id, frozenset(n.cpus), n.memory_kib)
                 for n in sorted(topo.nodes.values(), key=lambda n: n.id))


def _pools(topo: Topology) -> tuple[Pool, ...]:
    return tuple(Pool(n.id, p.size_kib, p.nr, p.free, p.surplus)
                 for n in sorted(topo.nodes.values(), key=lambda n: n.id)
                 for p in sorted(n.hugepages.values(), key=lambda p: p.size_kib))


def reasons(cap: NodeCapability, config_path: str = DEFAULT_PATH) -> list[str]:
    """Sentences saying why the node is or is not real-time capable, each with its fix.

    The first is always KubeVirt's test; the others say what else decides how well a
    real-time guest runs here. ``config_path`` is named where a fix is a config change.
    """
    out: list[str] = []
    rt = cap.sched_rt_runtime_us
    if cap.realtime_capable:
        out.append("kernel.sched_rt_runtime_us is -1: RT throttling is off, so SCHED_FIFO "
                   "vCPUs may run unthrottled and this node is real-time capable")
    else:
        out.append(f"kernel.sched_rt_runtime_us is {rt}: RT throttling is on; run `sysctl -w "
                   "kernel.sched_rt_runtime_us=-1` (and persist it in /etc/sysctl.d/) to make "
                   "this node real-time capable")
    policy = cap.start_policy
    if policy.mode == "refuse":
        out.append("real-time domains are refused here because RT group scheduling would give "
                   "libvirt's vCPU cgroups no budget; set throttled = delegate under [realtime] "
                   f"in {config_path} to let numahook delegate budget instead")
    elif not policy.ok:
        out.append(policy.reason)
    elif policy.mode == "delegate":
        free = cap.rt_budget.available_us if cap.rt_budget else 0
        out.append(f"real-time domains still start here because numahook delegates RT group "
                   f"budget ({free} us per period is free for them), split between their "
                   "real-time vCPUs; turn throttling off as above to give them full CPUs")
    if not cap.preempt_rt:
        out.append("the kernel is not PREEMPT_RT (/sys/kernel/realtime is not 1), so latency "
                   "is best effort; boot a PREEMPT_RT kernel (linux-image-rt-amd64 or "
                   "kernel-rt) for hard real-time guests")
    if not cap.isolcpus:
        out.append("no CPUs are isolated from the scheduler; add isolcpus=managed_irq,domain,"
                   "<cpus> nohz_full=<cpus> rcu_nocbs=<cpus> to the kernel command line and "
                   "reboot to keep host work off real-time vCPUs")
    else:
        missing = [name for name, cpus in (("nohz_full", cap.nohz_full),
                                           ("rcu_nocbs", cap.rcu_nocbs))
                   if not cap.isolcpus <= cpus]
        if missing:
            cpus = cpulist.format(cap.isolcpus)
            out.append(f"isolated CPUs {cpus} are not all in {' and '.join(missing)}, so the "
                       "timer tick or RCU callbacks still interrupt them; add "
                       + " ".join(f"{m}={cpus}" for m in missing)
                       + " to the kernel command line")
    if not any(p.free for p in cap.hugepages):
        out.append("no hugepages are free on any NUMA node; reserve some per node, such as `echo 4 "
                   "> /sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages`")
    mounted = {m.pagesize_kib for m in cap.hugetlbfs}
    for size in cap.page_sizes():
        if any(p.nr for p in cap.hugepages if p.size_kib == size) and size not in mounted:
            out.append(f"{size} KiB hugepages are reserved but no hugetlbfs is mounted with that "
                       f"page size; mount one (pagesize={size_name(size)[:-1]}) before libvirtd "
                       "starts, from /etc/fstab")
    if cap.libvirt_reachable is False:
        out.append(f"libvirt at {cap.libvirt_uri} is not reachable; start libvirtd or virtqemud "
                   "(or fix libvirt_uri under [daemon])")
    return out


# --------------------------------------------------------------------------- libvirt


def check_libvirt(uri: str, timeout: float = 3.0) -> bool | None:
    """Can a read-only libvirt connection be opened within ``timeout`` seconds?

    None when python3-libvirt is not installed. For the CLI only: it silences libvirt's
    default error printer for the whole process. The attempt runs in a daemon thread so a
    wedged libvirtd cannot hang the caller; it is abandoned, not killed, on timeout.
    """
    try:
        import libvirt  # type: ignore[import-not-found]
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


# --------------------------------------------------------------------------- text


def _yes(flag: bool | None) -> str:
    return "unknown" if flag is None else "yes" if flag else "no"


def _param(p: CpuParam) -> str:
    if p.raw is None:
        return "not set"
    text = f"{cpulist.format(p.cpus) or 'none'} ({len(p.cpus)} CPUs)"
    return f"{text}, flags {','.join(p.flags)}" if p.flags else text


def report_lines(cap: NodeCapability) -> list[tuple[str, str]]:
    """(fact, value) pairs for the CLI table, in reading order."""
    rows: list[tuple[str, str]] = [
        ("real-time capable", f"{_yes(cap.realtime_capable)} (kernel.sched_rt_runtime_us = "
                              f"{cap.sched_rt_runtime_us}, period {cap.sched_rt_period_us} us)"),
        ("real-time starts", f"{'allowed' if cap.start_policy.ok else 'refused'} "
                             f"({cap.start_policy.mode}): {cap.start_policy.reason}"),
        ("RT group scheduling", _yes(cap.rt_group_sched)
         + (", domains need delegated budget" if cap.needs_group_budget else "")),
    ]
    b = cap.rt_budget
    if b is not None:
        text = f"root {b.root_runtime_us} us ({b.root_free_us} free)"
        if b.machine_group:
            text += f", {b.machine_group} {b.machine_runtime_us} us ({b.machine_free_us} free)"
        rows.append(("RT budget", f"{text}; {b.available_us} us per period available"))
    rows += [
        ("PREEMPT_RT", _yes(cap.preempt_rt)),
        ("kernel", cap.kernel_release or "unknown"),
        *((name, _param(cap.cmdline[name])) for name in CPU_PARAMS),
        ("cgroup", f"v{cap.cgroup_version}"),
        ("CPUs online", f"{cpulist.format(cap.online_cpus)} ({len(cap.online_cpus)})"),
        ("NUMA nodes", f"{len(cap.nodes)}: " + "; ".join(
            f"node{n.id} CPUs {cpulist.format(n.cpus) or 'none'}, {n.memory_kib // 1024} MiB"
            for n in cap.nodes)),
    ]
    for n in cap.nodes:
        pools = [p for p in cap.hugepages if p.node == n.id]
        if pools:
            rows.append((f"hugepages node{n.id}", "; ".join(
                f"{size_name(p.size_kib)}: {p.free} free of {p.nr}"
                + (f" ({p.surplus} surplus)" if p.surplus else "") for p in pools)))
    rows.append(("hugetlbfs", ", ".join(
        f"{m.path} ({size_name(m.pagesize_kib)}{'' if m.explicit else ', default'})"
        for m in cap.hugetlbfs) or "none mounted"))
    reach = {True: "reachable", False: "not reachable", None: "unknown"}[cap.libvirt_reachable]
    rows.append(("libvirt", f"{reach} ({cap.libvirt_uri})"))
    return rows


def text_report(cap: NodeCapability) -> str:
    """The readable report: one line per fact, then the reasons and any warnings."""
    rows = report_lines(cap)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("reasons:")
    lines += [f"  - {r}" for r in cap.reasons]
    if cap.warnings:
        lines.append("warnings:")
        lines += [f"  - {w}" for w in cap.warnings]
    return "\n".join(lines)


__all__ = [
    "CPU_PARAMS",
    "CpuParam",
    "HugetlbfsMount",
    "NodeCapability",
    "NodeInfo",
    "Pool",
    "RtBudget",
    "StartPolicy",
    "check_libvirt",
    "pagesize_kib",
    "parse_cmdline",
    "parse_mounts",
    "probe",
    "read_rt_budget",
    "reasons",
    "report_lines",
    "size_name",
    "start_policy",
    "text_report",
]
