"""What each managed domain holds and how its vCPUs run: for ``numahook status`` and numahookd.

Built from files only (libvirt status XML, our claims, procfs), so it works while libvirt
is down. With a libvirt connection at hand, inactive definitions are added, and each
running domain's persistent definition is rendered to say what its next start changes.
"""

from __future__ import annotations

import logging
from typing import Any

from numahook import NAMESPACE
from numahook.config import Config
from numahook.core import cpulist, explain, hardware, metadata, pending, placement, plan, render
from numahook.errors import InputError, NumahookError
from numahook.host import fsutil, libvirtstatus, procfs, sysfs
from numahook.ops import hostinputs
from numahook.state.statedir import StateDir
from numahook.tunables import REGISTRY, view
from numahook.tunables.view import View

log = logging.getLogger(__name__)


def _running(cfg: Config, claims: dict[str, Any]
             ) -> list[tuple[dict[str, Any], View, frozenset[int]]]:
    """Each running managed domain's entry, with its view and the siblings it holds idle
    (what its next start is compared with)."""
    out = []
    for st in libvirtstatus.running_domains(cfg.libvirt_run):
        try:
            seen = view.of_status(st, cfg.proc_root)
        except NumahookError as exc:
            log.warning("cannot read the live definition of %s: %s", st.name, exc)
            continue
        if seen is None:
            continue
        facts = seen.facts
        vcpus = []
        for v in range(facts.vcpus):
            entry: dict[str, Any] = {
                "vcpu": v, "cpus": cpulist.format(facts.vcpupin.get(v, ())),
                "realtime": v in seen.rt_vcpus, "tid": seen.tids.get(v), "policy": None,
                "priority": None}
            if v in seen.tids:
                try:
                    entry["policy"], entry["priority"] = procfs.sched_of(seen.tids[v])
                except NumahookError:
                    pass
            vcpus.append(entry)
        try:
            host = sysfs.read_pci(cfg.sysfs_root, facts.bdfs)
        except NumahookError as exc:
            log.warning("cannot read the PCI devices of %s: %s", st.name, exc)
            host = {}
        out.append(({
            "name": st.name, "uuid": st.uuid, "state": st.state, "pid": st.pid,
            "cpus": cpulist.format(st.pinned_cpus),
            "emulator": cpulist.format(facts.emulator_cpus or ()),
            "cells": [{"id": c.id, "vcpus": cpulist.format(c.cpus), "memory_kib": c.memory_kib,
                       "host_nodes": cpulist.format(facts.memnodes.get(c.id, ()))}
                      for c in facts.cells],
            "memory": _memory(facts.numatune_memory),
            "vcpus": vcpus,
            "claim": claims.pop(st.uuid, None),
            "devices": [explain.device_dict(r) for r in placement.where(facts, host)],
            "next_start": None,
            **_rows(cfg, seen),
        }, seen, metadata.held_cpus(st.domain)))
    return out


def _rows(cfg: Config, seen: View) -> dict[str, Any]:
    """Every tunable's keys, whether the domain uses it or not: one schema for scripts."""
    out: dict[str, Any] = {}
    for tunable in REGISTRY:
        out.update(tunable.status(cfg, seen))
    return out


def _memory(tune: tuple[str, frozenset[int]] | None) -> dict[str, Any] | None:
    """The live ``<numatune><memory>``: where QEMU may take the domain's memory from."""
    if tune is None:
        return None
    return {"mode": tune[0], "host_nodes": cpulist.format(tune[1])}


def collect(cfg: Config, conn: Any = None) -> dict[str, Any]:
    state = StateDir(cfg.state_dir)
    claims: dict[str, Any] = {}
    if fsutil.exists(state.path):
        for c in state.list_claims():
            claims[c.uuid] = {"phase": c.phase, "cpus": cpulist.format(c.cpus), "name": c.name}
            for tunable in REGISTRY:
                claims[c.uuid].update(tunable.held(c.entry(tunable.name)))
    found = _running(cfg, claims)
    running = [entry for entry, _, _ in found]
    inactive = []
    if conn is not None:
        import libvirt

        for entry, seen, held in found:
            entry["next_start"] = _next_start(cfg, conn, seen, held, state)
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


