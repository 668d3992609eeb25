"""The guest's memory: the hugepage preconditions, and its split into NUMA cells.

Split from :mod:`numahook.core.hardware` (the fitting), which calls both with its list of
checks: what memory a domain may have, and how it is laid over the host nodes of its
vCPUs, are questions of their own.
"""

from __future__ import annotations

from numahook.core.domainxml import DomainFacts
from numahook.core.plan import Cell, Inputs
from numahook.core.topology import Topology
from numahook.core.units import counted, human_kib, plural

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Protocol

    class Checks(Protocol):
        """hardware's list of checks, as these functions add to it."""

        def ok(self, name: str, reason: str) -> None: ...

        def fail(self, name: str, reason: str) -> None: ...


def check_hugepages(ck: Checks, facts: DomainFacts, inp: Inputs,
                     passthrough: bool) -> int | None:
    if not facts.hugepages:
        ck.fail("hugepages", "guestMappingPassthrough needs hugepages; add <memoryBacking>"
                "<hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>")
        return None
    if len(set(facts.page_sizes)) > 1:
        who = ("guestMappingPassthrough needs" if passthrough else
               "numahook reserves a hugepage domain's pages on one node and needs")
        ck.fail("hugepages", f"{who} one hugepage size, but <hugepages> "
                f"lists {len(set(facts.page_sizes))}; keep a single <page>")
        return None
    page = facts.page_sizes[0] if facts.page_sizes else (
        inp.default_page_kib or inp.topology.default_page_kib)
    ck.ok("hugepages", f"memory is backed by {human_kib(page)} hugepages")
    sizes = inp.topology.page_sizes
    if sizes and page not in sizes:
        ck.fail("page-size", f"this host has no {human_kib(page)} hugepages (it supports "
                f"{', '.join(human_kib(s) for s in sorted(sizes))}); change <page size>")
        return None
    ck.ok("page-size", f"the host supports {human_kib(page)} pages")
    if facts.memory_kib % page:
        ck.fail("memory-whole-pages", f"memory {human_kib(facts.memory_kib)} is not a whole "
                f"number of {human_kib(page)} pages; round <memory> to a multiple of "
                f"{human_kib(page)}")
        return None
    ck.ok("memory-whole-pages", f"{facts.memory_kib // page} pages of {human_kib(page)}")
    return page


def cells(ck: Checks, facts: DomainFacts, topo: Topology, pins: tuple[int, ...],
          page_kib: int, floating: tuple[int, ...] = (),
          shared: frozenset[int] = frozenset()) -> tuple[Cell, ...]:
    """One cell per host node of the dedicated vCPUs, in host order. A floating vCPU
    (dedicatedMask) joins the lowest cell whose host node holds one of the shared CPUs
    it floats on, or the first cell when none does: its memory is then local where it
    can be, and the rule never adds a cell."""
    nodes = topo.nodes_of([c for v, c in enumerate(pins) if v not in floating])
    home = next((i for i, n in enumerate(nodes) if shared & topo.nodes[n].cpus), 0)
    pages = facts.memory_kib // page_kib
    k = len(nodes)
    if pages < k:
        ck.fail("memory-page-per-cell", f"{human_kib(facts.memory_kib)} is {pages} pages of "
                f"{human_kib(page_kib)}, fewer than the {k} guest cells its CPUs span; raise "
                f"<memory> to at least {human_kib(k * page_kib)}")
        return ()
    base, rem = divmod(pages, k)
    cells = []
    for i, node in enumerate(nodes):
        n_pages = base + (1 if i < rem else 0)
        vcpus = tuple(v for v, c in enumerate(pins)
                      if (i == home if v in floating else topo.node_of(c) == node))
        cells.append(Cell(i, node, vcpus, n_pages * page_kib, n_pages))
    ck.ok("memory-page-per-cell", f"{counted(k, 'guest cell')}, {base}{'+1' if rem else ''} "
          f"{plural(base + bool(rem), 'page')}{' each' if k > 1 else ''}")
    return tuple(cells)
