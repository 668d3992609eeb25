"""libvirtstatus: status XML of running domains (sample captured from libvirt 9.0 here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from numahook import libvirtstatus
from numahook.errors import InputError

# /run/libvirt/qemu/nh-status-probe.xml of a real kvm domain (libvirt 9.0, QEMU 7.2),
# with qemuCaps cut to two flags.
REAL_STATUS = """\
<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh edit nh-status-probe
or other application using the libvirt API.
-->

<domstatus state='running' reason='booted' pid='7475'>
  <monitor path='/var/lib/libvirt/qemu/domain-1-nh-status-probe/monitor.sock' type='unix'/>
  <namespaces>
    <mount/>
  </namespaces>
  <vcpus>
    <vcpu id='0' pid='7482'/>
    <vcpu id='1' pid='7483'/>
  </vcpus>
  <qemuCaps>
    <flag name='kvm'/>
    <flag name='sdl'/>
  </qemuCaps>
  <devices>
    <device alias='balloon0'/>
    <device alias='usb'/>
  </devices>
  <libDir path='/var/lib/libvirt/qemu/domain-1-nh-status-probe'/>
  <channelTargetDir path='/var/lib/libvirt/qemu/channel/target/domain-1-nh-status-probe'/>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <chardevStdioLogd/>
  <rememberOwner/>
  <nodename index='0'/>
  <fdset index='0'/>
  <blockjobs active='no'/>
  <agentTimeout>-2</agentTimeout>
  <domain type='kvm' id='1'>
    <name>nh-status-probe</name>
    <uuid>37458bd7-b570-4007-8934-5a9194048470</uuid>
    <memory unit='KiB'>65536</memory>
    <currentMemory unit='KiB'>65536</currentMemory>
    <vcpu placement='static'>2</vcpu>
    <iothreads>1</iothreads>
    <cputune>
      <vcpupin vcpu='0' cpuset='0'/>
      <vcpupin vcpu='1' cpuset='1'/>
      <emulatorpin cpuset='0-1'/>
      <iothreadpin iothread='1' cpuset='1'/>
    </cputune>
    <resource>
      <partition>/machine</partition>
    </resource>
    <os>
      <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
      <boot dev='hd'/>
    </os>
    <features>
      <acpi/>
      <apic/>
    </features>
    <cpu mode='custom' match='exact' check='full'>
      <model fallback='forbid'>qemu64</model>
      <feature policy='disable' name='pni'/>
      <feature policy='require' name='x2apic'/>
      <feature policy='require' name='hypervisor'/>
      <feature policy='require' name='lahf_lm'/>
      <feature policy='disable' name='svm'/>
    </cpu>
    <clock offset='utc'/>
    <on_poweroff>destroy</on_poweroff>
    <on_reboot>restart</on_reboot>
    <on_crash>destroy</on_crash>
    <devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <controller type='usb' index='0' model='piix3-uhci'>
        <alias name='usb'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
      </controller>
      <controller type='pci' index='0' model='pci-root'>
        <alias name='pci.0'/>
      </controller>
      <input type='mouse' bus='ps2'>
        <alias name='input0'/>
      </input>
      <input type='keyboard' bus='ps2'>
        <alias name='input1'/>
      </input>
      <audio id='1' type='none'/>
      <memballoon model='virtio'>
        <alias name='balloon0'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
      </memballoon>
    </devices>
    <seclabel type='dynamic' model='dac' relabel='yes'>
      <label>+64055:+64055</label>
      <imagelabel>+64055:+64055</imagelabel>
    </seclabel>
  </domain>
</domstatus>
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.xml"
    path.write_text(text)
    return path


def test_parse_real_status_file(tmp_path: Path) -> None:
    write(tmp_path, "nh-status-probe", REAL_STATUS)
    dom = libvirtstatus.status_of("nh-status-probe", str(tmp_path))
    assert dom is not None
    assert dom.name == "nh-status-probe"
    assert dom.uuid == "37458bd7-b570-4007-8934-5a9194048470"
    assert dom.pid == 7475
    assert dom.state == "running"
    assert dom.vcpu_tids == {0: 7482, 1: 7483}
    assert dom.pinned_cpus == frozenset({0, 1})
    assert dom.domain.tag == "domain"
    assert dom.domain.findtext("resource/partition") == "/machine"


