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

from collections.abc import Mapping

from numahook import records
from numahook.core import cpulist
from numahook.core.allocate import Allocation
from numahook.core.domainxml import DomainFacts
from numahook.core.plan import Inputs
from numahook.core.request import Request
from numahook.core.units import clip, plural
from numahook.errors import InputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from numahook.core.guestmem import Checks

#: the check's name in ``numahook check`` and the refusal counts
CHECK = "shared-cpus"
#: dedicatedMask's check
MASK = "dedicated-mask"


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


def dedicated_vcpus(ck: Checks, req: Request, inp: Inputs, facts: DomainFacts, threads: int,
                    realtime: frozenset[int]) -> frozenset[int]:
    """The vCPUs with a CPU of their own: all of them, or dedicatedMask's (Nova's
    ``hw:cpu_dedicated_mask``), checked: at least one, whole guest cores (threadPolicy
    applies to them only, and a guest core must not straddle a host CPU and a set), the
    real-time ones among them (a floating vCPU shares its CPUs, so FIFO there would
    starve the host's housekeeping), and a usable shared set for the rest."""
    everyone = frozenset(range(facts.vcpus))
    if req.dedicated_mask is None:
        return everyone
    try:
        mask = cpulist.parse_mask(req.dedicated_mask, facts.vcpus)
    except InputError as exc:
        ck.fail(MASK, str(exc).replace("realtime mask", "dedicatedMask"))
        return everyone
    text = clip(req.dedicated_mask)
    split = [g for g in range(0, facts.vcpus, threads)
             if 0 < len(mask & set(range(g, g + threads))) < threads]
    if not mask:
        ck.fail(MASK, f"dedicatedMask {text} selects no vCPU; name at least one vCPU in it")
    elif split:
        g = split[0]
        ck.fail(MASK, f"dedicatedMask {text} splits guest core {g // threads} (vCPUs "
                f"{g}-{g + threads - 1}, threads='{threads}'); take all of its vCPUs or none")
    elif realtime - mask:
        ck.fail(MASK, f"real-time {plural(len(realtime - mask), 'vCPU')} "
                f"{cpulist.format(realtime - mask)} {plural(len(realtime - mask), 'is', 'are')} "
                f"outside dedicatedMask {text}, and a floating vCPU cannot run SCHED_FIFO; "
                "add them to dedicatedMask or take them out of the realtime mask")
    elif mask != everyone:
        trouble = problem(inp, facts.name, f"dedicatedMask={text}")
        if trouble:
            ck.fail(CHECK, trouble)
        else:
            ck.ok(MASK, f"{plural(len(mask), 'vCPU')} {cpulist.format(mask)} dedicated, "
                  f"{plural(facts.vcpus - len(mask), 'vCPU')} "
                  f"{cpulist.format(everyone - mask)} on the shared "
                  f"{plural(len(inp.config.shared_cpus), 'CPU')} "
                  f"{cpulist.format(inp.config.shared_cpus)}")
    else:
        ck.ok(MASK, "every vCPU is dedicated")
    return mask or everyone


def kept(vcpupin: Mapping[int, frozenset[int]], dedicated: frozenset[int],
         vcpus: int) -> dict[int, frozenset[int]]:
    """The existing pinning of the dedicated vCPUs, numbered as the allocator counts them
    (0.. in vCPU order), so a still-valid one is kept as for any domain. All of it when
    every vCPU is dedicated or it pins a vCPU the domain lacks (the allocator refuses
    to keep that)."""
    if len(dedicated) == vcpus or any(v >= vcpus for v in vcpupin):
        return dict(vcpupin)
    return {i: vcpupin[v] for i, v in enumerate(sorted(dedicated)) if v in vcpupin}


def expand(alloc: Allocation, dedicated: frozenset[int], vcpus: int,
           shared: frozenset[int]) -> Allocation:
    """The allocation of the dedicated vCPUs, as one CPU per vCPU of the domain: a floating
    vCPU's entry is the lowest shared CPU (Plan.pin gives it the whole set)."""
    if len(dedicated) == vcpus:
        return alloc
    own = iter(alloc.vcpus)
    low = min(shared)
    return records.replace(alloc, vcpus=tuple(next(own) if v in dedicated else low
                                              for v in range(vcpus)))
