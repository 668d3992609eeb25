"""Device locality for the CPUs: ``pciNumaAffinity``, after Nova's hw:pci_numa_affinity_policy.

A vCPU on node 0 that drives a NIC on node 1 pays a cross-socket hop on every packet, so
the passthrough devices' host nodes steer the allocation:

* ``required``: every dedicated vCPU sits on the devices' nodes, or the start is refused
  naming the device, its node and the fix. Stricter than Nova's ``required`` (one guest
  node on the devices' nodes is enough there), because numahook's guests mirror the host
  nodes of their CPUs and a vCPU off the device's node is the hop this avoids. Like
  Nova's, it refuses a device that reports no node (``numa_node`` -1).
* ``preferred`` (the default): the devices' nodes first; when the vCPUs do not fit there,
  they go wherever they fit and ``numahook check`` says so in an advisory.
* ``none``: the devices play no part (nor in the guest's PCI topology).

On a host with one node every CPU is local to every device, so there is nothing to do.
Pure: the devices' nodes come in :class:`~numahook.core.plan.Inputs`.
"""

from __future__ import annotations

from numahook.core import cpulist
from numahook.core.pci import HostPci
from numahook.core.units import plural
from numahook.records import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from numahook.core.domainxml import DomainFacts
    from numahook.core.plan import Inputs
    from numahook.core.request import Request

CHECK = "pci-numa-affinity"


@record(frozen=True)
class Locality:
    #: required, preferred or none
    policy: str
    #: what the host says of each passthrough device, in domain order (empty under none)
    devices: tuple[HostPci, ...] = ()
    #: the host has more than one node with CPUs, so locality can matter at all
    multi_node: bool = False

    @property
    def nodes(self) -> frozenset[int]:
        """Host nodes of the devices that report one."""
        return frozenset(d.node for d in self.devices if d.node is not None)

    @property
    def steers(self) -> bool:
        """Whether the devices limit (or order) where the vCPUs go."""
        return self.policy != "none" and self.multi_node and bool(self.nodes)


def assess(facts: DomainFacts, req: Request, inp: Inputs) -> Locality:
    if req.pci_affinity == "none" or not facts.passthrough:
        return Locality(req.pci_affinity)
    seen: dict[str, HostPci] = {}
    for dev in facts.passthrough:
        seen.setdefault(dev.bdf, inp.devices.get(dev.bdf) or HostPci(dev.bdf, present=False))
    multi = sum(1 for n in inp.topology.nodes.values() if n.cpus) > 1
    return Locality(req.pci_affinity, tuple(seen.values()), multi)


def refusal(loc: Locality) -> str | None:
    """Why ``required`` cannot be met whatever the CPUs (a device without a node), or None."""
    if loc.policy != "required" or not loc.multi_node:
        return None
    for dev in loc.devices:
        if not dev.present:
            return (f"pciNumaAffinity='required' needs the NUMA node of every passthrough "
                    f"device, but {dev.bdf} is not on this host (there is no "
                    f"/sys/bus/pci/devices/{dev.bdf}); fix its <source><address> or set "
                    "pciNumaAffinity='preferred'")
        if dev.node is None:
            return (f"pciNumaAffinity='required' needs the NUMA node of every passthrough "
                    f"device, but {dev.bdf} reports none (its numa_node is -1: the firmware "
                    "gives it no affinity); set pciNumaAffinity='preferred' to start it anyway")
    return None


def _list(devs: list[HostPci]) -> str:
    return " and ".join(d.describe() for d in devs)


def _devices(devs: list[HostPci]) -> str:
    """The devices as the subject of a sentence, verb included."""
    return _list(devs) + " " + plural(len(devs), "is", "are")


def where(loc: Locality) -> str:
    """The restriction, for the allocator's message: ``on node 1 (its devices' node)``."""
    node = plural(len(loc.nodes), "node")
    return f"on {node} {cpulist.format(loc.nodes)} (its devices' {node})"


def required_failure(loc: Locality, reason: str) -> str:
    """``required`` and the vCPUs do not fit on the devices' nodes: the one sentence."""
    local = [d for d in loc.devices if d.node is not None]
    return (f"pciNumaAffinity='required' puts every dedicated CPU on the node of its devices, "
            f"and {_devices(local)} there, but {_lower(reason)}, or set "
            "pciNumaAffinity='preferred' to let the vCPUs run elsewhere")


def _lower(reason: str) -> str:
    return reason[:1].lower() + reason[1:]


def summary(loc: Locality, vcpu_nodes: list[int], fell_back: bool) -> str:
    """The passed check's reason."""
    if not loc.multi_node:
        return "this host has one NUMA node, so every CPU is local to every device"
    local = [d for d in loc.devices if d.node in vcpu_nodes]
    nodes = f"{plural(len(vcpu_nodes), 'node')} {cpulist.format(vcpu_nodes)}"
    if fell_back:
        return (f"{loc.policy}: the vCPUs did not fit on the devices' nodes and run on "
                f"{nodes} (see the advisory)")
    if not local:
        return f"{loc.policy}: no device reports a node, so the vCPUs run on {nodes}"
    return f"{loc.policy}: the vCPUs run on {nodes}, with {_list(local)}"


def advice(loc: Locality, vcpu_nodes: list[int], fallback: str | None) -> list[str]:
    """What ``check`` warns of: devices the vCPUs are not local to, and why."""
    if not loc.multi_node or loc.policy == "none":
        return []
    out = []
    nodes = f"{plural(len(vcpu_nodes), 'node')} {cpulist.format(vcpu_nodes)}"
    if fallback is not None:
        far = [d for d in loc.devices if d.node is not None and d.node not in vcpu_nodes]
        if far:
            out.append(f"{_devices(far)} not local to every vCPU: the vCPUs do not fit on "
                       f"{plural(len(loc.nodes), 'node')} {cpulist.format(loc.nodes)} "
                       f"({_lower(fallback)}), so they run on {nodes}; free CPUs there, or set "
                       "pciNumaAffinity='required' to refuse such a start")
    else:
        for dev in loc.devices:
            if dev.node is not None and dev.node not in vcpu_nodes:
                out.append(f"{_devices([dev])} on a node without any of the domain's vCPUs "
                           f"(they run on {nodes}), so every access to it crosses nodes; "
                           "pass through a device on that node instead")
    for dev in loc.devices:
        if not dev.present:
            out.append(f"{dev.bdf} is not on this host (there is no /sys/bus/pci/devices/"
                       f"{dev.bdf}), so libvirt will not start the domain; fix its "
                       "<source><address>")
        elif dev.node is None:
            out.append(f"{dev.bdf} reports no NUMA node (numa_node is -1), so numahook cannot "
                       "place the vCPUs near it; check the firmware's ACPI _PXM for it")
    return out
