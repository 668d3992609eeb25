"""What a node can do for real-time guests, as plain data: the probe's result.

:mod:`numahook.node.probe` fills it, :mod:`numahook.node.report` says it in sentences,
:mod:`numahook.node.publish` writes it for fleets (docs/status-schema.md is the JSON).
``realtime_capable`` is KubeVirt's test (``kernel.sched_rt_runtime_us`` is -1) and
nothing more; the rest is what actually decides how well a real-time guest runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from numahook.core import cpulist

#: Kernel command-line parameters that take a CPU list and matter for real-time guests.
CPU_PARAMS = ("isolcpus", "nohz_full", "rcu_nocbs")


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
class NodeHugepages:
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
    hugepages: tuple[NodeHugepages, ...]
    default_hugepage_kib: int
    hugetlbfs: tuple[HugetlbfsMount, ...]
    libvirt_uri: str
    libvirt_reachable: bool | None
    start_policy: StartPolicy
    reasons: tuple[str, ...]
    #: facts that could not be read (the rest of the probe still stands)
    warnings: tuple[str, ...] = ()
    #: ``[cpus] shared``: where shared emulators run, out of the dedicated pool
    shared_cpus: frozenset[int] = frozenset()

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
            "cpus": {"online": cpulist.format(self.online_cpus), "count": len(self.online_cpus),
                     "shared": cpulist.format(self.shared_cpus)},
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
            hugepages=tuple(NodeHugepages(n["id"], p["size_kib"], p["nr"], p["free"], p["surplus"])
                            for n in d["numa_nodes"] for p in n["hugepages"]),
            default_hugepage_kib=d["hugepages_default_kib"],
            hugetlbfs=tuple(HugetlbfsMount(m["path"], m["pagesize_kib"], m["explicit"])
                            for m in d["hugetlbfs"]),
            libvirt_uri=d["libvirt"]["uri"],
            libvirt_reachable=d["libvirt"]["reachable"],
            start_policy=StartPolicy(**d["start_policy"]),
            reasons=tuple(d["reasons"]),
            warnings=tuple(d["warnings"]),
            shared_cpus=cpulist.parse(d["cpus"].get("shared", "")),
        )


def size_name(size_kib: int) -> str:
    """Kubernetes' resource spelling of a page size: ``2Mi``, ``1Gi``, ``64Ki``."""
    for unit, factor in (("Gi", 1024 * 1024), ("Mi", 1024)):
        if size_kib % factor == 0:
            return f"{size_kib // factor}{unit}"
    return f"{size_kib}Ki"
