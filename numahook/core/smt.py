"""``threadPolicy``: Nova's hw:cpu_thread_policy, for SMT siblings next to dedicated vCPUs.

* ``prefer`` (the default, what numahook always did): whole free cores first and guest
  thread siblings on host thread siblings, but a vCPU may share a core with another.
* ``isolate``: each vCPU on a core of its own; the core's other threads are held for the
  domain and given to no one else (they stay idle), so no noisy sibling shares the
  core's caches and ports. The guest has no thread siblings then.
* ``require``: guest thread siblings only on host thread siblings, so the guest's view of
  its cores is true; refused on a host without SMT.

With ``isolate`` or ``require``, ``isolateEmulatorThread`` takes a whole core as well
(KubeVirt's EmulatorThreadCompleteToEvenParity adds one or two emulator CPUs so that
kubelet hands out whole cores, for the same reason). The
allocation itself is in :mod:`numahook.core.allocate`; this module checks the request.
"""

from __future__ import annotations

from numahook.core.topology import Topology

CHECK = "thread-policy"


def problem(policy: str, threads: int, topo: Topology) -> str | None:
    """Why ``policy`` cannot hold for a guest of ``threads`` threads per core here, or None."""
    host_threads = max((len(c.siblings) for c in topo.cpus.values()), default=1)
    if policy == "isolate" and threads > 1:
        return ("threadPolicy='isolate' gives each vCPU a core of its own, so the guest can "
                f"have no thread siblings, but <cpu><topology> has threads='{threads}'; set "
                "threads='1' or threadPolicy='require'")
    if policy == "require":
        if host_threads < 2:
            return ("threadPolicy='require' needs a host with SMT, but every core of this host "
                    "has one thread; turn SMT (Hyper-Threading) on in the firmware, or set "
                    "threadPolicy='isolate' or 'prefer'")
        if threads < 2:
            return ("threadPolicy='require' puts each guest core's threads on one host core's "
                    "siblings, but <cpu><topology> has threads='1'; set "
                    f"threads='{host_threads}' (this host's threads per core) or "
                    "threadPolicy='prefer'")
    return None


def summary(policy: str, threads: int, emulator: bool) -> str:
    """The passed check's reason."""
    emu = ", the isolated emulator thread on a whole core" if emulator else ""
    if policy == "isolate":
        return f"threadPolicy='isolate': each vCPU on a core of its own, its siblings held{emu}"
    if policy == "require":
        return f"threadPolicy='require': each guest core on {threads} host thread siblings{emu}"
    return "threadPolicy='prefer': guest thread siblings on host siblings where possible"
