"""Plain-data views of an evaluation, for ``numahook check --json`` and status reports."""

from __future__ import annotations

from typing import Any

from numahook.core import cpulist
from numahook.core.plan import DeviceReport, Evaluation, Plan
from numahook.core.units import counted, human_kib, plural


def device_dict(r: DeviceReport) -> dict[str, Any]:
    """One passthrough device: where it is on the host, where it goes in the guest."""
    return {"bdf": r.bdf, "kind": r.kind, "present": r.present, "host_node": r.host_node,
            "root_complex": r.root_complex, "placement": r.placement, "cell": r.cell,
            "bus": r.bus, "bus_nr": r.bus_nr, "port": r.port, "address": r.address,
            "why": r.why}


def device_text(r: DeviceReport) -> str:
    """``device 0000:18:00.0 (hostdev): host node 0, root complex pci0000:17 -> ...``"""
    if not r.present:
        host = "not on this host"
    else:
        host = (f"host node {r.host_node}" if r.host_node is not None else "no host NUMA node") \
            + (f", root complex {r.root_complex}" if r.root_complex else "")
    if r.placement == "expander-bus":
        guest = (f"guest cell {r.cell}, pcie-expander-bus {r.bus} (busNr {r.bus_nr}), "
                 f"root port {r.port}, address {r.address}")
    elif r.placement == "kept":
        guest = f"kept at {r.address or 'its own address'}"
    else:
        guest = "pcie.0"
    return f"device {r.bdf} ({r.kind}): {host} -> {guest}" + (f" ({r.why})" if r.why else "")


def plan_dict(plan: Plan | None) -> dict[str, Any]:
    if plan is None:
        return {"pinning": None, "cells": [], "realtime_vcpus": []}
    return {
        "pinning": {
            "vcpus": {str(v): c for v, c in enumerate(plan.vcpu_pins) if v not in plan.floating},
            "floating": {"vcpus": list(plan.floating), "cpus": list(plan.float_cpus)},
            "emulator": list(plan.emulator),
            "emulator_start": list(plan.emulator_pin),
            "iothreads": {str(io): list(cpus) for io, cpus in plan.iothread_pins},
            "held": list(plan.held),
        },
        "cells": [
            {"id": c.id, "host_node": c.host_node, "vcpus": list(c.vcpus),
             "memory_kib": c.memory_kib, "pages": c.pages}
            for c in plan.cells
        ],
        "page_kib": plan.page_kib,
        "memory_node": plan.memory_node,
        "hugepages": [{"node": n, "size_kib": size, "pages": pages}
                      for (n, size), pages in sorted(plan.page_need.items())],
        "realtime_vcpus": list(plan.realtime_vcpus),
        "priority": plan.priority if plan.realtime_vcpus else None,
        "vcpusched": plan.vcpusched,
        "cpus": cpulist.format(plan.cpus),
        "digest": plan.digest(),
    }


def evaluation_dict(name: str, ev: Evaluation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "domain": name,
        "ok": ev.failed is None,
        "preconditions": [{"name": c.name, "ok": c.ok, "reason": c.reason} for c in ev.checks],
        "advisories": list(ev.advisories),
        "devices": [device_dict(r) for r in ev.devices],
    }
    doc.update(plan_dict(ev.plan))
    return doc


def evaluation_text(name: str, ev: Evaluation) -> str:
    lines = [f"{name}:"]
    for c in ev.checks:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[c.ok]
        lines.append(f"  {mark} {c.name}: {c.reason}")
    for a in ev.advisories:
        lines.append(f"  warn advisory: {a}")
    plan = ev.plan
    if plan is not None:
        pins = ", ".join(f"{v}->{cpulist.format(plan.pin(v))}"
                         + (" (shared)" if v in plan.floating else "")
                         for v in range(len(plan.vcpu_pins)))
        lines.append(f"  pinning: vCPU {pins}; emulator {cpulist.format(plan.emulator)}"
                     + (" (the shared set)" if plan.emulator_shared else "")
                     + (f"; siblings {cpulist.format(plan.held)} held" if plan.held else ""))
        if plan.emulator_start:
            lines.append(f"  emulator while QEMU starts: CPUs {cpulist.format(plan.emulator_pin)}"
                         ", so it reaches every guest cell's host node to preallocate its "
                         "memory there; narrowed to "
                         f"{cpulist.format(plan.emulator)} at started")
        for cell in plan.cells:
            lines.append(f"  cell {cell.id}: host node {cell.host_node}, vCPUs "
                         f"{cpulist.format(cell.vcpus)}, {cell.memory_kib} KiB "
                         f"({cell.pages} pages)")
        if plan.memory_node is not None:
            lines.append(f"  memory: bound strict to host node {plan.memory_node}, "
                         f"{plan.memory_pages} pages of {human_kib(plan.page_kib or 0)}")
        if plan.realtime_vcpus:
            lines.append(f"  realtime: {plural(len(plan.realtime_vcpus), 'vCPU')} "
                         f"{cpulist.format(plan.realtime_vcpus)} SCHED_FIFO "
                         f"priority {plan.priority}"
                         + (" via <vcpusched>" if plan.vcpusched else " applied after start"))
        for bus in plan.buses:
            lines.append(f"  pcie-expander-bus {bus.index} (busNr {bus.bus_nr}): guest cell "
                         f"{bus.cell}, host node {bus.host_node}, root complex "
                         f"{bus.root_complex}, {counted(len(bus.ports), 'root port')}")
    lines += [f"  {device_text(r)}" for r in ev.devices]
    return "\n".join(lines)
