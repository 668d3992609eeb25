"""Topology read from fixture sysfs trees of every catalogue host, and bad sysfs files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from numahook.core.topology import Topology
from numahook.errors import InputError
from numahook.host import sysfs
from tests.fixtures.hosts import GIB_KIB, HOSTS, HUGE_1G, HUGE_2M, build_proc, build_sysfs


def _read(tmp_path: Path, name: str) -> Topology:
    return sysfs.read_topology(build_sysfs(tmp_path / "sys", HOSTS[name]))


def _topo(trees: dict[str, Path], name: str) -> Topology:
    return sysfs.read_topology(trees[name])


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One read-only sysfs tree per catalogue host, built once for this module."""
    base = tmp_path_factory.mktemp("sysfs")
    return {name: build_sysfs(base / name, spec) for name, spec in HOSTS.items()}


# --------------------------------------------------------------------------- every host


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_topology_matches_the_spec(trees: dict[str, Path], name: str) -> None:
    spec = HOSTS[name]
    topo = sysfs.read_topology(trees[name])
    assert sorted(topo.cpus) == spec.online_cpus()
    for cid, cpu in topo.cpus.items():
        want = spec.cpu(cid)
        assert cpu.id == cid
        assert (cpu.node, cpu.package, cpu.die, cpu.core) == (
            want.node, want.package, want.die, want.core)
        assert cpu.siblings == frozenset(spec.siblings(cid))
    assert sorted(topo.nodes) == [n.id for n in spec.online_nodes()]
    online = set(spec.online_cpus())
    for ns in spec.online_nodes():
        node = topo.nodes[ns.id]
        assert node.cpus == frozenset(online & set(ns.cpus))
        assert node.memory_kib == ns.memory_kib
        row = spec.distances[[n.id for n in spec.nodes].index(ns.id)]
        assert dict(node.distances) == {o.id: row[i] for i, o in enumerate(spec.nodes)}
        for size in spec.hugepage_sizes():
            nr, free, surplus = ns.hugepages.get(size, (0, 0, 0))
            pool = node.hugepages[size]
            assert (pool.size_kib, pool.nr, pool.free, pool.surplus) == (size, nr, free, surplus)
        assert set(node.hugepages) == set(spec.hugepage_sizes())
    assert topo.page_sizes == frozenset(spec.hugepage_sizes())
    assert topo.default_page_kib == min(spec.hugepage_sizes())


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_every_cpu_is_in_its_node_and_siblings_are_symmetric(trees: dict[str, Path],
                                                             name: str) -> None:
    topo = sysfs.read_topology(trees[name])
    for cid, cpu in topo.cpus.items():
        assert cid in topo.nodes[cpu.node].cpus
        assert topo.node_of(cid) == cpu.node
        for s in cpu.siblings:
            assert cid in topo.cpus[s].siblings
            assert topo.core_key(s) == topo.core_key(cid)
    assert set().union(*(n.cpus for n in topo.nodes.values())) == set(topo.cpus)


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_fingerprint_is_stable_across_reads(trees: dict[str, Path], name: str) -> None:
    a = sysfs.read_topology(trees[name])
    b = sysfs.read_topology(trees[name])
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16


def test_fingerprints_differ_between_hosts(trees: dict[str, Path]) -> None:
    prints = {sysfs.read_topology(trees[n]).fingerprint() for n in ("intel-2s-ht", "epyc-nps4",
                                                             "quad-nosmt", "single")}
    assert len(prints) == 4


def test_fingerprint_of_a_rebuilt_tree_is_the_same(trees: dict[str, Path],
                                                   tmp_path: Path) -> None:
    assert _read(tmp_path, "single").fingerprint() == \
        sysfs.read_topology(trees["single"]).fingerprint()


# --------------------------------------------------------------------------- named facts


