"""The lab itself: the probe reads real guest state, its report parser is strict, and the
examples are valid libvirt XML."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import apt, report
from lab.demo import size_to_host

from .conftest import REPO, Domains

EXAMPLES = sorted((REPO / "examples").glob("*.xml"))
MIB = 1024

SAMPLE = """\
\x1bc\x1b[?7l\x1b[2JNUMAHOOK-PROBE-START\r
NUMAHOOK-REPORT-BEGIN\r
version=1\r
kernel=6.1.0-56-cloud-amd64\r
node0.cpulist=0\r
node0.memtotal_kib=62032\r
node0.memfree_kib=49300\r
node0.distance=10 20\r
node1.cpulist=1\r
node1.memtotal_kib=32540\r
node1.memfree_kib=13004\r
node1.distance=20 10\r
node0.present_kib=65144\r
node1.present_kib=65408\r
nodes=0,1\r
nodes.online=0-1\r
cpus.online=0-1\r
cpus.present=0-1\r
memtotal_kib=94572\r
NUMAHOOK-REPORT-END count=17\r
NUMAHOOK-PROBE-DONE\r
[    4.879468] reboot: Power down\r
"""

TWO_CELLS = """<domain type='qemu'><name>x</name><vcpu>2</vcpu>
  <cpu><numa>
    <cell id='0' cpus='0' memory='64' unit='MiB'/>
    <cell id='1' cpus='1' memory='65536' unit='KiB'/>
  </numa></cpu>
  <numatune><memnode cellid='0' mode='strict' nodeset='0'/>
    <memnode cellid='1' mode='strict' nodeset='0'/></numatune>
</domain>"""


# --- no root needed ------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_is_valid_libvirt_xml(example: Path) -> None:
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        if os.geteuid() != 0:
            pytest.skip("virt-xml-validate needs libvirt-clients and libxml2-utils installed")
        apt.install(["libvirt-clients", "libxml2-utils"])
    proc = subprocess.run(
        ["virt-xml-validate", str(example), "domain"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_examples_are_the_reference_ones() -> None:
    names = {e.name for e in EXAMPLES}
    assert {"numavm.xml", "fedora-realtime.xml"} <= names


def test_parser_reads_a_complete_report() -> None:
    r = report.parse(SAMPLE)
    assert sorted(r.nodes) == [0, 1]
    assert r.nodes[0].cpus == {0} and r.nodes[1].cpus == {1}
    assert r.nodes[1].memtotal_kib == 32540 and r.nodes[1].present_kib == 65408
    assert r.nodes[0].distances == (10, 20)
    assert r.cpus_online == {0, 1}
    assert r.latency is None
    assert report.compare(r, report.rendered_cells(TWO_CELLS), 2) == []


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda t: t.split("NUMAHOOK-REPORT-END")[0], id="no-end-marker"),
        pytest.param(lambda t: t.replace("node1.memfree_kib=13004\r\n", ""), id="lost-line"),
        pytest.param(lambda t: t.split("node1.cpulist")[0], id="cut-mid-block"),
        pytest.param(lambda t: t.split("NUMAHOOK-REPORT-BEGIN")[0], id="no-report"),
        pytest.param(
            lambda t: t.replace("node1.cpulist=1\r\n", "").replace("count=17", "count=16"),
            id="node-listed-without-cpus",
        ),
    ],
)
def test_parser_rejects_a_truncated_report(cut: Callable[[str], str]) -> None:
    with pytest.raises(report.ReportError):
        report.parse(cut(SAMPLE))


#: the PCI lines a q35 guest with a virtio-rng behind a pcie-expander-bus (busNr 254) and
#: one on pcie.0 printed in the lab (two of them)
PCI_LINES = [
    "pci0.bdf=0000:02:00.0", "pci0.id=0x1af4:0x1044", "pci0.class=0x00ff00",
    "pci0.numa_node=-1", "pci0.root=pci0000:00",
    "pci1.bdf=0000:ff:00.0", "pci1.id=0x1af4:0x1044", "pci1.class=0x00ff00",
    "pci1.numa_node=0", "pci1.root=pci0000:fe", "pci.count=2",
]


def with_pci(lines: list[str]) -> str:
    body = "".join(f"{line}\r\n" for line in lines)
    return SAMPLE.replace("memtotal_kib=94572\r\n", f"memtotal_kib=94572\r\n{body}").replace(
        "count=17", f"count={17 + len(lines)}")


def test_parser_reads_the_pci_functions() -> None:
    r = report.parse(with_pci(PCI_LINES))
    assert r.pci["0000:ff:00.0"] == report.GuestPci("0000:ff:00.0", "0x1af4:0x1044", "0x00ff00",
                                                     0, "pci0000:fe")
    assert r.pci["0000:02:00.0"].numa_node == -1
    assert report.parse(SAMPLE).pci == {}  # a probe from before the PCI lines


def test_parser_rejects_a_pci_function_cut_short() -> None:
    with pytest.raises(report.ReportError, match=r"has no pci1\.root"):
        report.parse(with_pci(PCI_LINES[:9] + PCI_LINES[10:]))


def test_compare_finds_a_guest_that_differs() -> None:
    r = report.parse(SAMPLE.replace("node1.cpulist=1", "node1.cpulist=0-1"))
    problems = report.compare(r, report.rendered_cells(TWO_CELLS), 2)
    assert any("guest node 1 has CPUs 0-1" in p for p in problems)
    bigger = TWO_CELLS.replace("memory='64' unit='MiB'", "memory='128' unit='MiB'")
    problems = report.compare(report.parse(SAMPLE), report.rendered_cells(bigger), 2)
    assert any("guest node 0 has 65144 KiB present" in p for p in problems)


def test_demo_sizes_numavm_to_the_host_and_says_so() -> None:
    path = REPO / "examples" / "numavm.xml"
    before = path.read_text()
    sized, sizing = size_to_host(before, 2)
    assert path.read_text() == before
    assert "<vcpu placement=\"static\">2</vcpu>" in sized
    assert "cores=\"2\"" in sized
    assert any("asks for 4 dedicated cores" in n and "2 vCPUs" in n for n in sizing.notes)
    assert any("128 MiB" in n for n in sizing.notes)


# --- the real thing (root) -----------------------------------------------------------------


@pytest.mark.e2e
def test_two_cell_guest_on_one_host_node_reports_two_nodes(domains: Domains) -> None:
    """Two guest cells, both backed by the single host node: the guest kernel's own sysfs
    shows two nodes with one CPU and 64 MiB each."""
    numatune = (
        "<numatune><memnode cellid='0' mode='strict' nodeset='0'/>"
        "<memnode cellid='1' mode='strict' nodeset='0'/></numatune>"
    )
    xml = domains.probe_xml("twocell", vcpus=2, cells=[("0", 64), ("1", 64)], extra=numatune)
    r = domains.boot(xml)
    assert sorted(r.nodes) == [0, 1]
    assert r.nodes[0].cpus == {0}
    assert r.nodes[1].cpus == {1}
    for node in r.nodes.values():
        # pages present: the whole cell less the firmware's few hundred KiB
        assert node.present_kib is not None
        assert 62 * MIB <= node.present_kib <= 64 * MIB, node
        # MemTotal: less what the guest kernel keeps for itself, on whichever node it landed
        assert 16 * MIB < node.memtotal_kib <= 64 * MIB, node
    assert r.cpus_online == {0, 1}
    assert report.compare(r, report.rendered_cells(xml), 2) == []


@pytest.mark.e2e
def test_guest_reports_an_asymmetric_topology_it_was_given(domains: Domains) -> None:
    """Not the XML read back: an uneven split shows up as the guest kernel laid it out."""
    xml = domains.probe_xml("asym", vcpus=3, cells=[("0-1", 96), ("2", 64)])
    r = domains.boot(xml)
    assert [r.nodes[0].cpus, r.nodes[1].cpus] == [{0, 1}, {2}]
    assert 94 * MIB <= (r.nodes[0].present_kib or 0) <= 96 * MIB
    assert 62 * MIB <= (r.nodes[1].present_kib or 0) <= 64 * MIB
    assert report.compare(r, report.rendered_cells(xml), 3) == []


@pytest.mark.e2e
def test_latency_probe_runs_cyclictest_on_every_vcpu(domains: Domains) -> None:
    xml = domains.probe_xml("latency", vcpus=2, cells=[("0", 64), ("1", 64)],
                            cmdline="numahook.latency=2")  # fmt: skip
    r = domains.boot(xml, timeout=180)
    lat = r.latency
    assert lat is not None
    assert lat.exit_code == 0, lat.stderr
    assert lat.duration_s == 2
    assert len(lat.max_us) == len(lat.min_us) == 2
    assert all(mn <= mx for mn, mx in zip(lat.min_us, lat.max_us))
    assert all(t > 0 for t in lat.total)
    assert lat.histogram


@pytest.mark.e2e
def test_a_file_the_lab_wrote_goes_at_teardown_even_if_its_writer_died(domains: Domains) -> None:
    """A killed test's /etc file is the lab's to remove (the package test refuses one)."""
    from lab import env, record, undo

    where = Path("/etc/numahook-lab-test")
    conf = where / "x.conf"
    assert not where.exists()
    env.write_file(conf, "[realtime]\n")
    state = record.load()
    assert state is not None
    assert state["files"][str(conf)] is None and str(where) in state["dirs"]
    # what `down` does with that record, without tearing down this session's lab
    problems: list[str] = []
    undo.restore_files({"files": {str(conf): None}, "modes": {}, "mounts": [],
                        "dirs": [str(where)]}, problems)  # fmt: skip
    assert problems == [] and not where.exists()
