"""migrate/restore: re-pin the host side to this host, keep the guest's view (libvirt ABI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.config import Config
from numahook.core import domainxml
from numahook.errors import Refusal
from numahook.ops import lifecycle
from numahook.records import replace
from numahook.state.statedir import StateDir
from numahook.xml import safe
from tests.fixtures.hosts import host_roots
from tests.golden.cases import CASES, DATA

WIDE = next(c for c in CASES if c.id == "intel-wide")


def host_config(tmp: Path, host: str, version: int = 1,
                cpusets: dict[str, str] | None = None) -> Config:
    roots = host_roots(tmp, host, version, cpusets)
    (tmp / "run").mkdir()
    return replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                   proc_root=str(roots["proc"]), libvirt_run=str(tmp / "run"),
                   state_dir=str(tmp / "state"))


def rendered_on_intel() -> str:
    return (DATA / f"{WIDE.id}-out.xml").read_text()


def facts(xml: str) -> domainxml.DomainFacts:
    return domainxml.read(safe.parse(xml))


def test_relocation_keeps_the_guest_view_and_repins_to_this_host(tmp_path: Path) -> None:
    source = rendered_on_intel()
    cfg = host_config(tmp_path, "bench-8n-256", 2)
    out = lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert out is not None
    before, after = facts(source), facts(out)
    # the guest sees the same cells, topology, memory and distances
    assert after.cells == before.cells
    assert after.topology == before.topology
    assert after.memory_kib == before.memory_kib
    src_numa = safe.parse(source).find("cpu/numa")
    out_numa = safe.parse(out).find("cpu/numa")
    assert safe.tostring(out_numa) == safe.tostring(src_numa)
    # the host side follows this host: 256 CPUs, siblings N and N+128, 16 cores per node
    pins = [next(iter(after.vcpupin[v])) for v in range(after.vcpus)]
    assert len(set(pins)) == after.vcpus and pins != [next(iter(before.vcpupin[v]))
                                                       for v in range(before.vcpus)]
    for v in range(0, after.vcpus, 2):  # guest thread siblings on host siblings
        assert abs(pins[v] - pins[v + 1]) == 128
    node_of = {c: (c % 128) // 16 for c in range(256)}
    for cell in after.cells:
        nodes = {node_of[pins[v]] for v in cell.cpus}
        assert len(nodes) == 1
        assert after.memnodes[cell.id] == frozenset(nodes)
    assert len({next(iter(n)) for n in after.memnodes.values()}) == len(after.cells)


def test_same_host_relocation_keeps_the_pinning(tmp_path: Path) -> None:
    source = rendered_on_intel()
    cfg = host_config(tmp_path, "intel-2s-ht")
    out = lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert out is not None
    assert facts(out).vcpupin == facts(source).vcpupin


def test_a_host_that_cannot_give_the_same_shape_refuses(tmp_path: Path) -> None:
    cfg = host_config(tmp_path, "epyc-nps4", 2)  # 16 CPUs per node: 24-vCPU cells cannot fit
    with pytest.raises(Refusal) as exc:
        lifecycle.relocate(rendered_on_intel(), cfg, StateDir(cfg.state_dir))
    message = str(exc.value)
    assert "\n" not in message
    assert exc.value.check in ("guest-shape", "dedicated-cpus")


def test_two_cells_do_not_fit_one_node(tmp_path: Path) -> None:
    source = (DATA / "quad-numavm-split-v2-out.xml").read_text()  # 2 cells of 2 vCPUs
    cfg = host_config(tmp_path, "single")
    with pytest.raises(Refusal) as exc:
        lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert exc.value.check == "guest-shape"
    assert "same guest NUMA shape (2 cells of 2/2 vCPUs)" in str(exc.value)
    assert "migrate it to a host whose cpuset spans matching nodes" in str(exc.value)


def test_unmanaged_domains_print_nothing(tmp_path: Path) -> None:
    cfg = host_config(tmp_path, "single")
    plain = "<domain type='kvm'><name>p</name><memory>1024</memory></domain>"
    assert lifecycle.relocate(plain, cfg, StateDir(cfg.state_dir)) is None


def test_a_cell_without_vcpus_is_refused_in_one_sentence(tmp_path: Path) -> None:
    source = (DATA / "quad-numavm-split-v2-out.xml").read_text()
    bad = source.replace("<cell id='0' cpus='0-1' ", "<cell id='0' ")
    assert bad != source
    cfg = host_config(tmp_path, "quad-nosmt", 2)
    with pytest.raises(Refusal) as exc:
        lifecycle.relocate(bad, cfg, StateDir(cfg.state_dir))
    assert exc.value.check == "guest-shape"
    assert "do not hold every vCPU exactly once" in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("case", ["intel-io-wide", "intel-io-defined"])
def test_relocation_keeps_every_device_address(tmp_path: Path, case: str) -> None:
    """migrate/restore re-pin the host side only: the expander buses, root ports and each
    passthrough device's guest address (guest ABI) come out as they went in."""
    source = (DATA / f"{case}-out.xml").read_text()
    cfg = host_config(tmp_path, "intel-2s-io")
    out = lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert out is not None
    before, after = facts(source), facts(out)
    assert after.controllers == before.controllers and after.passthrough == before.passthrough
    src, dst = safe.parse(source).find("devices"), safe.parse(out).find("devices")
    assert safe.tostring(dst) == safe.tostring(src)


