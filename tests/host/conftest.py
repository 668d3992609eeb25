"""The host VM lab's tests: numahook installed from its .deb on a multi-node systemd host.

Everything runs in the VM through the lab's contract, ``scripts/lab host exec -- CMD``
(lab/hostvm.py). The session brings the VM up (default shape) unless one already runs,
and takes it down again if it brought it up. As non-root, or without QEMU, every test is
skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import guest, report

REPO = Path(__file__).resolve().parents[2]
LAB = [str(REPO / "scripts" / "lab")]
INSIDE = (Path(__file__).parent / "inside.py").read_text()
#: Inner domains are named so; each test removes what it defined.
PREFIX = "nhhost-"
PROBE = ("/var/lib/numahook-lab/probe/vmlinuz", "/var/lib/numahook-lab/probe/initrd.img")
NAMESPACE = "https://numahook.io/xmlns/domain/1"
#: Memory of the small inner guests: the probe kernel does not boot in 64 MiB here
GUEST_MIB = 128
#: Inner guests' serial consoles, as in the first lab (lab/guest.py)
SERIAL_DIR = "/var/log/numahook-lab"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the host VM lab needs root (QEMU, mmdebstrap, the image cache)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (scripts/test installs it)"
    return None


class Host:
    """The VM, driven only through ``scripts/lab host exec``."""

    def sh(self, command: str, *, input: str | bytes | None = None, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess[str]:
        """``bash -c COMMAND`` as root in the VM; AssertionError with stderr on failure."""
        data = input.encode() if isinstance(input, str) else input
        try:
            proc = subprocess.run([*LAB, "host", "exec", "--", "bash", "-c", command],
                                  input=data if data is not None else b"", timeout=timeout,
                                  capture_output=True, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"in the VM, `{command}` ran over {timeout:.0f} s") from None
        out = subprocess.CompletedProcess(proc.args, proc.returncode,
                                          proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise AssertionError(f"in the VM, `{command}` exited {proc.returncode}:\n"
                                 f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return out

    def inside(self, *args: str) -> Any:
        """What tests/host/inside.py reports (the kernel's view, not numahook's)."""
        return json.loads(self.sh("python3 - " + " ".join(args), input=INSIDE).stdout)

    def json(self, command: str, **kw: Any) -> Any:
        return json.loads(self.sh(command, **kw).stdout)

    def unit(self, name: str = "numahookd") -> dict[str, str]:
        props = "ActiveState,SubState,StatusText,MainPID,NRestarts,Result"
        text = self.sh(f"systemctl show -p {props} {name}").stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def wait(self, pred: Any, what: str, timeout: float, every: float = 1.0) -> float:
        """Poll ``pred`` (bounded); return the seconds it took."""
        t0 = time.monotonic()
        while True:
            value = pred()
            if value:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def define(self, xml: str) -> None:
        self.sh("virsh -q define /dev/stdin >/dev/null", input=xml)

    def remove_domains(self) -> None:
        self.sh(f"for d in $(virsh -q list --all --name | grep '^{PREFIX}'); do "
                "virsh -q destroy $d >/dev/null 2>&1; virsh -q undefine $d >/dev/null; done",
                check=False)


@pytest.fixture(scope="session")
def host() -> Iterator[Host]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    status = json.loads(subprocess.run([*LAB, "host", "status"], capture_output=True,
                                       text=True, timeout=60, check=True).stdout)
    ours = status.get("state") != "running"
    if ours:
        subprocess.run([*LAB, "host", "up"], check=True, timeout=2400)
    elif status.get("shape") != "default":
        pytest.skip(f"a host lab VM of shape {status.get('shape')} runs; take it down first")
    h = Host()
    h.sh(f"install -d -m 755 {SERIAL_DIR}")
    # the .deb enabled and started it (test_enable.py); a test run before may not have left it so
    h.sh("systemctl enable --now numahookd")
    # RT throttling stays at Debian's 950000: on cgroup v2 numahook starts real-time
    # domains through libvirt's <vcpusched>, and the 5 % left keeps this VM's own sshd,
    # kworkers and libvirtd alive beside busy-booting FIFO guests on its only 4 CPUs
    yield h
    h.remove_domains()
    if ours:
        subprocess.run([*LAB, "host", "down"], check=True, timeout=120)


@pytest.fixture
def clean(host: Host) -> Iterator[Host]:
    """The host, with every inner domain this test defined removed afterwards."""
    yield host
    host.remove_domains()


def built_deb() -> Path:
    """The newest .deb in dist/, which ``scripts/lab host up`` built and installed."""
    debs = sorted(REPO.joinpath("dist").glob("numahook_*_all.deb"),
                  key=lambda p: p.stat().st_mtime)
    if not debs:
        pytest.skip("no .deb in dist/ (scripts/lab host up builds one)")
    return debs[-1]


def repack(deb: Path, tmp: Path, version: str) -> Path:
    """``deb`` as another version: an upgrade (or downgrade) of the same contents."""
    root = tmp / "root"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True, timeout=60)
    control = root / "DEBIAN" / "control"
    control.write_text("".join(f"Version: {version}\n" if ln.startswith("Version:") else ln
                               for ln in control.read_text().splitlines(True)))
    out = tmp / f"numahook_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zxz", str(root), str(out)], check=True, timeout=120,
                   capture_output=True)
    return out


def install(host: Host, deb: Path) -> str:
    """apt-get install ``deb`` in the VM, as an operator would; its output (the postinst's
    lines among it)."""
    host.sh(f"cat > /root/{deb.name}", input=deb.read_bytes())
    return host.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
                   f"-o Dpkg::Options::=--force-confold /root/{deb.name} 2>&1",
                   timeout=300).stdout


def metadata(realtime: str | None = "0", hugepages: bool = True) -> str:
    rt = f"<numahook:realtime mask='{realtime}'/>" if realtime is not None else ""
    return (f"<metadata><numahook:domain xmlns:numahook='{NAMESPACE}'>"
            "<numahook:cpu dedicatedCpuPlacement='true'>"
            f"<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>{rt}"
            "</numahook:cpu></numahook:domain></metadata>")


def domain_xml(name: str, vcpus: int, memory_mib: int, *, realtime: str | None = "0",
               hold: int = 0, page_kib: int = 2048) -> str:
    """A managed probe domain for the VM (TCG: the VM has no KVM)."""
    cmdline = f"numahook.hold={hold}" if hold else ""
    return guest.probe_domain_xml(
        name, vcpus=vcpus, memory_mib=memory_mib, kind="qemu", cmdline=cmdline,
        hugepage_kib=page_kib, extra=metadata(realtime), boot=PROBE,
        serial=f"{SERIAL_DIR}/{name}.serial")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The package's remove and purge go late: every other test needs it installed; the
    other shapes last, since each replaces the default VM (VFIO boots its iommu shape)."""
    last = {"test_enable": 1, "test_package": 1, "test_shapes": 2, "test_vfio": 2}
    items.sort(key=lambda item: last.get(item.module.__name__.rsplit(".", 1)[-1], 0)
               if item.module else 0)


