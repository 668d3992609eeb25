"""Probe domains: build their XML, define and start them, wait for the guest's report, and
look at the host side (pinning, vCPU threads' scheduling, hugepages) while they run.

Guests run under TCG (``type='qemu'``): on these nested-KVM machines a guest kernel dies
under KVM ("emulation failure"), while TCG boots the probe in a few seconds.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import LOG_DIR, LabError, env, say
from lab import report as rep
from lab.probe import probe_dir

BOOT_TIMEOUT = 120.0
TCG_NOTE = (
    "guests run under TCG (type='qemu'): under nested KVM a guest kernel cannot boot on "
    "this machine, so vCPU threads are QEMU's 'CPU n/TCG' threads"
)
_POLICIES = {
    os.SCHED_OTHER: "SCHED_OTHER",
    os.SCHED_FIFO: "SCHED_FIFO",
    os.SCHED_RR: "SCHED_RR",
    getattr(os, "SCHED_BATCH", 3): "SCHED_BATCH",
    getattr(os, "SCHED_IDLE", 5): "SCHED_IDLE",
    6: "SCHED_DEADLINE",
}


def serial_path(name: str) -> Path:
    """The file a lab domain's serial console is written to."""
    return LOG_DIR / f"{name}.serial"


def probe_paths() -> tuple[Path, Path]:
    """(kernel, initrd) at their stable paths; LabError when the probe was never built."""
    kernel, initrd = probe_dir() / "vmlinuz", probe_dir() / "initrd.img"
    if not (kernel.exists() and initrd.exists()):
        raise LabError(f"the guest probe is not built in {probe_dir()}: run scripts/lab up")
    return kernel, initrd


def probe_domain_xml(
    name: str,
    *,
    vcpus: int = 2,
    memory_mib: int = 128,
    cells: Sequence[tuple[str, int]] | None = None,
    kind: str = "qemu",
    cmdline: str = "",
    hugepage_kib: int | None = None,
    extra: str = "",
    boot: tuple[str, str] | None = None,
    serial: str | None = None,
    machine: str = "pc",
    devices: str = "",
) -> str:
    """XML of a probe domain: direct kernel boot, serial console to a file, no disks.

    ``cells`` is ``[(cpus, memory MiB), ...]`` for a guest ``<cpu><numa>``; memory is then
    their sum. ``extra`` is inserted into ``<domain>`` as is (metadata, cputune, ...),
    ``devices`` into ``<devices>`` (controllers, host devices, ...).
    ``boot`` (kernel, initrd) and ``serial`` are paths on the host that runs the domain,
    for the host VM lab; by default this machine's probe and serial log.
    """
    kernel, initrd = boot or probe_paths()
    console = serial or serial_path(name)
    if cells:
        memory_mib = sum(m for _, m in cells)
        numa = "<numa>" + "".join(
            f"<cell id='{i}' cpus='{c}' memory='{m}' unit='MiB'/>" for i, (c, m) in enumerate(cells)
        ) + "</numa>"  # fmt: skip
    else:
        numa = ""
    backing = (
        f"<memoryBacking><hugepages><page size='{hugepage_kib}' unit='KiB'/></hugepages>"
        "</memoryBacking>"
        if hugepage_kib
        else ""
    )
    return f"""<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu placement='static'>{vcpus}</vcpu>
  {backing}
  {extra}
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet {cmdline}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <cpu>
    <topology sockets='1' dies='1' cores='{vcpus}' threads='1'/>
    {numa}
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{console}'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
    {devices}
  </devices>
</domain>
"""


