"""The host's CPU and NUMA topology as plain data (no I/O; see :mod:`numahook.host.sysfs`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from numahook.records import field, record


@record(frozen=True)
class Cpu:
    id: int
    node: int
    package: int
    die: int
    core: int
    #: online thread siblings, this CPU included
    siblings: frozenset[int]


@record(frozen=True)
class HugepagePool:
    size_kib: int
    nr: int
    free: int
    surplus: int = 0


@record(frozen=True)
class Node:
    id: int
    cpus: frozenset[int]
    memory_kib: int
    hugepages: Mapping[int, HugepagePool] = field(default_factory=dict)
    #: SLIT distance to every online node, by node id
    distances: Mapping[int, int] = field(default_factory=dict)


@record(frozen=True)
class Topology:
    """Online CPUs and online NUMA nodes. CPU-less and memory-less nodes are kept."""

    cpus: Mapping[int, Cpu]
    nodes: Mapping[int, Node]
    #: page sizes the kernel supports (``/sys/kernel/mm/hugepages``), KiB
    page_sizes: frozenset[int] = frozenset()
    default_page_kib: int = 2048

    def node_of(self, cpu: int) -> int:
        return self.cpus[cpu].node

    def nodes_of(self, cpus: Iterable[int]) -> list[int]:
        """Host nodes holding ``cpus``, in host order."""
        return sorted({self.cpus[c].node for c in cpus})

    def distance(self, a: int, b: int) -> int:
        return self.nodes[a].distances.get(b, 10 if a == b else 20)

    def core_key(self, cpu: int) -> tuple[int, int, int]:
        c = self.cpus[cpu]
        return (c.package, c.die, c.core)

    def fingerprint(self) -> str:
        """A digest of what rendering depends on (CPU placement and distances, not free pages)."""
        import json

        doc = {
            "cpus": [[c.id, c.node, c.package, c.die, c.core] for c in self.cpus.values()],
            "dist": {n.id: sorted(n.distances.items()) for n in self.nodes.values()},
        }
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return sha256_hex(raw)[:16]


def sha256_hex(raw: bytes) -> str:
    """The hex digest behind topology and plan digests (core/plan.py), hashlib imported late."""
    import hashlib  # OpenSSL's init is not free; only digests pay for it

    return hashlib.sha256(raw).hexdigest()
