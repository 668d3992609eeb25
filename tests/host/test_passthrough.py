"""A real-time passthrough domain spanning both nodes of a real multi-node host (issue 13).

3 vCPUs on 2+2 CPUs, 2 MiB pages reserved by numahook at run time, cgroup v2, systemd.
One domain boots the guest probe under nested TCG: the host side is checked while the
guest boots (tens of seconds under TCG inside TCG), then the guest's own report, then that
everything was given back at its poweroff.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from lab import report
from tests.host.conftest import PREFIX, SERIAL_DIR, Host, domain_xml

NAME = PREFIX + "span"
VCPUS = 3
MEMORY_MIB = 96
#: nested TCG: the probe took about two minutes in this VM; the bound is generous
GUEST_BOOT_TIMEOUT = 900.0


def _cells(xml: str) -> list[dict[str, Any]]:
    root = ET.fromstring(xml)
    memnodes = {m.get("cellid"): m.get("nodeset") for m in root.findall("./numatune/memnode")}
    cells = []
    for c in root.findall("./cpu/numa/cell"):
        dist = {s.get("id"): int(s.get("value", "0")) for s in c.findall("./distances/sibling")}
        cells.append({"id": c.get("id"), "cpus": report.parse_cpulist(c.get("cpus", "")),
                      "kib": int(c.get("memory", "0")), "node": memnodes.get(c.get("id")),
                      "distances": dist})
    return cells


@pytest.fixture(scope="module")
def span(host: Host) -> Iterator[dict[str, Any]]:
    host.remove_domains()
    baseline = host.inside("hugepages")
    host.define(domain_xml(NAME, VCPUS, MEMORY_MIB, realtime=f"0-{VCPUS - 1}"))
    # numahookd renders the inactive definition (guest cells, pinning, numatune)
    host.wait(lambda: "<numa>" in host.sh(f"virsh dumpxml --inactive {NAME}").stdout,
              "numahookd to render the definition", 60)
    t0 = time.monotonic()
    host.sh(f"virsh -q start {NAME}")
    live = host.sh(f"virsh dumpxml {NAME}").stdout
    data = {"baseline": baseline, "xml": live, "cells": _cells(live), "t0": t0,
            "view": host.inside("domain", NAME)}
    yield data
    host.remove_domains()


def test_guest_cells_map_to_both_host_nodes_with_slit(span: dict[str, Any]) -> None:
    cells = span["cells"]
    assert sorted(c["node"] for c in cells) == ["0", "1"], cells
    assert sum(len(c["cpus"]) for c in cells) == VCPUS
    for c in cells:
        other = next(o for o in cells if o is not c)
        # passthrough copies the host's SLIT: 10 to itself, 21 to the other node
        assert c["distances"] == {c["id"]: 10, other["id"]: 21}, c
    assert sum(c["kib"] for c in cells) == MEMORY_MIB * 1024


def test_hugepages_reserved_per_node_in_the_exact_split(span: dict[str, Any]) -> None:
    for c in span["cells"]:
        want = c["kib"] // 2048
        nr0 = span["baseline"][c["node"]]["2048"][0]
        nr = span["view"]["hugepages"][c["node"]]["2048"][0]
        assert nr - nr0 == want, (c, span["baseline"], span["view"]["hugepages"])


def test_qemu_memory_sits_on_those_nodes(span: dict[str, Any]) -> None:
    got = span["view"]["numa_maps"]
    want = {c["node"]: c["kib"] // 2048 for c in span["cells"]}
    # QEMU preallocates hugepage-backed RAM (libvirt asks for it), node by node
    assert got == want, f"numa_maps of QEMU: {got}, cells want {want}"


def test_vcpu_pinning_holds_and_masked_vcpus_run_fifo_on_cgroup_v2(
        span: dict[str, Any]) -> None:
    root = ET.fromstring(span["xml"])
    pins = {p.get("vcpu"): report.parse_cpulist(p.get("cpuset", ""))
            for p in root.findall("./cputune/vcpupin")}
    assert span["view"]["cgroupfs"] == "cgroup2"
    for vcpu, t in span["view"]["vcpus"].items():
        assert set(t["affinity"]) == set(pins[vcpu]) and len(t["affinity"]) == 1, (vcpu, t)
        assert t["policy"] == "fifo" and t["priority"] > 0, (vcpu, t)
        assert t["cgroup"].startswith("0::/machine.slice/"), t["cgroup"]


def test_the_guest_sees_two_cells_with_the_right_cpus_memory_and_distances(
        host: Host, span: dict[str, Any]) -> None:
    serial = f"{SERIAL_DIR}/{NAME}.serial"
    took = host.wait(lambda: host.sh(f"virsh -q domstate {NAME}").stdout.strip() == "shut off",
                     "the probe guest to report and power off", GUEST_BOOT_TIMEOUT, every=5)
    seen = report.parse(host.sh(f"cat {serial}").stdout)
    print(f"nested TCG guest: booted, reported and powered off in "
          f"{time.monotonic() - span['t0']:.0f} s (waited {took:.0f} s)")
    cells = {int(c["id"]): c for c in span["cells"]}
    assert sorted(seen.nodes) == sorted(cells)
    for cid, node in seen.nodes.items():
        assert node.cpus == cells[cid]["cpus"]
        # the guest kernel keeps some of each cell's memory for itself
        assert 0 < node.memtotal_kib <= cells[cid]["kib"]
        assert node.distances == tuple(10 if o == cid else 21 for o in sorted(cells))


def test_hugepages_given_back_at_stop(host: Host, span: dict[str, Any]) -> None:
    host.sh(f"virsh -q destroy {NAME} >/dev/null 2>&1 || true")
    host.wait(lambda: host.inside("hugepages") == span["baseline"],
              "numahook to give the pages back", 30)
