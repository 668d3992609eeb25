"""node/report: the hugepage advice fits the host it is given for (issue 31).

Each host is a fixture sysfs/procfs tree (tests/fixtures/hosts.py) probed as `numahook
node` probes the real one: the page sizes the kernel offers per node, the hugetlbfs mounts
in /proc/mounts, and each node's MemTotal. The advice used to be one fixed sentence,
`echo 4 > …/hugepages-1048576kB/nr_hugepages`, whatever the host: 4 GiB on nodes of
1.5 GiB, in a size no hugetlbfs served.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from numahook.node import probe
from numahook.node.model import NodeCapability
from numahook.node.report import hugepage_reasons, text_report
from tests.fixtures.hosts import HOSTS, HUGE_1G, HUGE_2M, CpuSpec, HostSpec, NodeSpec
from tests.support.nodes import make_host

MIB = 1024
M2 = "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
M1G = "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\n"
#: `echo N > <sysfs pool>` in the advice
ECHO = re.compile(r"`echo ([0-9]+) > /sys/devices/system/node/node([0-9]+)/hugepages/"
                  r"hugepages-([0-9]+)kB/nr_hugepages`")


def two_nodes(memory_mib: int | tuple[int, int],
              pools: dict[int, tuple[int, int, int]]) -> HostSpec:
    """Two nodes of two CPUs, as the host VM lab's default shape, with this much memory."""
    mem = memory_mib if isinstance(memory_mib, tuple) else (memory_mib, memory_mib)
    cpus = [CpuSpec(c, c // 2, 0, 0, c) for c in range(4)]
    nodes = [NodeSpec(n, [2 * n, 2 * n + 1], mem[n] * MIB, dict(pools)) for n in (0, 1)]
    return HostSpec("two-small-nodes", cpus, nodes, [[10, 20], [20, 10]])


def probed(tmp_path: Path, spec: HostSpec | str, mounts: str) -> NodeCapability:
    return probe.probe(make_host(tmp_path, spec, 1, -1, mounts), True)


def huge(cap: NodeCapability) -> list[str]:
    return hugepage_reasons(cap)


def test_the_issue_host_gets_2m_advice_that_fits_its_nodes(tmp_path: Path) -> None:
    """1.5 GiB nodes, both sizes offered, only a 2 MiB hugetlbfs, nothing reserved."""
    cap = probed(tmp_path, two_nodes(1536, {HUGE_2M: (0, 0, 0), HUGE_1G: (0, 0, 0)}), M2)
    (advice,) = huge(cap)
    assert "hugepages-1048576kB" not in advice and "1 GiB" not in advice
    assert advice.startswith("no 2 MiB hugepages are free, and none need to be: numahook "
                             "reserves each domain's pages on its nodes when it starts")
    assert "nodes 0-1 have 1536 MiB each" in advice
    (count, node, size), = ECHO.findall(advice)
    assert (int(node), int(size)) == (0, HUGE_2M)
    assert int(count) * HUGE_2M <= 1536 * MIB // 2, "the example takes more than half a node"
    assert f"({int(count) * 2} MiB of node0's 1536 MiB)" in advice
    # the report `numahook node` prints carries it
    assert advice in text_report(cap)


def test_only_a_1g_mount_gives_1g_advice_and_the_boot_time_way(tmp_path: Path) -> None:
    cap = probed(tmp_path, two_nodes(1536, {HUGE_2M: (0, 0, 0), HUGE_1G: (0, 0, 0)}), M1G)
    (advice,) = huge(cap)
    assert ECHO.findall(advice) == [("1", "0", str(HUGE_1G))]  # one page: what fits
    assert "(1 GiB of node0's 1536 MiB)" in advice
    assert "hugepagesz=1G hugepages=N on the kernel command line" in advice


def test_a_mount_whose_pages_fit_no_node_says_to_mount_a_smaller_size(tmp_path: Path) -> None:
    cap = probed(tmp_path, two_nodes(768, {HUGE_2M: (0, 0, 0), HUGE_1G: (0, 0, 0)}), M1G)
    (advice,) = huge(cap)
    assert advice.startswith("the hugetlbfs for 1 GiB pages serves no domain here")
    assert "(at most 768 MiB)" in advice and "mount one with pagesize=2M instead" in advice
    assert not ECHO.findall(advice)


def test_no_mount_at_all_is_one_sentence_with_the_fstab_line(tmp_path: Path) -> None:
    cap = probed(tmp_path, two_nodes(1536, {HUGE_2M: (64, 0, 0), HUGE_1G: (0, 0, 0)}), "")
    (advice,) = huge(cap)
    assert advice.startswith("no hugetlbfs is mounted, so libvirt can back no domain with "
                             "hugepages (the 2 MiB pages reserved here go unused);")
    assert "`hugetlbfs /dev/hugepages hugetlbfs pagesize=2M 0 0`" in advice
    # reserved 1 GiB pages name that size instead
    cap = probed(tmp_path / "1g", two_nodes(1536, {HUGE_2M: (0, 0, 0), HUGE_1G: (1, 0, 0)}), "")
    (advice,) = huge(cap)
    assert "the 1 GiB pages reserved here go unused" in advice and "pagesize=1G" in advice


def test_free_pages_in_a_mounted_size_need_no_advice(tmp_path: Path) -> None:
    cap = probed(tmp_path, two_nodes(1536, {HUGE_2M: (64, 10, 0), HUGE_1G: (0, 0, 0)}), M2)
    assert huge(cap) == []


def test_free_pages_only_in_an_unmounted_size_do_not_count(tmp_path: Path) -> None:
    cap = probed(tmp_path, two_nodes(1536, {HUGE_2M: (0, 0, 0), HUGE_1G: (1, 1, 0)}), M2)
    unmounted, advice = huge(cap)
    assert unmounted.startswith("1 GiB hugepages are reserved but no hugetlbfs is mounted "
                                "with that page size; mount one (pagesize=1G)")
    assert ECHO.findall(advice)[0][2] == str(HUGE_2M)


def test_nodes_of_different_sizes_are_each_named(tmp_path: Path) -> None:
    cap = probed(tmp_path, two_nodes((1536, 4096), {HUGE_2M: (0, 0, 0)}), M2)
    (advice,) = huge(cap)
    assert "(node0 has 1536 MiB, node1 has 4096 MiB)" in advice


def test_memoryless_nodes_are_left_out(tmp_path: Path) -> None:
    spec = HOSTS["asym-cpuless"]
    emptied = HostSpec(spec.name, spec.cpus, [
        NodeSpec(n.id, n.cpus, n.memory_kib, {s: (0, 0, 0) for s in n.hugepages}, n.online)
        for n in spec.nodes], spec.distances)
    cap = probed(tmp_path, emptied, M2)
    (advice,) = huge(cap)
    memoryless = [n.id for n in spec.nodes if n.online and n.memory_kib == 0]
    assert memoryless and not any(f"node{n} has" in advice for n in memoryless)


def test_a_kernel_without_node_pools_says_so(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, two_nodes(1536, {HUGE_2M: (0, 0, 0)}), 1, -1, M2)
    for node in Path(cfg.sysfs_root, "devices/system/node").glob("node*/hugepages"):
        shutil.rmtree(node)
    (advice,) = huge(probe.probe(cfg, True))
    assert advice.startswith("no NUMA node offers hugepages")


@pytest.mark.parametrize("name", sorted(HOSTS))
@pytest.mark.parametrize("mounts", [M2, M1G, M2 + M1G], ids=["2M", "1G", "2M+1G"])
def test_on_every_catalogue_host_the_example_fits_and_is_mounted(
        tmp_path: Path, name: str, mounts: str) -> None:
    """Emptied pools, any mounts: an example reservation is of a mounted size, on a node
    with memory, and takes at most half of that node (or one page where one fits)."""
    spec = HOSTS[name]
    emptied = HostSpec(spec.name, spec.cpus, [
        NodeSpec(n.id, n.cpus, n.memory_kib, {s: (0, 0, 0) for s in n.hugepages}, n.online)
        for n in spec.nodes], spec.distances, spec.default_hugepage_kib)
    cap = probed(tmp_path, emptied, mounts)
    mounted = {m.pagesize_kib for m in cap.hugetlbfs}
    memory = {n.id: n.memory_kib for n in cap.nodes}
    for reason in huge(cap):
        assert ";" in reason and ". " not in reason, reason  # one sentence with its fix
        for count, node, size in ECHO.findall(reason):
            assert int(size) in mounted, reason
            assert int(count) >= 1
            assert int(count) * int(size) <= max(memory[int(node)] // 2, int(size)), reason


def test_the_report_and_its_json_show_the_shared_set(tmp_path: Path) -> None:
    """[cpus] shared, where shared emulators run; unset, what that means."""
    from numahook.node import model
    from numahook.records import replace

    cfg = make_host(tmp_path, "single", 1, -1, M2)
    cap = probe.probe(cfg, True)
    assert ("none ([cpus] shared is unset, so emulatorThreadPolicy='share' and "
            "dedicatedMask are refused)" in text_report(cap))
    cap = probe.probe(replace(cfg, shared_cpus=frozenset({0, 1})), True)
    assert ("0-1 ([cpus] shared: shared emulators and floating vCPUs run there, never "
            "dedicated)") in text_report(cap)
    doc = cap.to_json()
    assert doc["cpus"]["shared"] == "0-1"
    assert model.NodeCapability.from_json(doc).shared_cpus == frozenset({0, 1})