def test_intel_2s_ht_siblings_and_sockets(trees: dict[str, Path]) -> None:
    topo = _topo(trees, "intel-2s-ht")
    assert len(topo.cpus) == 80
    assert topo.cpus[0].siblings == frozenset({0, 40})
    assert topo.cpus[40].siblings == frozenset({0, 40})
    assert topo.cpus[59].siblings == frozenset({19, 59})
    assert topo.nodes[0].cpus == frozenset(range(0, 20)) | frozenset(range(40, 60))
    assert topo.nodes[1].cpus == frozenset(range(20, 40)) | frozenset(range(60, 80))
    assert topo.cpus[20].package == 1
    # Skylake core ids have gaps and repeat across packages: core_key must tell them apart
    assert topo.cpus[5].core == 8
    assert topo.cpus[0].core == topo.cpus[20].core == 0
    assert topo.core_key(0) != topo.core_key(20)
    assert topo.distance(0, 1) == 21
    assert topo.distance(1, 1) == 10
    assert topo.nodes[0].memory_kib == 96 * GIB_KIB
    assert topo.nodes[0].hugepages[HUGE_2M].nr == 512
    assert topo.nodes[1].hugepages[HUGE_1G].free == 4
    assert topo.page_sizes == frozenset({HUGE_2M, HUGE_1G})
    assert topo.default_page_kib == HUGE_2M


def test_epyc_nps4_four_nodes_at_distance_12(trees: dict[str, Path]) -> None:
    topo = _topo(trees, "epyc-nps4")
    assert sorted(topo.nodes) == [0, 1, 2, 3]
    for a in range(4):
        assert len(topo.nodes[a].cpus) == 16
        for b in range(4):
            assert topo.distance(a, b) == (10 if a == b else 12)
    assert {c.package for c in topo.cpus.values()} == {0}
    assert topo.cpus[0].siblings == frozenset({0, 32})
    assert topo.nodes_of([0, 8, 16, 24, 32]) == [0, 1, 2, 3]
    assert topo.page_sizes == frozenset({HUGE_2M})


def test_asym_cpuless_and_memoryless_nodes(trees: dict[str, Path]) -> None:
    topo = _topo(trees, "asym-cpuless")
    assert sorted(topo.nodes) == [0, 1, 2, 3]
    cxl = topo.nodes[2]
    assert cxl.cpus == frozenset()
    assert cxl.memory_kib == 128 * GIB_KIB
    # a CPU-less node has no pools of its own, but every online node has every hstate dir
    assert all(p.nr == 0 for p in cxl.hugepages.values())
    no_mem = topo.nodes[3]
    assert no_mem.cpus == frozenset(range(16, 20))
    assert no_mem.memory_kib == 0
    assert all(topo.cpus[c].node == 3 for c in range(16, 20))
    assert topo.distance(0, 3) == 11
    assert topo.distance(2, 1) == 24
    assert topo.nodes[0].hugepages[HUGE_2M].free == 500
    assert topo.nodes[0].hugepages[HUGE_2M].nr == 512


def test_offline_cpus_are_absent(trees: dict[str, Path]) -> None:
    topo = _topo(trees, "offline-cpus")
    for gone in (3, 4, 12):
        assert gone not in topo.cpus
        assert all(gone not in n.cpus for n in topo.nodes.values())
        assert all(gone not in c.siblings for c in topo.cpus.values())
    assert sorted(topo.cpus) == [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15]
    assert topo.nodes[0].cpus == frozenset({0, 1, 2, 5, 6, 7})


def test_offline_cpus_keep_their_node_for_the_map(tmp_path: Path) -> None:
    """read_topology drops them; the map still draws each in its node, from the cpuN/nodeM
    link the kernel keeps while it is offline (None where there is none)."""
    root = build_sysfs(tmp_path / "sys", HOSTS["offline-cpus"])
    assert sysfs.offline_cpus(root) == {3: 0, 4: 0, 12: 1}
    (root / "devices/system/cpu/cpu12/node1").unlink()
    assert sysfs.offline_cpus(root)[12] is None
    assert sysfs.offline_cpus(build_sysfs(tmp_path / "single", HOSTS["single"])) == {}
    (root / "devices/system/cpu/present").unlink()
    assert sysfs.offline_cpus(root) == {}  # logged; the map goes on without them


