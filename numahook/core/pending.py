"""What a running domain's next start changes: its live definition against the plan its
persistent definition renders to now.

An edit to a running domain's persistent definition (its realtime mask, its vCPUs, its
memory), or a host that changed under it, takes effect only at its next start, and
nothing said so: ``numahook status`` showed the domain as it runs. This compares meaning,
as :func:`numahook.core.hardware.differences` does, but says each change as before ->
after, in the terms status prints. Pure: ``ops/status.py`` reads and renders.
"""

from __future__ import annotations

from collections.abc import Iterable

from numahook.core import cpulist
from numahook.core.domainxml import DomainFacts
from numahook.core.plan import Plan
from numahook.core.units import human_kib

#: at most this many vCPUs' moves are listed one by one, then counted
_MOVES = 4


def _set(cpus: Iterable[int] | None) -> str:
    return cpulist.format(cpus or ()) or "none"


def _cells(facts: DomainFacts) -> list[str]:
    return [f"vCPUs {_set(c.cpus)}, {human_kib(c.memory_kib)} on host node "
            f"{_set(facts.memnodes.get(c.id))}" for c in sorted(facts.cells, key=lambda c: c.id)]


def _plan_cells(plan: Plan) -> list[str]:
    return [f"vCPUs {_set(c.vcpus)}, {human_kib(c.memory_kib)} on host node {c.host_node}"
            for c in plan.cells]


def changes(live: DomainFacts, live_rt: frozenset[int], live_priority: int | None,
            live_held: frozenset[int], new: DomainFacts, plan: Plan | None) -> list[str]:
    """Each change, "what -> what"; empty when the next start gives what runs now.

    ``live_*``: the domain as it runs (its live definition, the vCPUs its mask made
    real-time, their priority, the siblings it holds idle); ``new``: its persistent
    definition; ``plan``: what that renders to now (None for a managed domain without
    dedicated CPUs, which can have no real-time vCPUs either).
    """
    out: list[str] = []
    if live.vcpus != new.vcpus:
        out.append(f"vCPUs {live.vcpus} -> {new.vcpus}")
    if new.memory_kib != live.memory_kib:
        out.append(f"memory {human_kib(live.memory_kib)} -> {human_kib(new.memory_kib)}")
    if plan is None:
        if live.vcpupin:
            out.append("dedicated CPUs -> none (dedicatedCpuPlacement is off)")
        return out + _realtime(live_rt, frozenset(), live_priority, None)
    moves = [f"vCPU {v}: CPU {_set(live.vcpupin.get(v))} -> {cpu}"
             for v, cpu in enumerate(plan.vcpu_pins) if live.vcpupin.get(v) != frozenset({cpu})]
    out += moves[:_MOVES]
    if len(moves) > _MOVES:
        out.append(f"{len(moves) - _MOVES} more vCPUs move")
    if (live.emulator_cpus or frozenset()) != frozenset(plan.emulator):
        out.append(f"emulator: CPUs {_set(live.emulator_cpus)} -> {_set(plan.emulator)}")
    if live_held != frozenset(plan.held):
        out.append(f"siblings held idle: {_set(live_held)} -> {_set(plan.held)}")
    before, after = _cells(live), _plan_cells(plan)
    if len(before) != len(after):
        out.append(f"guest NUMA cells {len(before)} -> {len(after)}")
    out += [f"guest cell {i}: {a} -> {b}" for i, (a, b) in enumerate(zip(before, after))
            if a != b]
    bound = live.numatune_memory[1] if live.numatune_memory and not live.cells else None
    want = frozenset({plan.memory_node}) if plan.memory_node is not None else None
    if bound != want:
        out.append(f"memory bound to host node {_set(bound)} -> {_set(want)}")
    have_page = live.page_sizes[0] if live.page_sizes else None
    if plan.page_kib is not None and have_page not in (None, plan.page_kib):
        out.append(f"hugepages {human_kib(have_page)} -> {human_kib(plan.page_kib)}")
    # a new vCPU count changes the topology with it, and was said above
    if live.topology is not None and live.topology != plan.topology \
            and live.vcpus == new.vcpus:
        out.append("guest topology (sockets x dies x cores x threads) "
                   f"{'x'.join(map(str, live.topology))} -> {'x'.join(map(str, plan.topology))}")
    return out + _realtime(live_rt, frozenset(plan.realtime_vcpus), live_priority,
                           plan.priority if plan.realtime_vcpus else None)


def _realtime(before: frozenset[int], after: frozenset[int], prio_before: int | None,
              prio_after: int | None) -> list[str]:
    out = []
    if before != after:
        out.append(f"real-time vCPUs {_set(before)} -> {_set(after)}")
    if before and after and prio_before is not None and prio_after is not None \
            and prio_before != prio_after:
        out.append(f"SCHED_FIFO priority {prio_before} -> {prio_after}")
    return out
