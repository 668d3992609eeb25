"""Plain-data views of an evaluation, for ``numahook check --json`` and status reports."""

from __future__ import annotations

from typing import Any

from numahook.core import cpulist
from numahook.core.plan import Evaluation, Plan


def plan_dict(plan: Plan | None) -> dict[str, Any]:
    if plan is None:
        return {"pinning": None, "cells": [], "realtime_vcpus": []}
    return {
        "pinning": {
            "vcpus": {str(v): c for v, c in enumerate(plan.vcpu_pins)},
            "emulator": list(plan.emulator),
            "iothreads": {str(io): list(cpus) for io, cpus in plan.iothread_pins},
        },
        "cells": [
            {"id": c.id, "host_node": c.host_node, "vcpus": list(c.vcpus),
             "memory_kib": c.memory_kib, "pages": c.pages}
            for c in plan.cells
        ],
        "page_kib": plan.page_kib,
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
        pins = ", ".join(f"{v}->{c}" for v, c in enumerate(plan.vcpu_pins))
        lines.append(f"  pinning: vCPU {pins}; emulator {cpulist.format(plan.emulator)}")
        for cell in plan.cells:
            lines.append(f"  cell {cell.id}: host node {cell.host_node}, vCPUs "
                         f"{cpulist.format(cell.vcpus)}, {cell.memory_kib} KiB "
                         f"({cell.pages} pages)")
        if plan.realtime_vcpus:
            lines.append(f"  realtime: vCPUs {cpulist.format(plan.realtime_vcpus)} SCHED_FIFO "
                         f"priority {plan.priority}"
                         + (" via <vcpusched>" if plan.vcpusched else " applied after start"))
    return "\n".join(lines)