def _next_start(cfg: Config, conn: Any, seen: View, held: frozenset[int],
                state: StateDir) -> dict[str, Any] | None:
    """What the domain's next start changes: its persistent definition rendered as the
    hook would at ``prepare`` once it has stopped (its own CPUs and claim count as free),
    against what runs. None: unknown (a transient domain, or libvirt did not answer)."""
    import libvirt

    try:
        dom = conn.lookupByUUIDString(seen.facts.uuid)
        if not dom.isPersistent():
            return None
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        log.warning("cannot read the persistent definition of %s: %s", seen.name,
                    exc.get_error_message())
        return None
    out: dict[str, Any] = {"changes": [], "refused": None, "rendered": True}
    try:
        doc = render.parse(xml)
        if doc.request is None or not doc.request.managed:
            out["changes"] = ["numahook stops managing it: its definition has no "
                              "<numahook:domain> metadata"]
            return out
        facts = doc.facts
        inputs, _ = hostinputs.gather(cfg, facts.partition, facts.uuid or None,
                                      state=state if fsutil.exists(state.path) else None,
                                      devices=facts.bdfs)
        ev = render.evaluate(doc, inputs)
    except NumahookError as exc:
        out["refused"] = str(exc)
        return out
    if ev.failed is not None:
        out["refused"] = ev.failed.reason
        return out
    out["changes"] = pending.changes(seen.facts, seen.rt_vcpus, seen.request.realtime_priority,
                                     held, facts, ev.plan)
    out["rendered"] = ev.plan is None or not hardware.differences(facts, ev.plan)
    return out


def _report(d: dict[str, Any]) -> plan.DeviceReport:
    return plan.DeviceReport(d["kind"], d["bdf"], d["host_node"], d["root_complex"],
                                  d["present"], d["placement"], d["cell"], d["bus"],
                                  d["bus_nr"], d["port"], d["address"], d["why"])


def text(doc: dict[str, Any]) -> str:
    lines = []
    for d in doc["running"]:
        lines.append(f"{d['name']}  {d['state']}  cpus {d['cpus']}  emulator "
                     f"{d['emulator'] or 'not pinned'}"
                     + (f" (runs on {d['emulator_now']} now)"
                        if d["emulator_now"] not in (None, d["emulator"]) else "")
                     + (f"  [{mark}]" if (mark := differs(d)) else ""))
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
        for tunable in REGISTRY:
            lines += tunable.text(d)
        lines += _next_lines(d)
    for d in doc["inactive"]:
        lines.append(f"{d['name']}  shut off")
    for c in doc["orphan_claims"]:
        lines.append(f"orphan claim {c['name']} ({c['uuid']}) phase {c['phase']}: numahookd "
                     "releases it")
    return "\n".join(lines) or "no managed domains"


def differs(d: dict[str, Any]) -> str:
    """A running domain's mark when its next start differs from what runs ("" if not)."""
    ns = d.get("next_start") or {}
    return ("its next start is refused" if ns.get("refused") else
            "changes at its next start" if ns.get("changes") else "")


def _next_lines(d: dict[str, Any]) -> list[str]:
    ns = d.get("next_start") or {}
    if ns.get("refused"):
        return [f"  at its next start: refused: {ns['refused']}"]
    if not ns.get("changes"):
        return []
    lines = ["  at its next start (its persistent definition renders differently now):"]
    lines += [f"    {c}" for c in ns["changes"]]
    if not ns.get("rendered", True):
        lines.append(f"    (not rendered yet: numahookd renders it, or run `numahook apply "
                     f"{d['name']}`)")
    return lines


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
