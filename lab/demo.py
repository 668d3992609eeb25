"""The README's demo: render the reference's ``numavm`` for this host, boot it, and show what
the guest itself reports beside what was rendered.

The example file is never changed. The demo writes a sized copy to
``/var/lib/numahook-lab/demo/`` and says what it changed and why.
"""

from __future__ import annotations

import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import REPO, WORK_DIR, LabError, daemons, env, guest, record, run, say
from lab import report as rep

EXAMPLE = REPO / "examples" / "numavm.xml"
NS = "https://numahook.io/xmlns/domain/1"
#: The probe's Debian cloud kernel panics ("System is deadlocked on memory") below ~80 MiB.
PROBE_MIN_MIB = 128
#: How long the guest waits after its report, so that the host side can be looked at while
#: it runs. The demo destroys it as soon as it has looked.
HOLD_S = 300


@dataclass
class Sizing:
    """What the demo changed in its copy of the example, each with the reason."""

    notes: list[str] = field(default_factory=list)


def host_cpuset(partition: str = "/machine") -> tuple[frozenset[int], str]:
    """The CPUs of libvirt's partition cpuset (or of its parent before libvirt made it)."""
    base = Path("/sys/fs/cgroup/cpuset")
    if not base.is_dir():  # cgroup v2
        base = Path("/sys/fs/cgroup")
        part = base / (partition.strip("/") + ".slice" if partition == "/machine" else partition)
    else:
        part = base / partition.strip("/")
    for d in (part, base):
        f = d / "cpuset.cpus.effective"
        if not f.exists():
            f = d / "cpuset.effective_cpus"
        if f.exists():
            cpus = rep.parse_cpulist(f.read_text())
            if d == part:
                return cpus, str(f)
            return cpus, f"{f} (libvirt's {partition} partition does not exist yet and inherits it)"
    raise LabError("no cpuset controller found under /sys/fs/cgroup")


def _vcpus(root: ET.Element) -> int:
    return int((root.findtext("vcpu") or "1").strip())


def _isolate(root: ET.Element) -> bool:
    cpu = root.find(f"./metadata/{{{NS}}}domain/{{{NS}}}cpu")
    return cpu is not None and cpu.get("isolateEmulatorThread") == "true"


