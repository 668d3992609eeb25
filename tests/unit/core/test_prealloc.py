"""The emulator's CPUs while QEMU starts (numahook/core/prealloc.py).

A 2-node host of 4 CPUs each, SMT pairs (0,1) (2,3) on node 0 and (4,5) (6,7) on node 1.
"""

from __future__ import annotations

import pytest

from numahook.core.prealloc import start_set
from numahook.core.topology import Cpu, Node, Topology


@pytest.fixture
def topo() -> Topology:
    cpus = {c: Cpu(c, c // 4, c // 4, 0, c // 2, frozenset({c - c % 2, c - c % 2 + 1}))
            for c in range(8)}
    nodes = {n: Node(n, frozenset(range(4 * n, 4 * n + 4)), 1 << 20) for n in (0, 1)}
    return Topology(cpus, nodes)


def test_an_emulator_on_every_memory_node_needs_nothing_more(topo: Topology) -> None:
    assert start_set(topo, (3, 7), (0, 4), (), (), (0, 1)) == ()
    assert start_set(topo, (3,), (0, 1), (0, 1), (), (0,)) == ()


def test_the_missing_node_lends_a_non_real_time_vcpu_before_a_real_time_one(
        topo: Topology) -> None:
    # emulator on node 1; vCPUs 0 (FIFO, CPU 0) and 1 (not, CPU 2) on node 0
    assert start_set(topo, (6,), (0, 2, 4), (0, 2), (), (0, 1)) == (2, 6)
    # every vCPU on node 0 is FIFO: the lowest of their CPUs
    assert start_set(topo, (6,), (2, 0, 4), (0, 1, 2), (), (0, 1)) == (0, 6)


def test_an_idle_held_sibling_is_lent_first(topo: Topology) -> None:
    """threadPolicy isolate holds the vCPU cores' other threads idle: the best to lend."""
    assert start_set(topo, (6,), (0, 2), (1,), (1, 3), (0,)) == (1, 6)


def test_nothing_outside_the_domain_is_lent(topo: Topology) -> None:
    """A memory node where the domain holds no CPU (impossible for a rendered cell, which
    has vCPUs there) is left out rather than taking another domain's CPU."""
    assert start_set(topo, (6,), (4, 5), (), (), (0, 1)) == ()
