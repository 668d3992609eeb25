"""VFIO assignment of a NIC on node 1 to an inner guest, in the host VM lab (issue 15).

The ``iommu`` shape (lab/hostshape.py) gives the VM an emulated VT-d and an e1000e behind
a pxb-pcie on node 1. Inside, the NIC is bound to vfio-pci by hand, as an operator does,
and a managed domain with ``pciNumaAffinity='required'`` gets it as a ``<hostdev>``:
numahook reads its node from the VM's sysfs, pins every vCPU on node 1, and puts the
device behind a pcie-expander-bus on the guest cell of node 1. The probe guest boots
under nested TCG with the NIC assigned through VFIO and reports the device's numa_node,
which must be that cell.

It replaces the default VM and boots a nested guest, so it runs with the other shapes
only when asked: ``NUMAHOOK_HOST_SHAPES=numa4,iommu``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from lab import guest, report
from lab.hostshape import SHAPES
from tests.host.conftest import (
    GUEST_MIB,
    LAB,
    NAMESPACE,
    PREFIX,
    PROBE,
    SERIAL_DIR,
    Host,
    _skip_reason,
)

NAME = PREFIX + "vfio"
#: e1000e (82574L), as QEMU emulates it
NIC_ID = "0x8086:0x10d3"
#: nested TCG with a VFIO device: the slowest boot of the host lab, on a machine that
#: other runs share (bench/README.md); bounded
GUEST_BOOT_TIMEOUT = 1800.0


def _bdf_of_nic(host: Host) -> str:
    out = host.sh("for d in /sys/bus/pci/devices/*; do "
                  "echo \"${d##*/} $(cat $d/vendor):$(cat $d/device)\"; done").stdout
    (bdf,) = [line.split()[0] for line in out.splitlines() if line.split()[1] == NIC_ID]
    return bdf


def _hostdev(bdf: str) -> str:
    dom, bus, rest = bdf.split(":")
    slot, fn = rest.split(".")
    return ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
            f"<address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/>"
            "</source></hostdev>")


def _metadata() -> str:
    return (f"<metadata><numahook:domain xmlns:numahook='{NAMESPACE}'>"
            "<numahook:cpu dedicatedCpuPlacement='true' pciNumaAffinity='required'>"
            "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
            "</numahook:cpu></numahook:domain></metadata>")


@pytest.fixture(scope="module")
def vm() -> Iterator[Host]:
    if "iommu" not in os.environ.get("NUMAHOOK_HOST_SHAPES", "").split(","):
        pytest.skip("VFIO under the vIOMMU boots its own VM and a nested guest: "
                    "NUMAHOOK_HOST_SHAPES=numa4,iommu runs it")
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    subprocess.run([*LAB, "host", "down"], check=True, timeout=120)
    subprocess.run([*LAB, "host", "up", "--shape", "iommu"], check=True, timeout=1800)
    h = Host()
    h.sh(f"install -d -m 755 {SERIAL_DIR}")
    h.sh("systemctl enable --now numahookd")
    yield h
    h.remove_domains()
    subprocess.run([*LAB, "host", "down"], check=True, timeout=120)


@pytest.fixture(scope="module")
def nic(vm: Host) -> str:
    """The NIC's BDF, bound to vfio-pci through driver_override."""
    bdf = _bdf_of_nic(vm)
    d = f"/sys/bus/pci/devices/{bdf}"
    vm.sh(f"modprobe vfio-pci && echo vfio-pci > {d}/driver_override && "
          f"{{ [ ! -e {d}/driver ] || echo {bdf} > {d}/driver/unbind; }} && "
          f"echo {bdf} > /sys/bus/pci/drivers_probe")
    return bdf


def test_the_nic_is_on_node_1_in_an_iommu_group(vm: Host, nic: str) -> None:
    d = f"/sys/bus/pci/devices/{nic}"
    assert vm.sh(f"cat {d}/numa_node").stdout.strip() == "1"
    group = vm.sh(f"basename $(readlink {d}/iommu_group)").stdout.strip()
    assert vm.sh(f"test -c /dev/vfio/{group} && echo yes").stdout.strip() == "yes"
    assert vm.sh(f"basename $(readlink {d}/driver)").stdout.strip() == "vfio-pci"


@pytest.fixture(scope="module")
def assigned(vm: Host, nic: str) -> Iterator[dict[str, Any]]:
    vm.remove_domains()
    xml = guest.probe_domain_xml(NAME, vcpus=1, memory_mib=GUEST_MIB, kind="qemu",
                                 hugepage_kib=2048, extra=_metadata(), boot=PROBE,
                                 serial=f"{SERIAL_DIR}/{NAME}.serial", machine="q35",
                                 devices=_hostdev(nic))
    vm.define(xml)
    vm.wait(lambda: "<numa>" in vm.sh(f"virsh dumpxml --inactive {NAME}").stdout,
            "numahookd to render the definition", 60)
    check = json.loads(vm.sh(f"virsh dumpxml --inactive {NAME} | numahook check --json -",
                             check=False).stdout)
    t0 = time.monotonic()
    vm.sh(f"virsh -q start {NAME}", timeout=300)
    yield {"check": check, "xml": vm.sh(f"virsh dumpxml {NAME}").stdout, "t0": t0}
    vm.remove_domains()


def test_allocation_picks_the_nics_node(assigned: dict[str, Any], nic: str) -> None:
    (dev,) = assigned["check"]["devices"]
    assert (dev["bdf"], dev["host_node"], dev["placement"]) == (nic, 1, "expander-bus"), dev
    root = ET.fromstring(assigned["xml"])
    pins = [report.parse_cpulist(p.get("cpuset", "")) for p in root.findall("./cputune/vcpupin")]
    node1 = set(SHAPES["iommu"].node_cpus()[1])
    assert pins and all(set(p) <= node1 for p in pins), (pins, node1)
    memnodes = [m.get("nodeset") for m in root.findall("./numatune/memnode")]
    assert memnodes == ["1"], memnodes


def test_the_guest_sees_the_assigned_nic_on_its_cell(vm: Host, assigned: dict[str, Any]) -> None:
    serial = f"{SERIAL_DIR}/{NAME}.serial"
    try:
        took = vm.wait(lambda: vm.sh(f"virsh -q domstate {NAME}").stdout.strip() == "shut off",
                       "the probe guest to report and power off", GUEST_BOOT_TIMEOUT, every=5)
    except AssertionError as exc:
        tail = vm.sh(f"tail -c 400 {serial}", check=False).stdout
        raise AssertionError(f"{exc}; its console ends with: {tail!r}") from None
    seen = report.parse(vm.sh(f"cat {serial}").stdout)
    print(f"nested TCG guest with a VFIO NIC: start to poweroff in "
          f"{time.monotonic() - assigned['t0']:.0f} s (waited {took:.0f} s)")
    (dev,) = assigned["check"]["devices"]
    (nic,) = [p for p in seen.pci.values() if p.id == NIC_ID]
    assert nic.numa_node == dev["cell"] and nic.root != "pci0000:00", nic
    assert sorted(seen.nodes) == [dev["cell"]]