def test_single_node_laptop_numbering(trees: dict[str, Path]) -> None:
    topo = _topo(trees, "single")
    assert sorted(topo.nodes) == [0]
    assert topo.cpus[0].siblings == frozenset({0, 2})
    assert topo.cpus[1].siblings == frozenset({1, 3})
    assert topo.nodes[0].distances == {0: 10}


def test_bench_host_size(trees: dict[str, Path]) -> None:
    topo = sysfs.read_topology(trees["bench-8n-256"])
    assert len(topo.cpus) == 256
    assert len(topo.nodes) == 8
    assert topo.cpus[0].siblings == frozenset({0, 128})
    assert topo.distance(0, 3) == 12
    assert topo.distance(0, 4) == 32


def _copy(trees: dict[str, Path], tmp_path: Path, name: str) -> Path:
    """A private copy of a prebuilt tree that a test may damage."""
    return Path(shutil.copytree(trees[name], tmp_path / "sys", symlinks=True))


def test_no_numa_directory_means_one_node(trees: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(trees, tmp_path, "quad-nosmt")
    shutil.rmtree(root / "devices/system/node")
    topo = sysfs.read_topology(root)
    assert list(topo.nodes) == [0]
    assert topo.nodes[0].cpus == frozenset(range(32))
    assert all(c.node == 0 for c in topo.cpus.values())


def test_missing_siblings_file_means_a_core_of_one(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", HOSTS["single"])
    (root / "devices/system/cpu/cpu2/topology/thread_siblings_list").unlink()
    topo = sysfs.read_topology(root)
    assert topo.cpus[2].siblings == frozenset({2})


def test_malformed_distance_row_is_ignored(trees: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(trees, tmp_path, "epyc-nps4")
    (root / "devices/system/node/node1/distance").write_text("10 12\n")
    topo = sysfs.read_topology(root)
    assert dict(topo.nodes[1].distances) == {}
    assert topo.distance(1, 2) == 20  # the fallback for an unknown remote distance
    assert topo.distance(0, 1) == 12


def test_default_page_size_from_proc_meminfo(tmp_path: Path) -> None:
    proc = build_proc(tmp_path / "proc", HOSTS["intel-2s-ht"])
    assert sysfs.default_page_kib(proc) == HUGE_2M
    (proc / "meminfo").write_text("MemTotal: 1 kB\nHugepagesize:    1048576 kB\n")
    assert sysfs.default_page_kib(proc) == HUGE_1G
    (proc / "meminfo").write_text("MemTotal: 1 kB\n")
    assert sysfs.default_page_kib(proc) is None
    assert sysfs.default_page_kib(tmp_path / "nowhere") is None


# --------------------------------------------------------------------------- bad files


def _one_line_error(root: Path) -> str:
    with pytest.raises(InputError) as exc:
        sysfs.read_topology(root)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "Traceback" not in msg
    return msg


@pytest.mark.parametrize(("rel", "content", "words"), [
    ("devices/system/cpu/online", "garbage\n", ["devices/system/cpu/online", "'garbage'"]),
    ("devices/system/cpu/online", "0-99999\n", ["beyond the largest allowed id"]),
    ("devices/system/node/online", "0-1,x\n", ["devices/system/node/online", "'x'"]),
    ("devices/system/node/node1/cpulist", "8-\n", ["node1/cpulist", "'8-'"]),
    ("devices/system/cpu/cpu3/topology/thread_siblings_list", "3,\u00e9\n",
     ["thread_siblings_list"]),
    ("devices/system/cpu/cpu3/topology/core_id", "three\n", ["core_id", "not an integer"]),
    ("devices/system/cpu/cpu3/topology/physical_package_id", "\n",
     ["physical_package_id", "not an integer"]),
    ("devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", "lots\n",
     ["nr_hugepages", "'lots'", "not an integer"]),
    ("kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "-\n",
     ["free_hugepages", "not an integer"]),
])
def test_garbage_file_gives_one_input_error_line(trees: dict[str, Path], tmp_path: Path,
                                                 rel: str, content: str,
                                                 words: list[str]) -> None:
    root = _copy(trees, tmp_path, "quad-nosmt")
    (root / rel).write_text(content)
    msg = _one_line_error(root)
    for w in words:
        assert w in msg


@pytest.mark.parametrize("rel", [
    "devices/system/cpu/online",
    "devices/system/node/node2/cpulist",
    "devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages",
])
def test_missing_file_gives_one_input_error_line(trees: dict[str, Path], tmp_path: Path,
                                                 rel: str) -> None:
    root = _copy(trees, tmp_path, "quad-nosmt")
    (root / rel).unlink()
    msg = _one_line_error(root)
    assert msg.startswith(f"reading {root / rel}")


def test_unreadable_file_gives_one_input_error_line(tmp_path: Path) -> None:
    # root reads through chmod 000, so make the file unreadable by making it a directory
    root = build_sysfs(tmp_path / "sys", HOSTS["single"])
    target = root / "devices/system/node/node0/meminfo"
    target.unlink()
    target.mkdir()
    msg = _one_line_error(root)
    assert msg.startswith(f"reading {target}")


def test_binary_file_gives_one_input_error_line(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", HOSTS["single"])
    (root / "devices/system/cpu/online").write_bytes(b"\xff\xfe\x00\x01")
    msg = _one_line_error(root)
    assert "devices/system/cpu/online" in msg


def test_oversized_file_gives_one_input_error_line(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", HOSTS["single"])
    (root / "devices/system/cpu/online").write_text("0," * 40000)
    msg = _one_line_error(root)
    assert "is larger than" in msg


def test_missing_root_gives_one_input_error_line(tmp_path: Path) -> None:
    msg = _one_line_error(tmp_path / "no-such-sys")
    assert msg.startswith("reading ")


# --------------------------------------------------------------------------- PCI devices


def test_pci_devices_node_and_root_complex(trees: dict[str, Path]) -> None:
    """intel-2s-io: behind root ports, on two root complexes of node 0, one of node 1."""
    got = sysfs.read_pci(trees["intel-2s-io"], ["0000:18:00.0", "0000:3b:00.0",
                                               "0000:86:00.0", "0000:5e:00.0"])
    assert [(d.node, d.root_complex, d.present) for d in got.values()] == [
        (0, "pci0000:17", True), (0, "pci0000:3a", True), (1, "pci0000:85", True),
        (None, "pci0000:5d", True)]  # numa_node -1: no affinity


def test_pci_device_not_on_this_host(trees: dict[str, Path]) -> None:
    got = sysfs.read_pci(trees["intel-2s-io"], ["0000:99:00.0"])["0000:99:00.0"]
    assert (got.present, got.node, got.root_complex) == (False, None, None)


def test_pci_on_this_machine_reads_like_a_fixture() -> None:
    """The real /sys has the same layout (links into devices/pciDDDD:BB/...)."""
    real = Path("/sys/bus/pci/devices")
    if not real.is_dir() or not any(real.iterdir()):
        pytest.skip("this machine shows no PCI devices")
    bdf = sorted(p.name for p in real.iterdir())[0]
    dev = sysfs.read_pci("/sys", [bdf])[bdf]
    assert dev.present and dev.root_complex is not None
    assert re.fullmatch(r"pci[0-9a-f]{4}:[0-9a-f]{2}", dev.root_complex)
    assert dev.node is None or dev.node >= 0


@pytest.mark.parametrize("bad", ["../../etc", "0000:18:00.0/..", "18:00.0", "0000:18:00.8"])
def test_pci_names_are_checked(trees: dict[str, Path], bad: str) -> None:
    with pytest.raises(InputError, match="is not a PCI device name"):
        sysfs.read_pci(trees["intel-2s-io"], [bad])


def test_a_device_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", HOSTS["single"])
    (root / "bus/pci/devices").mkdir(parents=True)
    (root / "bus/pci/devices/0000:18:00.0").symlink_to("/etc")
    with pytest.raises(InputError, match="outside"):
        sysfs.read_pci(root, ["0000:18:00.0"])
