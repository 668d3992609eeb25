"""Gather the renderer's inputs from the host: one function for the hook, daemon and CLI.

Reads files only (sysfs, cgroupfs, procfs, libvirt status XML, our state dir), never
libvirt's API, so the hook can call it without deadlocking libvirtd.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from numahook.config import Config
from numahook.core import allocate, cpulist, metadata
from numahook.core.plan import Check, Inputs, Plan
from numahook.core.units import human_kib, plural
from numahook.errors import NumahookError, Refusal
from numahook.host import cgroups, fsutil, hugepages, libvirtstatus, procfs, rtsched, sysfs
from numahook.records import field, record
from numahook.state.claims import Claim, check_uuid
from numahook.state.statedir import StateDir
from numahook.tunables import hugepages as pages_tunable

#: lets libvirtd raise QEMU's RLIMIT_MEMLOCK, which <memoryBacking><locked/> needs
CAP_SYS_RESOURCE = 24
#: ``numahook check``'s precondition for the hugepages a start would reserve
CHECK_PAGES = "hugepages-available"


@record(frozen=True)
class CpuSource:
    """Where the available set came from, for messages and ``numahook check``."""

    partition: str
    partition_path: str
    partition_cpus: frozenset[int]
    held_by_domains: dict[str, frozenset[int]]
    held_by_claims: frozenset[int]
    #: ``[cpus] shared``: out of the dedicated pool, for shared emulators
    shared: frozenset[int] = frozenset()
    #: CPU of the partition -> the other domain holding it (Inputs.holders)
    holders: Mapping[int, str] = field(default_factory=dict)
    #: (node, page size KiB) -> other domain -> the pages its memory takes there, as their
    #: claims say: whom a hugepage shortage names
    pages_held: Mapping[hugepages.PoolKey, Mapping[str, int]] = field(default_factory=dict)

    def describe(self) -> str:
        held = set(self.held_by_claims)
        for cpus in self.held_by_domains.values():
            held |= cpus
        held -= self.shared  # a shared emulator's pin: used, not held
        held &= self.partition_cpus  # "of which": a CPU outside it is no loss to the domain
        text = (f"partition {self.partition} ({self.partition_path}) has CPUs "
                f"{cpulist.format(self.partition_cpus) or 'none'}")
        if held:
            text += (f", of which {cpulist.format(held)} {plural(len(held), 'is', 'are')} held "
                     "by other dedicated domains")
            named = allocate.holding(self.holders, held)
            if named:
                text += f" ({allocate.who_holds(named)})"
        if self.shared:
            text += (f"; {cpulist.format(self.shared)} {plural(len(self.shared), 'is', 'are')} "
                     "the shared set ([cpus] shared), never dedicated")
        return text


def managed_running(cfg: Config, exclude_uuid: str | None) -> dict[str, frozenset[int]]:
    """CPUs pinned by other running domains that opted in (they hold theirs exclusively)."""
    out: dict[str, frozenset[int]] = {}
    for dom in libvirtstatus.running_domains(cfg.libvirt_run):
        if exclude_uuid and dom.uuid == (exclude_uuid or "").lower():
            continue
        if not metadata.opted_in(dom.domain):
            continue
        out[dom.name] = dom.pinned_cpus
    return out


def _others(state: StateDir, exclude_uuid: str | None) -> list[Claim]:
    """Every claim but the domain's own, as StateDir.held_cpus counts them."""
    skip = check_uuid(exclude_uuid) if exclude_uuid else None
    return [c for c in state.list_claims() if c.uuid != skip]


def holders_of(running: Mapping[str, frozenset[int]], claims: Iterable[Claim],
               scope: frozenset[int]) -> dict[int, str]:
    """CPU of ``scope`` -> the domain that holds it: a running one by its live pins, else
    the claim of a start in progress (or of an orphan numahookd has yet to release)."""
    out: dict[int, str] = {}
    for name, cpus in sorted(running.items()):
        for c in cpus & scope:
            out.setdefault(c, name)
    for claim in claims:
        for c in claim.cpus & scope:
            out.setdefault(c, claim.name)
    return out