def adapt(xml_text: str, *, name: str | None = None, cmdline: str = "") -> str:
    """Point a domain (e.g. an example) at this lab: probe paths, serial file, cmdline extras.

    Returns new XML; the input is never written back anywhere.
    """
    from lxml import etree

    root = etree.fromstring(xml_text.encode(), etree.XMLParser(remove_blank_text=False))
    if name:
        root.find("name").text = name
    name = root.findtext("name")
    if not name:
        raise LabError("the domain has no <name>")
    kernel, initrd = probe_paths()
    os_el = root.find("os")
    if os_el is None:
        raise LabError(f"domain {name} has no <os> element")
    for tag, path in (("kernel", kernel), ("initrd", initrd)):
        el = os_el.find(tag)
        if el is None:
            el = etree.SubElement(os_el, tag)
        el.text = str(path)
    cl = os_el.find("cmdline")
    if cl is None:
        cl = etree.SubElement(os_el, "cmdline")
        cl.text = "console=ttyS0 quiet"
    if cmdline:
        cl.text = f"{(cl.text or '').strip()} {cmdline}".strip()
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    for tag in ("serial", "console"):
        for el in devices.findall(tag):
            if el.get("type") == "file":
                src = el.find("source")
                if src is None:
                    src = etree.SubElement(el, "source")
                src.set("path", str(serial_path(name)))
    if devices.find("serial") is None:
        serial = etree.SubElement(devices, "serial", type="file")
        etree.SubElement(serial, "source", path=str(serial_path(name)))
        etree.SubElement(serial, "target", port="0")
    return etree.tostring(root, encoding="unicode")


def define(conn: Any, xml_text: str) -> Any:
    """Define a domain, recorded so that ``scripts/lab down`` removes it whatever happens."""
    import libvirt

    name = ET.fromstring(xml_text).findtext("name") or ""
    env.record_domain(name)
    try:
        return conn.defineXML(xml_text)
    except libvirt.libvirtError as exc:
        env.forget_domain(name)
        raise LabError(f"libvirt refused to define {name}: {exc}") from None


def start(dom: Any) -> None:
    """Start a defined domain with a fresh serial log."""
    import libvirt

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.chmod(0o755)
    serial_path(dom.name()).unlink(missing_ok=True)
    try:
        dom.create()
    except libvirt.libvirtError as exc:
        raise LabError(f"domain {dom.name()} did not start: {exc}") from None