def test_a_hugepage_domain_without_passthrough_is_rebound_to_the_new_node(
        tmp_path: Path) -> None:
    """Its memory follows its CPUs to this host's node, so the pages reserved there at
    start are the ones QEMU maps (issue 25)."""
    source = (DATA / "intel-hugepages-dedicated-out.xml").read_text()
    assert facts(source).numatune_memory == ("strict", frozenset({1}))
    cfg = host_config(tmp_path, "intel-2s-ht", 1,
                      {"": "0-79", "machine": "0-9,40-49"})  # node 0 only here
    out = lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert out is not None
    after = facts(out)
    assert after.numatune_memory == ("strict", frozenset({0}))
    assert all(pins <= frozenset(range(10)) | frozenset(range(40, 50))
               for pins in after.vcpupin.values())
    assert after.cells == () and after.memnodes == {}


def test_the_emulators_own_cpus_follow_it_to_this_host(tmp_path: Path) -> None:
    """The started hook narrows the emulator to <numahook:rendered emulator> (tunables/emulator.py):
    after a migration that must name this host's CPUs, not the source's."""
    source = (DATA / "quad-rt-span-v2-out.xml").read_text()
    assert facts(source).emulator_own == {9}
    cfg = host_config(tmp_path, "quad-nosmt", 2, {"": "0-31", "machine.slice": "14-17"})
    out = lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert out is not None
    after = facts(out)
    pins = {next(iter(after.vcpupin[v])) for v in range(after.vcpus)}
    assert after.emulator_own is not None and after.emulatorpin is not None
    assert len(after.emulator_own) == 1 and not after.emulator_own & pins
    assert after.emulator_own < after.emulatorpin <= pins | after.emulator_own
    # the start set reaches both cells' nodes (quad-nosmt: 8 CPUs per node)
    assert {c // 8 for c in after.emulatorpin} == {c // 8 for c in pins}


def test_a_shared_emulator_moves_to_this_host_s_shared_set(tmp_path: Path) -> None:
    """emulatorThreadPolicy share: the destination's [cpus] shared, whatever the source's;
    the guest's cells stay, the vCPUs leave the destination's shared CPUs alone."""
    source = (DATA / "quad-share-span-v2-out.xml").read_text()
    cfg = replace(host_config(tmp_path, "quad-nosmt", 2, {"": "0-31", "machine.slice": "8-15"}),
                  shared_cpus=frozenset({8}))
    out = lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert out is not None
    after = facts(out)
    pins = {next(iter(after.vcpupin[v])) for v in range(after.vcpus)}
    assert 8 not in pins and after.cells == facts(source).cells
    assert after.emulatorpin == {8} and after.emulator_own is None


def test_a_shared_emulator_is_refused_where_no_set_is_configured(tmp_path: Path) -> None:
    source = (DATA / "quad-share-span-v2-out.xml").read_text()
    cfg = host_config(tmp_path, "quad-nosmt", 2, {"": "0-31", "machine.slice": "8-15"})
    with pytest.raises(Refusal) as exc:
        lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert exc.value.check == "shared-cpus"
    assert "set shared = <cpulist> under [cpus]" in str(exc.value)


def test_a_mixed_domain_whose_cells_would_change_is_refused(tmp_path: Path) -> None:
    """dedicatedMask: the guest's two cells cannot be kept where its three dedicated vCPUs
    fit one node; refused with the reason rather than re-pinned into another shape."""
    source = (DATA / "intel-mixed-realtime-out.xml").read_text()
    cfg = replace(host_config(tmp_path, "quad-nosmt", 2, {"": "0-31", "machine.slice": "0-7"}),
                  shared_cpus=frozenset({0}))
    with pytest.raises(Refusal) as exc:
        lifecycle.relocate(source, cfg, StateDir(cfg.state_dir))
    assert exc.value.check == "guest-shape"
    assert "other guest NUMA cells (1 instead of 2)" in str(exc.value)
    assert str(exc.value).endswith("put its dedicated vCPUs on as many nodes")
