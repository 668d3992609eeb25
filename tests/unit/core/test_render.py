"""The renderer: what it changes and what it leaves alone.

Topologies are read from fixture sysfs trees. What the CLI prints of a rendering
(``numahook render`` and ``check``) is in tests/unit/test_cli.py.
"""

from __future__ import annotations

import difflib
import re

import pytest

from numahook import NAMESPACE, config
from numahook.core import cpulist, domainxml, hardware, render
from numahook.core.plan import Inputs
from numahook.core.topology import Topology
from numahook.errors import Refusal
from numahook.host import sysfs
from numahook.xml import safe
from tests.fixtures.hosts import HOSTS, build_sysfs
from tests.support.cli import RT, domain, only_requoted


@pytest.fixture(scope="module")
def topos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Topology]:
    base = tmp_path_factory.mktemp("hosts")
    return {n: sysfs.read_topology(build_sysfs(base / n, HOSTS[n]))
            for n in ("quad-nosmt", "single", "asym-cpuless", "epyc-nps4")}


def inputs(topo: Topology, available: str | frozenset[int] | None = None,
           vcpusched: bool = True) -> Inputs:
    if available is None:
        avail = frozenset(topo.cpus)
    elif isinstance(available, str):
        avail = cpulist.parse(available)
    else:
        avail = available
    return Inputs(topology=topo, available=avail, config=config.Config(),
                  emit_vcpusched=vcpusched)


def facts_of(xml: str) -> domainxml.DomainFacts:
    return domainxml.read(safe.parse(xml))


# --------------------------------------------------------------------------- leave alone

FULL = f"""<domain type='kvm'>
  <name>busy</name>
  <uuid>5e1b1a5e-0000-4000-8000-0000000000bb</uuid>
  <title>A domain with everything we do not own</title>
  <!-- hand-written notes stay where they are -->
  <metadata>
    <app:owner xmlns:app="urn:example:app">team-ran</app:owner>
    <numahook:domain xmlns:numahook="{NAMESPACE}">
      <numahook:cpu dedicatedCpuPlacement="true">
        <numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>
      </numahook:cpu>
    </numahook:domain>
    <other:thing xmlns:other="urn:other" a="1"><!-- theirs --></other:thing>
  </metadata>
  <memory unit='KiB'>8388608</memory>
  <currentMemory unit='KiB'>8388608</currentMemory>
  <memoryBacking>
    <hugepages>
      <page size='2048' unit='KiB'/>
    </hugepages>
  </memoryBacking>
  <vcpu placement='static'>4</vcpu>
  <cputune>
    <shares>2048</shares>
  </cputune>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'>
    <topology sockets='1' dies='1' cores='4' threads='1'/>
  </cpu>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native'/>
      <source file='/var/lib/libvirt/images/busy.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <!-- the NIC below is managed by someone else -->
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'/>
    </serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </memballoon>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'/>
</domain>
"""


def _block(xml: str, tag: str) -> str:
    m = re.search(rf"\n( *)<{tag}[ >].*?</{tag}>", xml, re.DOTALL)
    assert m, tag
    return m.group(0)


def test_unrelated_xml_is_left_alone(topos: dict[str, Topology]) -> None:
    out = render.render(FULL, inputs(topos["quad-nosmt"])).xml
    for tag in ("devices", "os", "clock", "features", "resource"):
        assert _block(FULL, tag) == _block(out, tag), tag
    for line in ("<!-- hand-written notes stay where they are -->",
                 "<title>A domain with everything we do not own</title>",
                 "<shares>2048</shares>",
                 "<seclabel type='dynamic' model='dac' relabel='yes'/>"):
        assert line in out, line
    # other applications' metadata keeps its content (quoting aside, see below)
    f = safe.parse(out).find("metadata")
    assert f is not None
    assert f.findtext("{urn:example:app}owner") == "team-ran"
    other = f.find("{urn:other}thing")
    assert other is not None and other.get("a") == "1" and len(other) == 1


def test_other_metadata_is_byte_identical(topos: dict[str, Topology]) -> None:
    out = render.render(FULL, inputs(topos["quad-nosmt"])).xml
    for line in ('<app:owner xmlns:app="urn:example:app">team-ran</app:owner>',
                 '<other:thing xmlns:other="urn:other" a="1"><!-- theirs --></other:thing>'):
        assert line in out, line


def _removed_and_added(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    removed = [ln[1:] for ln in diff if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:] for ln in diff if ln.startswith("+") and not ln.startswith("+++")]
    return removed, added