def remove(conn: Any, name: str) -> None:
    """Destroy (if running) and undefine ``name``; quiet when it is already gone."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        env.forget_domain(name)
        return
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        if dom.isActive():
            raise LabError(f"cannot destroy {name}: {exc}") from None
    if dom.isPersistent():
        dom.undefine()
    env.forget_domain(name)


def _console(name: str) -> str:
    try:
        return serial_path(name).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_report(
    dom: Any, *, until_off: bool = True, latency: bool = False, timeout: float = BOOT_TIMEOUT
) -> str:
    """Wait (bounded) for the guest's report; return the console text.

    ``until_off``: wait until the guest powered itself off (the whole log). Otherwise
    return as soon as the report (and the latency block, when ``latency``) is complete,
    with the guest still running.
    """
    name = dom.name()
    deadline = time.monotonic() + timeout
    want = [f"{rep.REPORT}-END"] + ([f"{rep.LATENCY}-END"] if latency else [])
    while True:
        text = _console(name)
        active = dom.isActive()
        if not active:
            return _console(name)
        if not until_off and all(w in text for w in want):
            return text
        if time.monotonic() > deadline:
            tail = " / ".join(text.strip().splitlines()[-5:]) or "(empty)"
            raise LabError(
                f"domain {name} gave no complete report within {timeout:.0f} s; "
                f"console {serial_path(name)} ends with: {tail}"
            )
        time.sleep(0.2)


def boot(conn: Any, xml_text: str, *, timeout: float = BOOT_TIMEOUT) -> rep.GuestReport:
    """Define and start a probe domain, wait until it powers off, and parse its report.

    The domain stays defined; the caller removes it (the ``domains`` fixture does).
    """
    dom = define(conn, xml_text)
    t0 = time.monotonic()
    start(dom)
    text = wait_for_report(dom, until_off=True, timeout=timeout)
    say("domain %s: guest reported and powered off in %.1f s", dom.name(), time.monotonic() - t0)
    try:
        return rep.parse(text)
    except rep.ReportError as exc:
        where = serial_path(dom.name())
        raise rep.ReportError(f"domain {dom.name()}: {exc} (console: {where})") from None


# --- the host's view of a running domain ------------------------------------------------


@dataclass(frozen=True)
class VcpuThread:
    """One vCPU thread of a running domain, as the host kernel sees it."""

    vcpu: int
    tid: int
    affinity: frozenset[int]
    policy: str
    priority: int


@dataclass
class HostView:
    """What the host shows for a running domain."""

    vcpupin: dict[int, frozenset[int]] = field(default_factory=dict)
    emulatorpin: frozenset[int] | None = None
    emulator_affinity: frozenset[int] | None = None
    threads: list[VcpuThread] = field(default_factory=list)
    #: host node -> page size KiB -> (nr_hugepages, free_hugepages)
    hugepages: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    numatune: dict[int, str] = field(default_factory=dict)


def hugepages_by_node() -> dict[int, dict[int, tuple[int, int]]]:
    """Host hugepages per node and size: (nr_hugepages, free_hugepages)."""
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for d in sorted(Path("/sys/devices/system/node").glob("node[0-9]*/hugepages/hugepages-*kB")):
        node = int(d.parent.parent.name[4:])
        size = int(d.name.split("-")[1][:-2])
        nr = int((d / "nr_hugepages").read_text())
        free = int((d / "free_hugepages").read_text())
        out.setdefault(node, {})[size] = (nr, free)
    return out


def _thread_info(tid: int, vcpu: int) -> VcpuThread | None:
    try:
        policy = (os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK)
        prio = os.sched_getparam(tid).sched_priority
        aff = frozenset(os.sched_getaffinity(tid))
    except OSError:
        return None
    return VcpuThread(vcpu, tid, aff, _POLICIES.get(policy, str(policy)), prio)


def vcpu_threads(name: str) -> tuple[int | None, dict[int, int]]:
    """(QEMU pid, vCPU id -> thread id) from libvirt's status XML, else from /proc."""
    status = Path(f"/run/libvirt/qemu/{name}.xml")
    pid: int | None = None
    tids: dict[int, int] = {}
    try:
        root = ET.parse(status).getroot()
        pid = int(root.get("pid", "0")) or None
        for v in root.findall("./vcpus/vcpu"):
            if v.get("pid"):
                tids[int(v.get("id", "-1"))] = int(v.get("pid", "0"))
    except (OSError, ET.ParseError, ValueError):
        pass
    if pid is None:
        text = Path(f"/run/libvirt/qemu/{name}.pid")
        if text.exists() and text.read_text().strip().isdigit():
            pid = int(text.read_text().strip())
    if pid and not tids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                comm = (task / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("CPU ") and "/" in comm:
                tids[int(comm.split()[1].split("/")[0])] = int(task.name)
    return pid, tids


def host_view(dom: Any) -> HostView:
    """Pinning from the live XML, and the real affinity/scheduling of each vCPU thread."""
    root = ET.fromstring(dom.XMLDesc(0))
    view = HostView()
    for pin in root.findall("./cputune/vcpupin"):
        view.vcpupin[int(pin.get("vcpu", "-1"))] = rep.parse_cpulist(pin.get("cpuset", ""))
    emu = root.find("./cputune/emulatorpin")
    if emu is not None:
        view.emulatorpin = rep.parse_cpulist(emu.get("cpuset", ""))
    for m in root.findall("./numatune/memnode"):
        view.numatune[int(m.get("cellid", "-1"))] = m.get("nodeset", "")
    pid, tids = vcpu_threads(dom.name())
    if pid:
        try:
            view.emulator_affinity = frozenset(os.sched_getaffinity(pid))
        except OSError:
            view.emulator_affinity = None
    for vcpu, tid in sorted(tids.items()):
        info = _thread_info(tid, vcpu)
        if info is not None:
            view.threads.append(info)
    view.hugepages = hugepages_by_node()
    return view
