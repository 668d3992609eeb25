"""Shapes of the host VM lab: NUMA nodes, CPUs, SMT and SLIT distances, as QEMU arguments.

Pure: a shape only becomes a command line here, so tests can compare what QEMU was told
with what numahook probes inside the VM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    """One guest NUMA node of the VM: how many cores (0: a CPU-less memory node), MiB."""

    cores: int
    mib: int


@dataclass(frozen=True)
class Shape:
    """A host topology: nodes, threads per core, and the SLIT matrix (row = source)."""

    name: str
    nodes: tuple[Node, ...]
    threads: int
    distances: tuple[tuple[int, ...], ...]
    summary: str
    #: QEMU arguments ahead of the lab's own devices (a vIOMMU must precede every PCI
    #: device) and after them (buses: QEMU puts a device without ``bus=`` on the last PCI
    #: bus it made, and a pxb-pcie takes only bridges), and guest kernel arguments
    devices: tuple[str, ...] = ()
    late_devices: tuple[str, ...] = ()
    cmdline: str = ""

    @property
    def cpus(self) -> int:
        return sum(n.cores for n in self.nodes) * self.threads

    @property
    def mib(self) -> int:
        return sum(n.mib for n in self.nodes)

    def node_cpus(self) -> list[list[int]]:
        """CPU ids per node, in the order QEMU numbers them (core by core, thread by thread)."""
        out, cpu = [], 0
        for node in self.nodes:
            out.append(list(range(cpu, cpu + node.cores * self.threads)))
            cpu += node.cores * self.threads
        return out

    def qemu_args(self) -> list[str]:
        """``-smp``, ``-object``/``-numa`` lines: one socket per node that has CPUs."""
        sockets = sum(1 for n in self.nodes if n.cores)
        cores = max(n.cores for n in self.nodes)
        if any(n.cores not in (0, cores) for n in self.nodes):
            # QEMU's -smp is uniform: unequal nodes get a socket of one core per CPU
            # group, and the nodes take CPU ranges
            sockets, cores = sum(n.cores for n in self.nodes), 1
        args = ["-smp", f"{self.cpus},sockets={sockets},cores={cores},threads={self.threads}"]
        for i, (node, cpus) in enumerate(zip(self.nodes, self.node_cpus())):
            args += ["-object", f"memory-backend-ram,id=m{i},size={node.mib}M"]
            numa = f"node,nodeid={i},memdev=m{i}"
            if cpus:
                numa += f",cpus={cpus[0]}-{cpus[-1]}"
            args += ["-numa", numa]
        for src, row in enumerate(self.distances):
            for dst, val in enumerate(row):
                if src != dst:
                    args += ["-numa", f"dist,src={src},dst={dst},val={val}"]
        return args + list(self.devices)


#: caching-mode makes QEMU's VT-d report each mapping change, which VFIO needs to shadow
#: the mappings of an assigned device; intremap gives the interrupt remapping that
#: vfio_iommu_type1 wants by default.
IOMMU = ("-device", "intel-iommu,intremap=on,caching-mode=on")
#: An e1000e behind its own root port on a pxb-pcie whose _PXM is node 1.
NODE1_NIC = (
    "-device", "pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0",
    "-device", "pcie-root-port,id=rp1,bus=pxb1,chassis=1,slot=1",
    "-device", "e1000e,id=nic1,bus=rp1,mac=52:54:00:12:34:99",
)


def _sym(rows: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(r) for r in rows)


SHAPES = {
    s.name: s
    for s in (
        Shape("default", (Node(2, 1536), Node(2, 1536)), 1, _sym([[10, 21], [21, 10]]),
              "2 nodes of 2 CPUs, SLIT 10/21, 1.5 GiB each"),
        Shape("smt", (Node(1, 2560), Node(1, 2560)), 2, _sym([[10, 21], [21, 10]]),
              "2 nodes of 1 core with 2 threads (SMT siblings), SLIT 10/21, 2.5 GiB each "
              "(room for 1 GiB pages)"),
        Shape("numa4", (Node(2, 1024), Node(1, 768), Node(1, 768), Node(0, 512)), 1,
              _sym([[10, 16, 22, 28], [16, 10, 28, 22], [22, 28, 10, 16], [28, 22, 16, 10]]),
              "4 nodes, asymmetric: 2+1+1 CPUs and a CPU-less memory node, SLIT 10..28"),
        Shape("gib", (Node(2, 2560), Node(2, 2560)), 1, _sym([[10, 21], [21, 10]]),
              "2 nodes of 2 CPUs with 2.5 GiB each, room for 1 GiB pages (-cpu max: pdpe1gb)"),
        Shape("iommu", (Node(2, 1536), Node(2, 1536)), 1, _sym([[10, 21], [21, 10]]),
              "2 nodes of 2 CPUs, an emulated VT-d and an e1000e NIC behind a pxb-pcie on "
              "node 1 (VFIO assignment to an inner guest)",
              devices=IOMMU, late_devices=NODE1_NIC, cmdline="intel_iommu=on iommu=pt"),
    )
}