def test_diff_only_adds_and_replaces_what_numahook_owns(topos: dict[str, Topology]) -> None:
    out = render.render(FULL, inputs(topos["quad-nosmt"])).xml + "\n"
    removed, added = _removed_and_added(FULL, out)
    # the bare <page> gains a nodeset; nothing else of the source disappears, except
    # metadata lines whose attribute quotes changed
    changed = [ln for ln in removed if not only_requoted(ln, added)]
    assert changed == ["      <page size='2048' unit='KiB'/>"]
    assert len(added) - len(removed) >= 10


def test_rendered_output_keeps_the_source_quote_style(topos: dict[str, Topology]) -> None:
    out = render.render(FULL, inputs(topos["quad-nosmt"])).xml
    assert "<vcpupin vcpu='0' cpuset='" in out
    assert '<vcpupin vcpu="0"' not in out


# --------------------------------------------------------------------------- pinning


def test_existing_valid_pinning_is_kept_while_the_cpuset_shrinks(
        topos: dict[str, Topology]) -> None:
    topo = topos["quad-nosmt"]
    first = render.render(domain(), inputs(topo))
    assert not first.plan.kept_pinning
    held = first.plan.cpus
    for available in (frozenset(topo.cpus) - {31}, held | {20, 21}, held):
        again = render.render(first.xml, inputs(topo, available))
        assert again.plan.vcpu_pins == first.plan.vcpu_pins
        assert again.plan.kept_pinning
        assert again.xml == first.xml


def test_hand_written_valid_pinning_is_kept(topos: dict[str, Topology]) -> None:
    pins = ("<cputune>\n    <vcpupin vcpu='0' cpuset='4'/>\n    <vcpupin vcpu='1' cpuset='5'/>"
            "\n    <vcpupin vcpu='2' cpuset='6'/>\n    <vcpupin vcpu='3' cpuset='7'/>\n"
            "  </cputune>")
    res = render.render(domain(cputune=pins), inputs(topos["quad-nosmt"]))
    assert res.plan.vcpu_pins == (4, 5, 6, 7)
    assert res.plan.kept_pinning
    assert "(existing pinning kept)" in res.evaluation.checks[
        [c.name for c in res.evaluation.checks].index("dedicated-cpus")].reason


def _pins(*cpusets: str) -> str:
    return "<cputune>" + "".join(f"<vcpupin vcpu='{v}' cpuset='{c}'/>"
                                 for v, c in enumerate(cpusets)) + "</cputune>"


@pytest.mark.parametrize(("cputune", "available", "why"), [
    (_pins("0", "1", "2", "3"), "4-31", "pinned CPUs left the cpuset"),
    (_pins("0", "0", "1", "2"), None, "two vCPUs on one CPU"),
    (_pins("0-3", "0-3", "0-3", "0-3"), None, "ranges, not 1:1"),
    (_pins("8", "1", "2", "3"), None, "vCPU order does not follow host nodes"),
    (_pins("0", "1", "2"), None, "a vCPU is not pinned"),
    (_pins("0", "1", "2", "3", "4"), None, "a pin for a vCPU that does not exist"),
])
def test_invalid_pinning_is_replaced(topos: dict[str, Topology], cputune: str,
                                     available: str | None, why: str) -> None:
    topo = topos["quad-nosmt"]
    inp = inputs(topo, available)
    res = render.render(domain(cputune=cputune), inp)
    assert not res.plan.kept_pinning, why
    pins = res.plan.vcpu_pins
    assert len(set(pins)) == 4 and set(pins) <= inp.available
    assert facts_of(res.xml).vcpupin == {v: frozenset({c}) for v, c in enumerate(pins)}


def test_pinning_split_across_host_cores_is_replaced_for_guest_threads(
        topos: dict[str, Topology]) -> None:
    topo = topos["single"]  # cores (0,2) and (1,3)
    cpu = ("<cpu mode='host-passthrough'><topology sockets='1' dies='1' cores='2' "
           "threads='2'/></cpu>")
    res = render.render(domain(cpu=cpu, cputune=_pins("0", "1", "2", "3")), inputs(topo))
    assert not res.plan.kept_pinning
    assert {frozenset(res.plan.vcpu_pins[:2]), frozenset(res.plan.vcpu_pins[2:])} == {
        frozenset({0, 2}), frozenset({1, 3})}


def test_pinning_on_a_memoryless_node_is_replaced_for_passthrough(
        topos: dict[str, Topology]) -> None:
    topo = topos["asym-cpuless"]  # node 3 (CPUs 16-19) has no memory
    res = render.render(domain(cputune=_pins("16", "17", "18", "19")), inputs(topo))
    assert not res.plan.kept_pinning
    assert not set(res.plan.vcpu_pins) & {16, 17, 18, 19}