def gather(cfg: Config, partition: str | None, exclude_uuid: str | None,
           cpuset_override: frozenset[int] | None = None,
           state: StateDir | None = None,
           devices: Iterable[str] = (), count_held: bool = True) -> tuple[Inputs, CpuSource]:
    """``devices``: the BDFs of the domain's passthrough devices, read from sysfs too.

    ``count_held`` False asks what the domain would get on an empty host (``--no-state``):
    neither running managed domains nor claims take CPUs away, whatever ``state`` holds.
    """
    topo = sysfs.read_topology(cfg.sysfs_root)
    if cpuset_override is not None:
        cpus, path = cpuset_override, "--cpuset"
    else:
        cs = cgroups.partition_cpuset(cfg.cgroup_root, partition)
        cpus, path = cs.cpus, cs.path
    domains = managed_running(cfg, exclude_uuid) if count_held else {}
    others = _others(state, exclude_uuid) if state is not None and count_held else []
    claimed = frozenset(c for claim in others for c in claim.cpus)
    available = cpus - claimed
    for held in domains.values():
        available -= held
    inputs = Inputs(
        topology=topo,
        available=frozenset(available),
        config=cfg,
        emit_vcpusched=not rtsched.needs_group_budget(cfg.cgroup_root, cfg.proc_root),
        default_page_kib=sysfs.default_page_kib(cfg.proc_root),
        can_lock_memory=procfs.libvirtd_has_capability(CAP_SYS_RESOURCE, cfg.proc_root),
        devices=sysfs.read_pci(cfg.sysfs_root, devices),
        partition_cpus=None if cpuset_override is not None else frozenset(cpus),
        claimed_cpus=claimed,
        # a shared CPU is used by many, held by none: never a holder's to name
        holders=holders_of(domains, others, cpus - cfg.shared_cpus),
    )
    view = CpuSource(partition or cgroups.DEFAULT_PARTITION, path, cpus, domains, claimed,
                     cfg.shared_cpus, inputs.holders, pages_tunable.held_by(others))
    return inputs, view


def page_supply(plan: Plan, sysfs_root: str,
                held: Mapping[hugepages.PoolKey, Mapping[str, int]] | None = None
                ) -> Check | None:
    """``numahook check``'s view of the plan's hugepages on this host now, per node.

    Not part of the rendering, which must not change with what happens to be free; at
    start ``hugepages.reserve`` decides with the same numbers, and compacts first.
    ``held``: the other domains' pages per pool (CpuSource.pages_held), named in a shortage.
    """
    if not plan.page_need:
        return None
    try:
        rows = hugepages.supply(plan.page_need, sysfs_root)
    except Refusal as exc:
        return Check(CHECK_PAGES, False, str(exc))
    short = hugepages.supply_shortfall(rows, held)
    if short:
        return Check(CHECK_PAGES, False, short)
    return Check(CHECK_PAGES, True, "; ".join(
        f"{r.need} pages of {human_kib(r.size_kib)} on node {r.node}: {r.free} already free, "
        f"{max(r.need - r.free, 0)} to add, room for {r.addable}" for r in rows))


def fingerprint(cfg: Config, partitions: set[str | None], state: StateDir) -> str:
    """What rendering depends on besides the domain itself, cheap to compute: numahookd
    renders inactive definitions again when it changes."""
    import hashlib

    parts = [sysfs.read_topology(cfg.sysfs_root).fingerprint(),
             str(rtsched.needs_group_budget(cfg.cgroup_root, cfg.proc_root)),
             # [cpus] shared leaves the dedicated pool: pinnings on it must move
             cpulist.format(cfg.shared_cpus)]
    for p in sorted(partitions, key=str):
        try:
            parts.append(cpulist.format(cgroups.partition_cpuset(cfg.cgroup_root, p).cpus))
        except NumahookError as exc:
            parts.append(str(exc))
    held = managed_running(cfg, None)
    parts.extend(f"{k}:{cpulist.format(v)}" for k, v in sorted(held.items()))
    parts.append(cpulist.format(state.held_cpus(None)) if fsutil.exists(state.path) else "")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