def with_cpu_attrs(xml: str, **attrs: str) -> str:
    """``domain_xml``'s domain with more ``<numahook:cpu>`` attributes (isolateEmulatorThread,
    ioThreadsPolicy, ...)."""
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return xml.replace("dedicatedCpuPlacement='true'", "dedicatedCpuPlacement='true'" + extra, 1)


def threads_of(host: Host, name: str) -> dict[str, tuple[list[int], str]]:
    """QEMU's threads by ``comm`` (suffixed ``#tid`` when repeated): (affinity, policy),
    the policy without SCHED_RESET_ON_FORK."""
    out = host.json(
        f"python3 -c 'import json,os; pid=int(open(\"/run/libvirt/qemu/{name}.pid\").read()); "
        "print(json.dumps({t: [open(f\"/proc/{pid}/task/{t}/comm\").read().strip(), "
        "sorted(os.sched_getaffinity(int(t))), os.sched_getscheduler(int(t)) & ~0x40000000] "
        "for t in os.listdir(f\"/proc/{pid}/task\")}))'")
    named: dict[str, tuple[list[int], str]] = {}
    for tid, (comm, cpus, policy) in sorted(out.items()):
        key = comm if comm not in named else f"{comm}#{tid}"
        named[key] = (cpus, {0: "other", 1: "fifo", 2: "rr"}.get(policy, str(policy)))
    return named


def start_and_check_emulator(host: Host, name: str, xml: str,
                             iothreads: int = 0) -> dict[str, Any]:
    """Define and start ``xml``, then check the running domain against ``numahook check``:
    vCPU pins and FIFO, every emulator thread (and IO thread) on what check said, and the
    guest's cells as QEMU holds them. Returns check's JSON; the caller destroys it."""
    if iothreads:
        ids = "".join(f"<iothread id='{i}'/>" for i in range(1, iothreads + 1))
        xml = xml.replace("</vcpu>", f"</vcpu><iothreadids>{ids}</iothreadids>", 1)
    host.define(xml)
    host.wait(lambda: "<numa>" in host.sh(f"virsh dumpxml --inactive {name}").stdout,
              "numahookd to render the definition", 60)
    check = host.json(f"virsh dumpxml --inactive {name} | numahook check --json -")
    assert check["ok"], check
    host.sh(f"virsh -q start {name}")
    pins = check["pinning"]
    threads = threads_of(host, name)
    for v, cpu in pins["vcpus"].items():
        cpus, policy = threads[f"CPU {v}/TCG"]
        assert cpus == [cpu], (v, threads)
        assert policy == ("fifo" if int(v) in check["realtime_vcpus"] else "other"), threads
    emulator = {k: cpus for k, (cpus, _) in threads.items()
                if not k.startswith(("CPU ", "IO iothread"))}
    assert emulator and all(cpus == pins["emulator"] for cpus in emulator.values()), \
        (pins, threads)
    for io, cpus in pins["iothreads"].items():
        assert threads[f"IO iothread{io}"][0] == cpus, (pins, threads)
    numa = host.sh(f"virsh qemu-monitor-command --hmp {name} 'info numa'").stdout
    assert f"{len(check['cells'])} nodes" in numa
    for cell in check["cells"]:
        assert f"node {cell['id']} cpus: {' '.join(map(str, cell['vcpus']))}" in numa, numa
    status = host.json("numahook status --json")
    mine = next(d for d in status["running"] if d["name"] == name)
    assert report.parse_cpulist(mine["emulator_now"]) == set(pins["emulator"])
    return check
