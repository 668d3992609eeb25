"""pciNumaAffinity: the passthrough devices' host nodes steer the dedicated CPUs.

Each domain is evaluated as the CLI would, with the devices' nodes read by the sysfs
adapter from a fixture host (intel-2s-io: NICs and GPUs on both sockets, a card with
numa_node -1; quad-nosmt-io: four nodes without SMT).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.core import cpulist
from numahook.core.plan import Evaluation
from numahook.errors import InputError
from tests.fixtures.devices import domain, evaluate, host_config, hostdev, vf_interface

NODE0 = set(range(0, 20)) | set(range(40, 60))
NODE1 = set(range(20, 40)) | set(range(60, 80))


def check(ev: Evaluation, name: str = "pci-numa-affinity") -> tuple[bool | None, str]:
    found = [c for c in ev.checks if c.name == name]
    assert len(found) == 1, [c.name for c in ev.checks]
    return found[0].ok, found[0].reason


def pins(ev: Evaluation) -> set[int]:
    assert ev.failed is None, ev.failed
    assert ev.plan is not None
    return set(ev.plan.vcpu_pins)


@pytest.fixture
def intel(tmp_path: Path):  # type: ignore[no-untyped-def]
    return host_config(tmp_path, "intel-2s-io")


@pytest.mark.parametrize("attr", ["", " pciNumaAffinity='preferred'",
                                  " pciNumaAffinity='required'"])
def test_vcpus_follow_a_device_on_node1(intel, attr: str) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(intel, domain(hostdev("0000:86:00.0"), cpu_attrs=attr))
    assert pins(ev) <= NODE1
    ok, reason = check(ev)
    assert ok is True and "0000:86:00.0 (node 1, root complex pci0000:85)" in reason
    assert [c.host_node for c in ev.plan.cells] == [1]  # type: ignore[union-attr]


def test_an_sriov_vf_interface_counts_like_a_hostdev(intel) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(intel, domain(vf_interface("0000:86:00.0"), passthrough=False))
    assert pins(ev) <= NODE1


def test_none_ignores_the_devices(intel) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(intel, domain(hostdev("0000:86:00.0"), cpu_attrs=" pciNumaAffinity='none'"))
    assert pins(ev) <= NODE0  # where a domain without devices goes: the first fitting node
    assert not [c for c in ev.checks if c.name == "pci-numa-affinity"]


def test_required_refuses_when_the_node_is_full(tmp_path: Path) -> None:
    cfg = host_config(tmp_path, "intel-2s-io", cpusets={"": "0-79", "machine": "0-19,20-22"})
    ev = evaluate(cfg, domain(hostdev("0000:86:00.0"), cpu_attrs=" pciNumaAffinity='required'"))
    ok, reason = check(ev)
    assert ok is False and ev.plan is None
    assert reason.startswith("pciNumaAffinity='required' puts every dedicated CPU on the node "
                             "of its devices, and 0000:86:00.0 (node 1, root complex "
                             "pci0000:85) is there, but not enough dedicated CPUs")
    assert "only 3 CPUs (20-22) are free in its cpuset on node 1 (its devices' node)" in reason
    # check still shows where the device is, though nothing was placed
    (dev,) = ev.devices
    assert (dev.host_node, dev.root_complex, dev.placement) == (1, "pci0000:85", "pcie.0")
    assert dev.why == "not placed: an earlier precondition failed"
    assert reason.endswith("widen the partition's cpuset or stop another dedicated domain, or "
                           "set pciNumaAffinity='preferred' to let the vCPUs run elsewhere")
    assert "\n" not in reason


def test_preferred_falls_back_with_an_advisory(tmp_path: Path) -> None:
    cfg = host_config(tmp_path, "intel-2s-io", cpusets={"": "0-79", "machine": "0-19,20-22"})
    ev = evaluate(cfg, domain(hostdev("0000:86:00.0")))
    assert pins(ev) <= NODE0
    ok, reason = check(ev)
    assert ok is True and "did not fit on the devices' nodes and run on node 0" in reason
    assert any(a.startswith("0000:86:00.0 (node 1, root complex pci0000:85) is not local to "
                            "every vCPU: the vCPUs do not fit on node 1 (not enough dedicated "
                            "CPUs: the domain needs 4 vCPUs, but only 3 CPUs (20-22) are free")
               and a.endswith("set pciNumaAffinity='required' to refuse such a start")
               for a in ev.advisories), ev.advisories


def test_devices_on_both_nodes_keep_the_fewest_nodes(intel) -> None:  # type: ignore[no-untyped-def]
    """Both nodes are the devices' nodes: the vCPUs still take one, and check says which
    device is then remote."""
    ev = evaluate(intel, domain(hostdev("0000:18:00.0") + hostdev("0000:af:00.0"),
                                cpu_attrs=" pciNumaAffinity='required'"))
    assert pins(ev) <= NODE0
    assert any(a.startswith("0000:af:00.0 (node 1, root complex pci0000:ae) is on a node "
                            "without any of the domain's vCPUs (they run on node 0)")
               for a in ev.advisories), ev.advisories


@pytest.mark.parametrize("bdf, words", [
    ("0000:5e:00.0", "0000:5e:00.0 reports none (its numa_node is -1"),
    ("0000:99:00.0", "0000:99:00.0 is not on this host (there is no "
                     "/sys/bus/pci/devices/0000:99:00.0)"),
])
def test_required_refuses_a_device_without_a_node(intel, bdf: str,  # type: ignore[no-untyped-def]
                                                  words: str) -> None:
    ev = evaluate(intel, domain(hostdev(bdf), cpu_attrs=" pciNumaAffinity='required'"))
    ok, reason = check(ev)
    assert ok is False and words in reason and ev.plan is None
    assert reason.endswith("'preferred' to start it anyway") or reason.endswith(
        "fix its <source><address> or set pciNumaAffinity='preferred'")


@pytest.mark.parametrize("bdf, words", [
    ("0000:5e:00.0", "0000:5e:00.0 reports no NUMA node (numa_node is -1)"),
    ("0000:99:00.0", "0000:99:00.0 is not on this host"),
])
def test_preferred_warns_of_a_device_without_a_node(intel, bdf: str,  # type: ignore[no-untyped-def]
                                                    words: str) -> None:
    ev = evaluate(intel, domain(hostdev(bdf)))
    assert pins(ev) <= NODE0
    assert any(words in a for a in ev.advisories), ev.advisories


def test_a_single_node_host_has_nothing_to_steer(tmp_path: Path) -> None:
    cfg = host_config(tmp_path, "single")
    ev = evaluate(cfg, domain(hostdev("0000:03:00.0"), vcpus=2,
                              cpu_attrs=" pciNumaAffinity='required'"))
    ok, reason = check(ev)
    assert ok is True and "one NUMA node" in reason and ev.advisories == []


def test_a_node_without_memory_cannot_take_passthrough_vcpus(tmp_path: Path) -> None:
    """quad-nosmt-io: the NIC on node 2; cells bind memory to their node, and node 2 has
    memory, so the vCPUs go there (the memory rule and locality agree)."""
    cfg = host_config(tmp_path, "quad-nosmt-io")
    ev = evaluate(cfg, domain(hostdev("0000:81:00.0"), cpu_attrs=" pciNumaAffinity='required'"))
    assert {cpu // 8 for cpu in pins(ev)} == {2}


def test_kept_pinning_moves_to_the_devices_node(intel) -> None:  # type: ignore[no-untyped-def]
    """A definition pinned before its device was added: pinned on node 0, it moves to the
    device's node 1 (a still-valid pinning is kept only where it is local)."""
    pinned = "<cputune>" + "".join(f"<vcpupin vcpu='{v}' cpuset='{v}'/>" for v in range(4)) + \
        "<emulatorpin cpuset='0-3'/></cputune><os>"
    without = evaluate(intel, domain().replace("<os>", pinned))
    assert cpulist.format(pins(without)) == "0-3" and without.plan.kept_pinning  # type: ignore[union-attr]
    ev = evaluate(intel, domain(hostdev("0000:86:00.0")).replace("<os>", pinned))
    assert pins(ev) <= NODE1 and not ev.plan.kept_pinning  # type: ignore[union-attr]


def test_pci_numa_affinity_needs_dedicated_cpus(intel) -> None:  # type: ignore[no-untyped-def]
    xml = domain(hostdev("0000:86:00.0"), passthrough=False,
                 cpu_attrs=" pciNumaAffinity='required'").replace(
        'dedicatedCpuPlacement="true"', 'dedicatedCpuPlacement="false"')
    ok, reason = check(evaluate(intel, xml), "dedicated-cpu-placement")
    assert ok is False and reason.startswith("pciNumaAffinity need dedicated CPUs")


def test_bad_value_is_an_input_error(intel) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="pciNumaAffinity='strict' must be one of required, "
                                         "preferred, none"):
        evaluate(intel, domain(hostdev("0000:86:00.0"), cpu_attrs=" pciNumaAffinity='strict'"))
