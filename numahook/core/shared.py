"""The host's shared housekeeping CPUs (``[cpus] shared``): who may use them, and the check.

Nova's ``[compute] cpu_shared_set`` and OpenShift's ``shared`` CPU set: CPUs no dedicated
vCPU ever gets, where the threads that need no CPU of their own float. Nova refuses a
host whose ``cpu_shared_set`` overlaps ``cpu_dedicated_set``; numahook has no separate
dedicated set (the partition's cpuset is the pool), so the shared set is taken *out of*
the pool instead: :func:`pool` is what dedicated allocation may use, everywhere. The
shared set must still lie in the partition's cpuset, because the domain's cgroup sits
under the partition and the kernel refuses a cpuset wider than its parent's.

Kept apart from :mod:`numahook.core.hardware`, which asks :func:`problem` when a domain
wants the set, because the set is a host fact with rules of its own.
"""

from __future__ import annotations

from numahook.core import cpulist
from numahook.core.plan import Inputs
from numahook.core.units import plural

#: the check's name in ``numahook check`` and the refusal counts
CHECK = "shared-cpus"


def pool(inp: Inputs) -> frozenset[int]:
    """The CPUs dedicated vCPUs and isolated emulators may get: never a shared one."""
    return inp.available - inp.config.shared_cpus


def problem(inp: Inputs, name: str, wants: str) -> str:
    """Why ``name``'s use of the shared set (``wants``: what asks for it) cannot work here,
    one sentence ending with the fix; "" when it can."""
    cfg, topo = inp.config, inp.topology
    shared = cfg.shared_cpus
    if not shared:
        return (f"{name} asks for {wants}, but this host has no shared CPUs; set shared = "
                f"<cpulist> under [cpus] in {cfg.path} (CPUs no dedicated domain needs)")
    absent = shared - frozenset(topo.cpus)
    if absent:
        return (f"[cpus] shared in {cfg.path} names {plural(len(absent), 'CPU')} "
                f"{cpulist.format(absent)} that this host does not have online; remove "
                f"{'it' if len(absent) == 1 else 'them'} from the list")
    if inp.partition_cpus is not None:
        outside = shared - inp.partition_cpus
        if outside:
            return (f"[cpus] shared in {cfg.path} names {plural(len(outside), 'CPU')} "
                    f"{cpulist.format(outside)} outside the cpuset of {name}'s partition "
                    f"({cpulist.format(inp.partition_cpus) or 'empty'}), where libvirt cannot "
                    "pin its threads; add them to the partition's cpuset or take them out of "
                    "[cpus] shared")
    taken = shared & inp.claimed_cpus
    if taken:
        return (f"{plural(len(taken), 'CPU')} {cpulist.format(taken)} of [cpus] shared "
                f"{plural(len(taken), 'is', 'are')} held by a dedicated domain that started "
                "before the set was configured; run `numahook apply` on that domain and "
                "restart it, so it is pinned off the shared set, then start this one")
    return ""


def summary(inp: Inputs, wants: str) -> str:
    """The passing check's words."""
    shared = inp.config.shared_cpus
    return (f"{wants} uses the shared {plural(len(shared), 'CPU')} {cpulist.format(shared)} "
            "([cpus] shared)")