def test_isolated_emulator_is_kept_with_the_pinning(topos: dict[str, Topology]) -> None:
    topo = topos["quad-nosmt"]
    dom = domain('dedicatedCpuPlacement="true" isolateEmulatorThread="true"')
    first = render.render(dom, inputs(topo))
    assert len(first.plan.emulator) == 1
    again = render.render(first.xml, inputs(topo, first.plan.cpus))
    assert again.plan.emulator == first.plan.emulator
    assert again.xml == first.xml


# --------------------------------------------------------------------------- realtime


def test_vcpusched_only_when_libvirt_can_use_it(topos: dict[str, Topology]) -> None:
    topo = topos["quad-nosmt"]
    on = render.render(domain(realtime=RT), inputs(topo, vcpusched=True))
    assert facts_of(on.xml).vcpusched == ((frozenset({0, 2, 3}), "fifo", 1),)
    assert "<vcpusched vcpus='0,2-3' scheduler='fifo' priority='1'/>" in on.xml
    off = render.render(domain(realtime=RT), inputs(topo, vcpusched=False))
    assert facts_of(off.xml).vcpusched == ()
    assert "vcpusched" not in off.xml
    # moving a rendered domain to a host that needs RT group budget drops <vcpusched>
    moved = render.render(on.xml, inputs(topo, vcpusched=False))
    assert "vcpusched" not in moved.xml
    assert moved.plan.vcpu_pins == on.plan.vcpu_pins


def test_priority_is_written(topos: dict[str, Topology]) -> None:
    res = render.render(domain(realtime="<numahook:realtime priority='42'/>"),
                        inputs(topos["quad-nosmt"]))
    assert "<vcpusched vcpus='0-3' scheduler='fifo' priority='42'/>" in res.xml


def test_users_own_vcpusched_is_left_alone_without_realtime(
        topos: dict[str, Topology]) -> None:
    tune = "<cputune><vcpusched vcpus='0' scheduler='rr' priority='3'/></cputune>"
    res = render.render(domain(cputune=tune), inputs(topos["quad-nosmt"]))
    assert facts_of(res.xml).vcpusched == ((frozenset({0}), "rr", 3),)


def test_realtime_extras(topos: dict[str, Topology]) -> None:
    dom = domain(realtime=RT, devices="<serial type='pty'/>\n    <memballoon model='virtio'>"
                 "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>"
                 "</memballoon>")
    res = render.render(dom, inputs(topos["quad-nosmt"]))
    f = facts_of(res.xml)
    assert f.pmu_off and f.nosharepages and f.locked
    assert f.memballoon == "none"
    assert res.xml.count("<memballoon") == 1
    assert "<memballoon model='none'/>" in res.xml
    assert "bus='0x05'" not in res.xml
    assert "<pmu state='off'/>" in res.xml


def test_realtime_extras_added_when_absent_and_unchanged_when_present(
        topos: dict[str, Topology]) -> None:
    topo = topos["quad-nosmt"]
    res = render.render(domain(realtime=RT), inputs(topo))
    assert facts_of(res.xml).memballoon == "none"
    have = domain(realtime=RT, devices="<memballoon model='none'/>")
    res2 = render.render(have, inputs(topo))
    assert res2.xml.count("<memballoon") == 1


def test_no_realtime_extras_without_realtime(topos: dict[str, Topology]) -> None:
    res = render.render(domain(devices="<memballoon model='virtio'/>"),
                        inputs(topos["quad-nosmt"]))
    f = facts_of(res.xml)
    assert f.memballoon == "virtio"
    assert not (f.pmu_off or f.nosharepages or f.locked)


# --------------------------------------------------------------------------- IO threads


def test_iothreads_shared_policy_use_the_whole_emulator_set(topos: dict[str, Topology]) -> None:
    res = render.render(domain('dedicatedCpuPlacement="true" ioThreadsPolicy="shared"',
                               realtime="<numahook:realtime mask='0'/>",
                               iothreads="<iothreads>2</iothreads>"),
                        inputs(topos["quad-nosmt"]))
    emu = res.plan.emulator
    assert len(emu) == 3  # the non-real-time vCPUs' CPUs
    assert res.plan.iothread_pins == ((1, emu), (2, emu))
    assert facts_of(res.xml).iothreadpin == {1: frozenset(emu), 2: frozenset(emu)}


def test_iothreads_auto_policy_spread_over_a_multi_cpu_emulator_set(
        topos: dict[str, Topology]) -> None:
    res = render.render(domain('dedicatedCpuPlacement="true" ioThreadsPolicy="auto"',
                               realtime="<numahook:realtime mask='0'/>",
                               iothreads="<iothreads>4</iothreads>"),
                        inputs(topos["quad-nosmt"]))
    emu = res.plan.emulator
    assert len(emu) == 3
    assert res.plan.iothread_pins == ((1, (emu[0],)), (2, (emu[1],)), (3, (emu[2],)),
                                      (4, (emu[0],)))
    rt_cpu = res.plan.vcpu_pins[0]
    assert all(rt_cpu not in cpus for _, cpus in res.plan.iothread_pins)


