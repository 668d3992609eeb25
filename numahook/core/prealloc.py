"""Where the emulator may run while QEMU preallocates guest memory, before ``started``.

libvirt 8.10 and later, with QEMU 7.2 and later, give every preallocated memory backend
bound to host nodes (hugepages are always preallocated) a ``thread-context`` object whose
``node-affinity`` is the backend's nodes. QEMU creates that thread inside the emulator's
cpuset, which libvirt has already set to ``<emulatorpin>``, and moves it onto the CPUs of
those nodes. When the emulator has no CPU on a cell's node the move fails and the start
with it (``Setting CPU affinity failed: Invalid argument``). libvirt 9.3 prunes the
affinity to the emulator's nodes instead (EL 9.2 backported that to its 9.0); Debian 12's
9.0 does not.

So the rendered ``<emulatorpin>`` is the start set: the emulator's own CPUs plus, for each
memory node it lacks, one CPU the domain already holds there. Nothing it does not hold is
lent, so no other domain is touched. The ``started`` hook and numahookd's backstop then
narrow the emulator to its own CPUs (tunables/emulator.py), and ``<numahook:rendered
emulator>`` records that set. The same start set works on every libvirt version: where
libvirt prunes, it lets each node's memory be preallocated from that node.
"""

from __future__ import annotations

from collections.abc import Iterable

from numahook.core.topology import Topology


def start_set(topo: Topology, emulator: tuple[int, ...], vcpu_pins: tuple[int, ...],
              realtime: Iterable[int], held: Iterable[int],
              memory_nodes: Iterable[int], floating: Iterable[int] = ()) -> tuple[int, ...]:
    """The emulator's CPUs while QEMU starts; ``()`` when its own ones already reach every
    memory node. Per missing node it borrows, in this order, an idle held sibling, a
    non-real-time vCPU's CPU, then a real-time vCPU's CPU (lowest CPU first in each), so a
    FIFO vCPU's CPU is lent only when the domain has nothing else there. ``floating``
    vCPUs (dedicatedMask) hold no CPU of their own and lend none."""
    have = {topo.node_of(c) for c in emulator}
    rt = set(realtime)
    own = [(v, c) for v, c in enumerate(vcpu_pins) if v not in set(floating)]
    held = tuple(held)
    borrowed: list[int] = []
    for node in sorted(set(memory_nodes) - have):
        tiers = (
            [c for c in held if topo.node_of(c) == node],
            [c for v, c in own if v not in rt and topo.node_of(c) == node],
            [c for _, c in own if topo.node_of(c) == node],
        )
        pick = next((min(t) for t in tiers if t), None)
        if pick is not None:
            borrowed.append(pick)
    if not borrowed:
        return ()
    return tuple(sorted(set(emulator) | set(borrowed)))
