"""The reference guide's real-time tuning advice that a domain does not follow yet.

Advisories, not refusals: ``numahook check`` lists them, and a start goes ahead.
"""

from __future__ import annotations

from numahook.core import cpulist
from numahook.core.domainxml import DomainFacts
from numahook.core.plan import Plan
from numahook.core.request import Request
from numahook.core.topology import Topology


def realtime(facts: DomainFacts, req: Request, plan: Plan | None,
             topo: Topology | None = None) -> list[str]:
    """What libvirt's kvm-realtime guide and KubeVirt's real-time example do that this
    real-time domain does not (nothing for other domains)."""
    if not req.realtime:
        return []
    out = []
    if facts.graphics:
        out.append("a graphics device is attached; remove it to cut interrupts "
                   "(KubeVirt: autoattachGraphicsDevice: false)")
    if facts.memballoon not in (None, "none"):
        out.append("a memory balloon is present; numahook renders <memballoon model='none'/>")
    if facts.cpu_mode != "host-passthrough":
        out.append("the CPU is not host-passthrough; set <cpu mode='host-passthrough'>")
    if not facts.tsc_deadline_required:
        out.append("tsc-deadline is not required; add <feature policy='require' "
                   "name='tsc-deadline'/> to <cpu>")
    if plan is not None and topo is not None:
        threads = plan.topology[3]
        rt_cpus = {plan.vcpu_pins[v] for v in plan.realtime_vcpus}
        for v in plan.realtime_vcpus:
            c = plan.vcpu_pins[v]
            core = v - v % threads
            own = set(plan.vcpu_pins[core:core + threads])
            others = topo.cpus[c].siblings - own - set(plan.held)
            if others:
                out.append(f"hyperthread siblings are shared: real-time vCPU {v} on CPU {c} "
                           f"shares its core with CPU {cpulist.format(others)}; set "
                           "threadPolicy='isolate', give the guest threads='2' in "
                           "<cpu><topology>, or turn SMT off")
                break
        if not req.isolated_emulator and set(plan.emulator) & rt_cpus:
            out.append("the emulator thread shares CPUs with real-time vCPUs; set "
                       "emulatorThreadPolicy=\"share\" (with [cpus] shared in numahook.conf: "
                       "no dedicated CPU spent) or isolateEmulatorThread=\"true\"")
    return out
