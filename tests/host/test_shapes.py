"""Other host shapes: SMT with 1 GiB pages, four asymmetric nodes with a CPU-less one.

Each shape boots its own VM (``scripts/lab host up --shape``), so this module runs after
every test of the default VM (conftest orders it last) and takes that VM down first. For
each: the kernel shows what QEMU was told (lab/hostshape.py), numahook's probe shows what
the kernel shows, and a passthrough rendering over every CPU carries the kernel's SLIT
(issue 13). CI boots ``numa4`` only (each boot costs minutes under TCG);
``NUMAHOOK_HOST_SHAPES=numa4,smt`` adds SMT with 1 GiB pages reserved at run time.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from lab import report
from lab.hostshape import SHAPES
from tests.host.conftest import (
    LAB,
    Host,
    _skip_reason,
    domain_xml,
    start_and_check_emulator,
    with_cpu_attrs,
)

NAME = "nhhost-shape"


@pytest.fixture(scope="module", params=os.environ.get("NUMAHOOK_HOST_SHAPES", "numa4").split(","))
def shaped(request: pytest.FixtureRequest) -> Iterator[tuple[str, Host]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    subprocess.run([*LAB, "host", "down"], check=True, timeout=120)
    subprocess.run([*LAB, "host", "up", "--shape", request.param], check=True, timeout=1800)
    h = Host()
    h.sh("install -d -m 755 /var/log/numahook-lab")
    h.sh("systemctl enable --now numahookd")  # what an operator does after the install
    yield request.param, h
    subprocess.run([*LAB, "host", "down"], check=True, timeout=120)


def test_kernel_probe_and_rendering_follow_the_shape(shaped: tuple[str, Host]) -> None:
    name, host = shaped
    shape = SHAPES[name]
    kernel = host.inside("node")
    want = {str(i): cpus for i, cpus in enumerate(shape.node_cpus())}
    assert {n: v["cpus"] for n, v in kernel["nodes"].items()} == want
    assert [kernel["nodes"][str(i)]["distance"] for i in range(len(shape.nodes))] == \
        [list(r) for r in shape.distances]
    probed = host.json("numahook node --json")["numa_nodes"]
    assert {str(n["id"]): sorted(report.parse_cpulist(n["cpus"])) for n in probed} == want
    if shape.threads == 2:
        siblings = host.sh("cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
        assert siblings.stdout.strip() == "0-1"
    xml = domain_xml(NAME, shape.cpus, 64 * shape.cpus, realtime=None)
    rendered = ET.fromstring(host.sh("numahook render -", input=xml).stdout)
    memnodes = {m.get("cellid"): int(m.get("nodeset", "-1"))
                for m in rendered.findall("./numatune/memnode")}
    cells = rendered.findall("./cpu/numa/cell")
    # one guest cell per host node with CPUs; the CPU-less node gets none
    assert sorted(memnodes.values()) == [i for i, n in enumerate(shape.nodes) if n.cores]
    for cell in cells:
        src = memnodes[cell.get("id")]
        for sib in cell.findall("./distances/sibling"):
            dst = memnodes[sib.get("id")]
            assert int(sib.get("value", "0")) == shape.distances[src][dst], (src, dst)


def test_one_gib_pages_reserved_per_node_at_run_time(shaped: tuple[str, Host]) -> None:
    name, host = shaped
    if SHAPES[name].nodes[0].mib < 2048:
        pytest.skip(f"the {name} shape has no room for 1 GiB pages (smt and gib have)")
    before = host.inside("hugepages")
    assert all(v["1048576"][0] == 0 for v in before.values()), "nothing reserved at boot"
    host.define(domain_xml(NAME, 4, 2048, realtime=None, page_kib=1048576))
    try:
        host.wait(lambda: "<numa>" in host.sh(f"virsh dumpxml --inactive {NAME}").stdout,
                  "numahookd to render the definition", 60)
        host.sh(f"virsh -q start {NAME}")
        during = host.inside("hugepages")
        assert {n: v["1048576"][0] for n, v in during.items()} == {"0": 1, "1": 1}
        host.sh(f"virsh -q destroy {NAME}")
        host.wait(lambda: host.inside("hugepages") == before, "the 1 GiB pages back", 60)
    finally:
        host.remove_domains()


def test_an_isolated_emulator_away_from_the_cells_starts(shaped: tuple[str, Host]) -> None:
    """Issue 25, item 1, on an asymmetric host: numa4 puts 3 real-time vCPUs on nodes 0
    and 1 and the isolated emulator on node 2, so neither cell's node has an emulator CPU;
    the start set borrows one of the domain's CPUs on each (core/prealloc.py)."""
    name, host = shaped
    if SHAPES[name].cpus < 4:
        pytest.skip(f"the {name} shape has fewer than 4 CPUs")
    xml = with_cpu_attrs(domain_xml(NAME, 3, 128, realtime="0-2"), isolateEmulatorThread="true")
    try:
        check = start_and_check_emulator(host, NAME, xml)
        own = check["pinning"]["emulator"]
        assert set(check["pinning"]["emulator_start"]) > set(own)
        if name == "numa4":
            assert [c["host_node"] for c in check["cells"]] == [0, 1]
            assert own == [3]  # node 2's only CPU
    finally:
        host.remove_domains()
