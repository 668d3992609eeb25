"""``numahook check`` (text and --json) and ``status`` show each passthrough device's host
node, root complex and guest placement, and a dedicated KVM domain's kvm-pit thread.

The CLI's own ``main`` on the intel-2s-io fixture host; JSON validated against
docs/schemas/ (tests/support/schemas.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from numahook import cli
from tests.fixtures.devices import domain, host_config, hostdev, render_xml, vf_interface
from tests.fixtures.hosts import host_roots
from tests.support.schemas import validate

NIC0, VF0, GPU1, NONODE = "0000:18:00.0", "0000:18:02.0", "0000:af:00.0", "0000:5e:00.0"
DEVICES = hostdev(NIC0) + vf_interface(VF0) + hostdev(GPU1) + hostdev(NONODE) + \
    hostdev("0000:3b:00.0", guest="0000:00:10.0")


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    roots = host_roots(tmp_path, "intel-2s-io", 1)
    run = tmp_path / "libvirt-run"
    run.mkdir()
    return ["--config", "/dev/null", "--sysfs-root", str(roots["sysfs"]),
            "--cgroup-root", str(roots["cgroup"]), "--proc-root", str(roots["proc"]),
            "--libvirt-run", str(run), "--state-dir", str(tmp_path / "state")]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out


def test_check_json_lists_every_device(capsys: pytest.CaptureFixture[str], args: list[str],
                                       tmp_path: Path) -> None:
    path = tmp_path / "dom.xml"
    path.write_text(domain(DEVICES))
    rc, out = run(capsys, "check", "--json", *args, str(path))
    assert rc == 0
    doc = json.loads(out)
    validate("check", doc)
    got = {d["bdf"]: (d["kind"], d["host_node"], d["root_complex"], d["placement"], d["cell"])
           for d in doc["devices"]}
    assert got == {
        NIC0: ("hostdev", 0, "pci0000:17", "expander-bus", 0),
        VF0: ("interface", 0, "pci0000:17", "expander-bus", 0),
        GPU1: ("hostdev", 1, "pci0000:ae", "pcie.0", None),  # no vCPU on node 1
        NONODE: ("hostdev", None, "pci0000:5d", "pcie.0", None),
        "0000:3b:00.0": ("hostdev", 0, "pci0000:3a", "kept", None),
    }
    nic = next(d for d in doc["devices"] if d["bdf"] == NIC0)
    assert (nic["bus"], nic["bus_nr"], nic["port"], nic["address"]) == (1, 253, 2, "0000:02:00.0")
    assert doc["pinning"]["held"] == []


def test_check_text_explains_each_device(capsys: pytest.CaptureFixture[str], args: list[str],
                                         tmp_path: Path) -> None:
    path = tmp_path / "dom.xml"
    path.write_text(domain(DEVICES, cpu_attrs=" threadPolicy='isolate'"))
    rc, out = run(capsys, "check", *args, str(path))
    assert rc == 0
    lines = out.splitlines()
    assert "  device 0000:18:00.0 (hostdev): host node 0, root complex pci0000:17 -> guest " \
           "cell 0, pcie-expander-bus 1 (busNr 253), root port 2, address 0000:02:00.0" in lines
    assert "  device 0000:af:00.0 (hostdev): host node 1, root complex pci0000:ae -> pcie.0 " \
           "(no guest cell is on its host node 1)" in lines
    assert "  device 0000:5e:00.0 (hostdev): no host NUMA node, root complex pci0000:5d -> " \
           "pcie.0 (it has no host NUMA node)" in lines
    assert "  device 0000:3b:00.0 (hostdev): host node 0, root complex pci0000:3a -> kept at " \
           "0000:00:10.0 (its guest <address> is kept as written)" in lines
    assert "  pcie-expander-bus 1 (busNr 253): guest cell 0, host node 0, root complex " \
           "pci0000:17, 2 root ports" in lines
    assert any(line.startswith("  pinning: ") and "; siblings " in line and " held" in line
               for line in lines)
    assert any(line.startswith("  ok   thread-policy: threadPolicy='isolate'") for line in lines)


def test_status_shows_a_running_domains_devices_and_kvm_pit(
        capsys: pytest.CaptureFixture[str], args: list[str], tmp_path: Path) -> None:
    """A running domain as libvirt's status file has it: devices where the rendering put
    them; its kvm-pit thread (KVM, dedicated) is looked for in /proc (none here)."""
    cfg = host_config(tmp_path / "r", "intel-2s-io")
    xml = render_xml(cfg, domain(DEVICES)).xml.split("?>")[-1]
    run_dir = Path(args[args.index("--libvirt-run") + 1])
    (run_dir / "iovm.xml").write_text(
        "<domstatus state='running' reason='booted' pid='4242'><vcpus><vcpu id='0' "
        f"pid='4243'/></vcpus>{xml}</domstatus>")
    rc, out = run(capsys, "status", "--json", "--uri", "test:///nowhere", *args)
    assert rc == 0
    doc = json.loads(out)
    validate("status", doc)
    (dom,) = doc["running"]
    assert [(d["bdf"], d["placement"], d["cell"]) for d in dom["devices"]] == [
        (NIC0, "expander-bus", 0), (VF0, "expander-bus", 0), (GPU1, "pcie.0", None),
        (NONODE, "pcie.0", None), ("0000:3b:00.0", "kept", None)]
    assert dom["kvm_pit"] == {"tid": None, "cpus": None, "vcpu0_cpus": "0"}
    rc, out = run(capsys, "status", "--uri", "test:///nowhere", *args)
    assert "  device 0000:18:02.0 (interface): host node 0, root complex pci0000:17 -> guest " \
           "cell 0, pcie-expander-bus 1 (busNr 253), root port 3, address 0000:03:00.0" in \
           out.splitlines()
    assert "  kvm-pit: no thread (the PIT is off or emulated in QEMU)" in out.splitlines()
