"""What each managed domain holds and how its vCPUs run: for ``numahook status`` and numahookd.

Built from files only (libvirt status XML, our claims, procfs), so it works while libvirt
is down; inactive definitions are added when a libvirt connection is at hand.
"""

from __future__ import annotations

import logging
from typing import Any

from numahook import NAMESPACE
from numahook.config import Config
from numahook.core import cpulist, explain, metadata, placement, render
from numahook.core.units import counted
from numahook.errors import InputError, NumahookError
from numahook.host import fsutil, hugepages, libvirtstatus, procfs, sysfs
from numahook.host.hugepages import PoolKey
from numahook.ops import kvmpit
from numahook.state.statedir import StateDir

log = logging.getLogger(__name__)


def _running(cfg: Config, claims: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for st in libvirtstatus.running_domains(cfg.libvirt_run):
        if not metadata.opted_in(st.domain):
            continue
        try:
            doc = render.read(st.domain)
        except NumahookError as exc:
            log.warning("cannot read the live definition of %s: %s", st.name, exc)
            continue
        facts, req = doc.facts, doc.request
        rt: frozenset[int] = frozenset()
        if req is not None and req.realtime:
            try:
                rt = cpulist.parse_mask(req.realtime_mask, facts.vcpus)
            except NumahookError:
                rt = frozenset()
        tids = dict(st.vcpu_tids)
        if not tids and st.pid:
            tids = procfs.vcpu_threads_from_proc(st.pid, cfg.proc_root)
        vcpus = []
        for v in range(facts.vcpus):
            entry: dict[str, Any] = {
                "vcpu": v, "cpus": cpulist.format(facts.vcpupin.get(v, ())),
                "realtime": v in rt, "tid": tids.get(v), "policy": None, "priority": None}
            if v in tids:
                try:
                    entry["policy"], entry["priority"] = procfs.sched_of(tids[v])
                except NumahookError:
                    pass
            vcpus.append(entry)
        claim = claims.pop(st.uuid, None)
        try:
            host = sysfs.read_pci(cfg.sysfs_root, facts.bdfs)
        except NumahookError as exc:
            log.warning("cannot read the PCI devices of %s: %s", st.name, exc)
            host = {}
        devices = placement.where(facts, host)
        out.append({
            "name": st.name, "uuid": st.uuid, "state": st.state, "pid": st.pid,
            "cpus": cpulist.format(st.pinned_cpus),
            "emulator": cpulist.format(facts.emulator_cpus or ()),
            "emulator_now": _affinity(st.pid),
            "cells": [{"id": c.id, "vcpus": cpulist.format(c.cpus), "memory_kib": c.memory_kib,
                       "host_nodes": cpulist.format(facts.memnodes.get(c.id, ()))}
                      for c in facts.cells],
            "memory": _memory(facts.numatune_memory),
            "vcpus": vcpus,
            "realtime_ok": all(e["policy"] == "fifo" for e in vcpus if e["realtime"]
                               and e["tid"] is not None),
            "claim": claim,
            "devices": [explain.device_dict(r) for r in devices],
            "kvm_pit": _kvm_pit(facts, st.pid, cfg.proc_root),
        })
    return out


def _affinity(pid: int | None) -> str | None:
    """Where QEMU's main (emulator) thread may run now: what ``check`` promised, or not."""
    if pid is None:
        return None
    try:
        return cpulist.format(procfs.affinity_of(pid))
    except NumahookError:
        return None


def _memory(tune: tuple[str, frozenset[int]] | None) -> dict[str, Any] | None:
    """The live ``<numatune><memory>``: where QEMU may take the domain's memory from."""
    if tune is None:
        return None
    return {"mode": tune[0], "host_nodes": cpulist.format(tune[1])}


def _kvm_pit(facts: Any, pid: int | None, proc_root: str) -> dict[str, Any] | None:
    """The kvm-pit thread of a dedicated KVM domain: where it runs and where it belongs."""
    want = kvmpit.target(facts)
    if want is None or pid is None:
        return None
    try:
        tid = procfs.kvm_pit_thread(pid, proc_root)
        cpus = procfs.affinity_of(tid) if tid is not None else None
    except NumahookError:
        tid = cpus = None
    return {"tid": tid, "cpus": cpulist.format(cpus) if cpus is not None else None,
            "vcpu0_cpus": cpulist.format(want)}


def collect(cfg: Config, conn: Any = None) -> dict[str, Any]:
    state = StateDir(cfg.state_dir)
    claims: dict[str, Any] = {}
    if fsutil.exists(state.path):
        for c in state.list_claims():
            claims[c.uuid] = {
                "phase": c.phase, "cpus": cpulist.format(c.cpus),
                "hugepages_added": {_label(pool): p for pool, p in c.hugepages.items()},
                "hugepages_need": {_label(pool): p for pool, p in c.need.items()},
                "rt_budget_files": len(c.rt_budget), "name": c.name}
    running = _running(cfg, claims)
    inactive = []
    if conn is not None:
        import libvirt

        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE
        for dom in conn.listAllDomains(flags):
            try:
                xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            except libvirt.libvirtError:
                continue
            if NAMESPACE in xml:
                inactive.append({"name": dom.name(), "uuid": dom.UUIDString(),
                                 "state": "shut off"})
    return {"running": running, "inactive": inactive,
            "orphan_claims": [dict(uuid=u, **c) for u, c in claims.items()]}


def _label(pool: PoolKey) -> str:
    """A pool as the JSON names it (docs/schemas/status.schema.json): ``node0:2048kB``."""
    return f"node{pool[0]}:{pool[1]}kB"


def _pages(labelled: dict[str, int]) -> str:
    """The JSON's pages per pool in words, as hugepages.describe says them."""
    pools = {}
    for label, n in labelled.items():
        node, _, size = label.partition(":")
        pools[(int(node[4:]), int(size[:-2]))] = n
    return hugepages.describe(pools)


def _report(d: dict[str, Any]) -> placement.DeviceReport:
    return placement.DeviceReport(d["kind"], d["bdf"], d["host_node"], d["root_complex"],
                                  d["present"], d["placement"], d["cell"], d["bus"],
                                  d["bus_nr"], d["port"], d["address"], d["why"])


def text(doc: dict[str, Any]) -> str:
    lines = []
    for d in doc["running"]:
        lines.append(f"{d['name']}  {d['state']}  cpus {d['cpus']}  emulator "
                     f"{d['emulator'] or 'not pinned'}"
                     + (f" (runs on {d['emulator_now']} now)"
                        if d["emulator_now"] not in (None, d["emulator"]) else ""))
        for c in d["cells"]:
            lines.append(f"  cell {c['id']}: vCPUs {c['vcpus']}, {c['memory_kib']} KiB on "
                         f"host node {c['host_nodes']}")
        if d["memory"] and not d["cells"]:
            lines.append(f"  memory: {d['memory']['mode']} on host node "
                         f"{d['memory']['host_nodes']}")
        for v in d["vcpus"]:
            sched = f"{v['policy']} {v['priority']}" if v["policy"] else "no thread"
            mark = " (real-time)" if v["realtime"] else ""
            lines.append(f"  vCPU {v['vcpu']} -> CPU {v['cpus']}: {sched}{mark}")
        lines += [f"  {explain.device_text(r)}" for r in map(_report, d["devices"])]
        pit = d["kvm_pit"]
        if pit:
            lines.append(f"  kvm-pit thread {pit['tid']}: CPUs {pit['cpus']} (vCPU 0's: "
                         f"{pit['vcpu0_cpus']})" if pit["tid"] else
                         "  kvm-pit: no thread (the PIT is off or emulated in QEMU)")
        claim = d["claim"]
        if claim:
            lines.append(f"  holds: hugepages added {_pages(claim['hugepages_added'])}, "
                         f"needs {_pages(claim['hugepages_need'])}, "
                         f"{counted(claim['rt_budget_files'], 'RT budget file')}")
    for d in doc["inactive"]:
        lines.append(f"{d['name']}  shut off")
    for c in doc["orphan_claims"]:
        lines.append(f"orphan claim {c['name']} ({c['uuid']}) phase {c['phase']}: numahookd "
                     "releases it")
    return "\n".join(lines) or "no managed domains"


def only(doc: dict[str, Any], key: str, conn: Any = None) -> dict[str, Any]:
    """``status NAME``: the same document with only that domain's entries, by name or UUID,
    so that scripts read one schema whether they ask for one domain or all."""
    def match(d: dict[str, Any]) -> bool:
        return key == d["name"] or key.lower() == str(d["uuid"]).lower()

    out = {k: [d for d in v if match(d)] for k, v in doc.items()}
    if any(out.values()):
        return out
    if conn is None:
        raise InputError(f"no managed domain named {key!r} or with that UUID runs or holds a "
                         "claim, and without libvirt the others cannot be listed; start "
                         "libvirtd, or check `virsh list --all`")
    import libvirt

    from numahook.ops import domains

    dom = domains.lookup(conn, key)  # an InputError naming the fix if libvirt has none
    if dom.isActive() and NAMESPACE in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE):
        raise InputError(f"{dom.name()} opted in after it started, so numahook manages it "
                         "from its next start; restart it (shut it down and start it)")
    raise InputError(f"{dom.name()} is not managed by numahook: its definition has no "
                     "<numahook:domain> metadata; add it to opt in (numahook(8), OPTING IN)")
