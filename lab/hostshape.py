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
        return args


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
    )
}