def test_iothreads_auto_policy_share_an_isolated_emulator(topos: dict[str, Topology]) -> None:
    res = render.render(domain('dedicatedCpuPlacement="true" isolateEmulatorThread="true" '
                               'ioThreadsPolicy="auto"',
                               iothreads="<iothreadids><iothread id='3'/><iothread id='7'/>"
                                         "</iothreadids>"),
                        inputs(topos["quad-nosmt"]))
    (emu,) = res.plan.emulator
    assert emu not in res.plan.vcpu_pins
    assert res.plan.iothread_pins == ((3, (emu,)), (7, (emu,)))
    assert f"<iothreadpin iothread='7' cpuset='{emu}'/>" in res.xml


def test_emulator_floats_over_non_realtime_vcpus(topos: dict[str, Topology]) -> None:
    res = render.render(domain(realtime=RT), inputs(topos["quad-nosmt"]))
    assert set(res.plan.emulator) == {res.plan.vcpu_pins[1]}


# --------------------------------------------------------------------------- differences


def test_differences_detect_a_changed_cpuset(topos: dict[str, Topology]) -> None:
    topo = topos["quad-nosmt"]
    first = render.render(domain(), inputs(topo, "0-7"))
    assert first.plan.vcpu_pins == (0, 1, 2, 3)
    doc = render.parse(first.xml)
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inputs(topo, "4-7"))
    assert ev.plan is not None and ev.plan.vcpu_pins == (4, 5, 6, 7)
    diffs = hardware.differences(doc.facts, ev.plan)
    assert diffs
    first_diff = diffs[0]
    assert first_diff.startswith("vCPU 0 ")
    assert "CPU 0" in first_diff and "CPU 4" in first_diff
    assert any("emulator" in d for d in diffs)
    assert all("\n" not in d for d in diffs)


def test_differences_name_cells_spanning_more_nodes(topos: dict[str, Topology]) -> None:
    topo = topos["quad-nosmt"]
    first = render.render(domain(), inputs(topo, "0-7"))
    doc = render.parse(first.xml)
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inputs(topo, "6-9"))
    assert ev.plan is not None
    diffs = hardware.differences(doc.facts, ev.plan)
    assert "the guest has 1 NUMA cell, but its CPUs now span 2 host nodes (0, 1)" in diffs
    assert "the strict memory binding of the cells to host nodes differs" in diffs


def test_differences_of_an_unrendered_domain(topos: dict[str, Topology]) -> None:
    doc = render.parse(domain())
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inputs(topos["quad-nosmt"]))
    assert ev.plan is not None
    diffs = hardware.differences(doc.facts, ev.plan)
    assert diffs[0].startswith("vCPU 0 ")
    assert "not pinned" in diffs[0] or "unpinned" in diffs[0]
    assert "CPU 0" in diffs[0]
    assert any("NUMA cells" in d for d in diffs)


def test_differences_tolerate_a_missing_vcpusched(topos: dict[str, Topology]) -> None:
    topo = topos["quad-nosmt"]
    on = render.render(domain(realtime=RT), inputs(topo, vcpusched=True))
    assert on.plan.vcpusched
    stripped = re.sub(r"\n *<vcpusched [^>]*/>", "", on.xml)
    assert "vcpusched" not in stripped
    assert hardware.differences(facts_of(stripped), on.plan) == []
    # the reverse is stale: a node that needs an RT group budget cannot use <vcpusched>
    off = render.render(domain(realtime=RT), inputs(topo, vcpusched=False))
    assert hardware.differences(facts_of(on.xml), off.plan) == [
        "the <vcpusched> real-time settings differ from what this node needs"]
    # and a wrong priority is stale as well
    wrong = on.xml.replace("priority='1'", "priority='9'")
    assert hardware.differences(facts_of(wrong), on.plan) == [
        "the <vcpusched> real-time settings differ from what this node needs"]


def test_differences_empty_for_a_fresh_rendering(topos: dict[str, Topology]) -> None:
    for dom in (domain(), domain(realtime=RT),
                domain('dedicatedCpuPlacement="true" isolateEmulatorThread="true"',
                       numa=False)):
        res = render.render(dom, inputs(topos["epyc-nps4"]))
        assert hardware.differences(facts_of(res.xml), res.plan) == []


def test_refusal_is_raised_not_rendered(topos: dict[str, Topology]) -> None:
    with pytest.raises(Refusal) as exc:
        render.render(domain(vcpus=5), inputs(topos["single"]))
    assert exc.value.check == "dedicated-cpus"
