"""Hostile input costs memory in proportion to its size, never more (issue 8, part 1).

A parser that expands a short text into a large structure lets a few bytes of XML or of
the kernel command line take the hook's or the daemon's memory; these tests measure the
peak of Python's allocations (tracemalloc) for growing inputs, or count what is expanded.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from numahook import NAMESPACE, config
from numahook.core import cpulist, render
from numahook.errors import NumahookError
from numahook.host import libvirtstatus
from numahook.node import cmdline

from .conftest import FIGURES


def _peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(NumahookError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name, make", [
    ("cpulist", lambda n: (lambda: cpulist.parse("0-8191," * n + "0"))),
    ("realtime-mask", lambda n: (lambda: cpulist.parse_mask("^0-8191," * n + "0", 8192))),
    ("config", lambda n: (lambda: config.parse("[features]\nnuma = " + "x" * (n * 100)))),
    ("status-xml", lambda n: (lambda: libvirtstatus.parse_status(
        "<domstatus><vcpus>" + "<vcpu id='1' pid='2'/>" * n + "</vcpus><domain><name>a</name>"
        "<uuid>u</uuid><cputune>" + "<vcpupin vcpu='0' cpuset='0-8191'/>" * n
        + "</cputune></domain></domstatus>"))),
    ("kernel-cmdline", lambda n: (lambda: cmdline.parse_cmdline(
        "isolcpus=" + ",".join(str(i) for i in range(n)), frozenset(range(8))))),
    ("domain-xml-nesting", lambda n: (lambda: render.parse(
        "<domain>" + "<a>" * (n * 10) + "</a>" * (n * 10) + "</domain>"))),
    ("metadata-attribute", lambda n: (lambda: render.parse(
        f"<domain><name>x</name><metadata><numahook:domain xmlns:numahook='{NAMESPACE}'>"
        f"<numahook:cpu dedicatedCpuPlacement='{'t' * (n * 100)}'/></numahook:domain>"
        "</metadata><memory>1</memory></domain>"))),
])
def test_cost_grows_with_the_input_not_faster(name: str, make: Callable[[int], Any]) -> None:
    """Memory (Python's allocations) for an 8x larger hostile input stays within ~8x."""
    FIGURES.add("fuzz", f"cost-{name}", 2)
    small, large = _peak(make(100)), _peak(make(800))
    assert large <= 8 * small + (1 << 20), (name, small, large)


@pytest.mark.xfail(strict=True, reason=(
    "BUG: domainxml.read expands every cpuset attribute into a frozenset of up to 8192 ints "
    "and keeps one per element (<cell cpus>, <vcpupin>, <iothreadpin>, <vcpusched>, "
    "<memnode>, <page nodeset>), so 30 bytes of XML hold a set of 8192 ints. "
    "domainxml.MAX_EXPANDED (2^20 CPUs per document) bounds the total, but far above the "
    "2000 bytes per byte of XML this test allows (docs/reliability.md has the figures)"))
def test_cost_of_cpuset_attributes_is_proportional() -> None:
    FIGURES.add("fuzz", "cost-domain-cpusets", 1)
    cells = "<cell cpus='0-8191' memory='1'/>" * 100
    xml = (f"<domain><name>x</name><memory>1</memory><vcpu>2</vcpu><cpu><numa>{cells}</numa>"
           "</cpu></domain>")
    peak = _peak(lambda: render.parse(xml))
    assert peak <= 2000 * len(xml), f"{peak >> 20} MiB for a {len(xml)} byte document"


def test_kernel_cmdline_cost_is_proportional(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts the CPUs the parser materialises (no timing): at most one expansion.

    Each '0-8191' item used to expand to 8192 CPUs again (9000 such items took 8 s); the
    items' spans now go through cpulist.merge once.
    """
    FIGURES.add("fuzz", "cost-kernel-cmdline", 1)
    produced = []
    real = cpulist.merge

    def counting(parts: Any) -> frozenset[int]:
        out = real(parts)
        produced.append(len(out))
        return out

    monkeypatch.setattr(cmdline.cpulist, "merge", counting)
    cmdline.parse_cmdline("isolcpus=" + ",".join(["0-8191"] * 200), frozenset(range(8)))
    assert produced, "the kernel command line is expanded through cpulist.merge"
    assert sum(produced) <= 2 * 8192