def size_to_host(xml_text: str, cpus: int) -> tuple[str, Sizing]:
    """Fit the example's vCPUs and memory to this host and to the probe, saying so."""
    ET.register_namespace("numahook", NS)
    root = ET.fromstring(xml_text, ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    name = root.findtext("name") or "numavm"
    sizing = Sizing()
    want = _vcpus(root)
    isolate = _isolate(root)
    room = cpus - (1 if isolate else 0)
    if room < 1:
        raise LabError(f"this host's cpuset has {cpus} CPUs: no room for {name}'s vCPUs")
    if want > room:
        vcpu = root.find("vcpu")
        assert vcpu is not None
        vcpu.text = str(room)
        topo = root.find("./cpu/topology")
        if topo is not None:
            for attr in ("sockets", "dies", "threads"):
                if topo.get(attr) is not None:
                    topo.set(attr, "1")
            topo.set("cores", str(room))
        extra = " plus one for the emulator thread" if isolate else ""
        sizing.notes.append(
            f"the reference asks for {want} dedicated cores{extra}; this host's cpuset has "
            f"{cpus} CPUs, so the demo runs {name} with {room} vCPUs"
        )
    mem = root.find("memory")
    if mem is not None:
        kib = rep.to_kib(mem.text or "0", mem.get("unit"))
        if kib < PROBE_MIN_MIB * 1024:
            mem.text = str(PROBE_MIN_MIB)
            mem.set("unit", "MiB")
            for cur in root.findall("currentMemory"):
                root.remove(cur)
            sizing.notes.append(
                f"the reference gives {name} {kib // 1024} MiB; the lab's guest kernel (Debian "
                f"cloud) does not boot in less than about 80 MiB, so the demo gives it "
                f"{PROBE_MIN_MIB} MiB"
            )
    if sizing.notes:
        text = "\n".join(f"  - {n}" for n in sizing.notes)
        root.insert(0, ET.Comment(f" scripts/lab demo changed this copy of the example:\n{text}\n"))
    return ET.tostring(root, encoding="unicode"), sizing


def _numahook() -> str:
    exe = shutil.which("numahook", path="/usr/local/bin:/usr/bin")
    if exe is None:
        raise LabError(
            "the numahook command is not installed (scripts/lab up installs it from the "
            "checkout); without it the demo cannot render the domain"
        )
    return exe


def render(path: Path, cpuset: frozenset[int]) -> str:
    """``numahook render --cpuset CPUSET FILE``: the rendered domain XML."""
    proc = run([_numahook(), "render", "--cpuset", rep.format_cpulist(cpuset), str(path)],
               check=False)  # fmt: skip
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise LabError(f"numahook render refused {path.name}: {msg}")
    return proc.stdout


def _fmt_cpus(cpus: frozenset[int] | None) -> str:
    return rep.format_cpulist(cpus) if cpus else "-"


def print_report(
    name: str,
    cpuset: frozenset[int],
    cpuset_src: str,
    cells: list[rep.Cell],
    report: rep.GuestReport,
    view: guest.HostView,
    problems: list[str],
    kind: str = "qemu",
) -> None:
    """The table a person reads at the end of the demo."""
    w = print
    w("")
    w(f"== numahook lab: {name} ==")
    if kind == "qemu":
        w("domain type        qemu (TCG): under nested KVM a guest kernel cannot boot here")
    else:
        w(f"domain type        {kind}")
    w(f"host CPU set       {_fmt_cpus(cpuset)}   from {cpuset_src}")
    pins = ", ".join(f"vCPU{v}->{_fmt_cpus(c)}" for v, c in sorted(view.vcpupin.items()))
    w(f"vCPU pinning       {pins or 'none in the live XML'}")
    w(
        f"emulator           <emulatorpin> {_fmt_cpus(view.emulatorpin)}; QEMU main thread "
        f"affinity {_fmt_cpus(view.emulator_affinity)}"
    )
    w("")
    w("vCPU threads (host kernel's view)")
    w(f"  {'vCPU':<5} {'tid':<8} {'affinity':<10} {'policy':<12} priority")
    for t in view.threads:
        w(f"  {t.vcpu:<5} {t.tid:<8} {_fmt_cpus(t.affinity):<10} {t.policy:<12} {t.priority}")
    if not view.threads:
        w("  (no vCPU threads found)")
    w("")
    w("guest NUMA cells: rendered (domain XML)   |  the guest's own view (its sysfs)")
    w(
        f"  {'cell':<5} {'host node':<10} {'cpus':<6} {'memory KiB':<11}|  {'node':<5} {'cpus':<6} "
        f"{'present KiB':<12} {'MemTotal KiB':<13}"
    )
    ids = sorted({c.id for c in cells} | set(report.nodes))
    by_id = {c.id: c for c in cells}
    for i in ids:
        c = by_id.get(i)
        n = report.nodes.get(i)
        left = (
            f"  {c.id:<5} {c.host_nodes or '-':<10} {_fmt_cpus(c.cpus):<6} {c.memory_kib:<11}"
            if c
            else f"  {'-':<5} {'':<10} {'':<6} {'':<11}"
        )
        right = (
            f"|  {n.id:<5} {_fmt_cpus(n.cpus):<6} {n.present_kib or '?'!s:<12} {n.memtotal_kib:<13}"
            if n
            else "|  (the guest has no such node)"
        )
        w(left + right)
    w(f"  guest kernel {report.kernel}; CPUs online {_fmt_cpus(report.cpus_online)}")
    w("")
    w("hugepages per host node (while the guest ran)")
    for node, sizes in sorted(view.hugepages.items()):
        parts = [f"{sz} KiB: {n} reserved, {free} free" for sz, (n, free) in sorted(sizes.items())]
        w(f"  node{node}  " + "; ".join(parts))
    if report.latency is not None:
        lat = report.latency
        w("")
        w(f"timer latency in the guest (cyclictest, {lat.duration_s} s, exit {lat.exit_code})")
        for i, mx in enumerate(lat.max_us):
            mn = lat.min_us[i] if i < len(lat.min_us) else "?"
            avg = lat.avg_us[i] if i < len(lat.avg_us) else "?"
            w(f"  vCPU{i}: min {mn} us, avg {avg} us, max {mx} us")
        for line in lat.stderr:
            w(f"  cyclictest: {line}")
    w("")
    if problems:
        w("RESULT: MISMATCH between the guest's own view and the rendering:")
        for p in problems:
            w(f"  - {p}")
    else:
        w("RESULT: the guest's own NUMA view matches the rendered cells")


def run_demo(
    example: Path = EXAMPLE, *, do_render: bool = True, latency: int = 0, keep: bool = False
) -> int:
    """Bring the lab up, run ``example`` sized to this host, print the report.

    Returns 0 when the guest's view matches the rendering, 1 when it does not.
    """
    env.up("cli")
    conn = daemons.connect()
    try:
        return _demo(conn, example, do_render=do_render, latency=latency, keep=keep)
    finally:
        conn.close()


def _demo(conn: Any, example: Path, *, do_render: bool, latency: int, keep: bool) -> int:
    say(guest.TCG_NOTE)
    original = example.read_text()
    name = ET.fromstring(original).findtext("name") or "numavm"
    cpuset, cpuset_src = host_cpuset()
    say("host CPU set for %s: %s (%s)", name, rep.format_cpulist(cpuset), cpuset_src)
    sized, sizing = size_to_host(original, len(cpuset))
    for note in sizing.notes:
        say(note)
    cmdline = f"numahook.hold={HOLD_S}" + (f" numahook.latency={latency}" if latency else "")
    adapted = guest.adapt(sized, cmdline=cmdline)
    workdir = WORK_DIR / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    work = workdir / f"{name}.xml"
    work.write_text(adapted)
    say("wrote the sized copy to %s (%s is unchanged)", work, example)
    if do_render:
        rendered = render(work, cpuset)
        rendered_path = workdir / f"{name}.rendered.xml"
        rendered_path.write_text(rendered)
        say("numahook render --cpuset %s: %s", rep.format_cpulist(cpuset), rendered_path)
    else:
        rendered, rendered_path = adapted, work
        say("not rendering (--no-render): %s runs as written", name)
    valid = run(["virt-xml-validate", str(rendered_path), "domain"], check=False)
    if valid.returncode != 0:
        say("warning: virt-xml-validate rejects %s: %s", rendered_path, valid.stderr.strip())
    cells = rep.rendered_cells(rendered)
    if NS in rendered:
        why = env.hook_usable()
        if why is not None:
            raise LabError(
                f"{name} opts in to numahook but {why}; libvirt would refuse to start it"
            )

    _clear_old(conn, name)
    dom = guest.define(conn, rendered)
    try:
        t0 = time.monotonic()
        guest.start(dom)
        say("started %s; waiting for the guest's report (at most %.0f s)", name,
            guest.BOOT_TIMEOUT + latency)  # fmt: skip
        text = guest.wait_for_report(
            dom, until_off=False, latency=bool(latency), timeout=guest.BOOT_TIMEOUT + latency
        )
        say("the guest reported after %.1f s", time.monotonic() - t0)
        view = guest.host_view(dom) if dom.isActive() else guest.HostView()
        live_cells = rep.rendered_cells(dom.XMLDesc(0))
        report = rep.parse(text)
    finally:
        if not keep:
            guest.remove(conn, name)
            say("destroyed and undefined %s", name)
    problems = rep.compare(report, cells, int(ET.fromstring(rendered).findtext("vcpu") or 1))
    if live_cells != cells:
        problems.append("the running domain's cells differ from the rendered XML (redefined?)")
    kind = ET.fromstring(rendered).get("type", "")
    print_report(name, cpuset, cpuset_src, cells, report, view, problems, kind)
    return 1 if problems else 0


def _clear_old(conn: Any, name: str) -> None:
    """Remove a previous run's domain; refuse to touch a same-named domain that is not ours."""
    import libvirt

    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    state = record.load() or {}
    if name not in state.get("domains", []):
        raise LabError(
            f"a domain named {name} exists and the lab did not define it; "
            f"remove it (virsh undefine {name}) or run the demo elsewhere"
        )
    guest.remove(conn, name)
    say("removed %s left by an earlier run", name)