def test_pinned_cpus_union(tmp_path: Path) -> None:
    text = REAL_STATUS.replace(
        "<emulatorpin cpuset='0-1'/>", "<emulatorpin cpuset='4'/>"
    ).replace("<iothreadpin iothread='1' cpuset='1'/>", "<iothreadpin iothread='1' cpuset='8-9'/>")
    dom = libvirtstatus.parse_status(text)
    assert dom.pinned_cpus == frozenset({0, 1, 4, 8, 9})


def test_status_without_pid_or_vcpus_yet() -> None:
    text = REAL_STATUS.replace(" pid='7475'", "")
    text = text[: text.index("  <vcpus>")] + text[text.index("</vcpus>") + len("</vcpus>") :]
    dom = libvirtstatus.parse_status(text)
    assert dom.pid is None
    assert dom.vcpu_tids == {}


def test_running_domains_skips_corrupt_and_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "good", REAL_STATUS)
    other = REAL_STATUS.replace("nh-status-probe</name>", "aaa</name>").replace(
        "37458bd7-b570-4007-8934-5a9194048470", "00000000-0000-0000-0000-000000000001"
    )
    write(tmp_path, "aaa", other)
    write(tmp_path, "torn", REAL_STATUS[: len(REAL_STATUS) // 2])
    write(tmp_path, "evil", '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><domstatus/>')
    write(tmp_path, "badpin", REAL_STATUS.replace("cpuset='0-1'", "cpuset='1-0'"))
    write(tmp_path, "nodom", "<domstatus state='running'/>")
    (tmp_path / "dir.xml").mkdir()
    (tmp_path / "notes.txt").write_text("ignored")
    doms = libvirtstatus.running_domains(str(tmp_path))
    assert [d.name for d in doms] == ["aaa", "nh-status-probe"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("torn", "evil", "badpin", "nodom", "dir"):
        assert f"{name}.xml" in warned


def test_running_domains_without_directory(tmp_path: Path) -> None:
    assert libvirtstatus.running_domains(str(tmp_path / "missing")) == []


def test_status_of_missing_and_bad_names(tmp_path: Path) -> None:
    assert libvirtstatus.status_of("nope", str(tmp_path)) is None
    for bad in ("../etc/passwd", "a/b"):
        with pytest.raises(InputError):
            libvirtstatus.status_of(bad, str(tmp_path))
    write(tmp_path, "torn", "<domstatus")
    with pytest.raises(InputError, match="not well-formed"):
        libvirtstatus.status_of("torn", str(tmp_path))


@pytest.mark.skipif(
    not os.access(libvirtstatus.DEFAULT_ROOT, os.R_OK), reason="no libvirt status directory"
)
def test_running_domains_on_this_host_does_not_fail() -> None:
    for dom in libvirtstatus.running_domains():
        assert dom.uuid and dom.name


def test_an_unchanged_status_file_is_parsed_once(tmp_path: Path) -> None:
    """numahookd lists the running domains several times per pass: parse only what changed."""
    one = tmp_path / "one.xml"
    one.write_text(REAL_STATUS)
    first = libvirtstatus.running_domains(str(tmp_path))
    assert libvirtstatus.running_domains(str(tmp_path))[0] is first[0]
    new = tmp_path / "one.new"  # as libvirt saves: a new file renamed over the old one
    new.write_text(REAL_STATUS.replace("pid='7483'", "pid='7484'"))
    os.replace(new, one)
    again = libvirtstatus.running_domains(str(tmp_path))
    assert again[0] is not first[0] and again[0].vcpu_tids[1] == 7484
    one.unlink()
    assert libvirtstatus.running_domains(str(tmp_path)) == []
    assert not [p for p in libvirtstatus._seen if p.startswith(str(tmp_path))]
