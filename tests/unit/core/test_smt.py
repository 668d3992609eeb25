"""threadPolicy on fixture hosts: intel-2s-io (CPU N and N+40 are siblings), quad-nosmt-io.

Refusals are in test_hardware_refusals.py; here what each policy allocates, what the
rendered definition records, and that the held siblings stay out of other domains' reach.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.core import cpulist, domainxml, hardware, metadata, render
from numahook.host import libvirtstatus
from numahook.ops import hostinputs
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from numahook.xml import safe
from tests.fixtures.devices import domain, evaluate, host_config, render_xml


def core(cpu: int) -> int:
    """intel-2s-io's physical core of a CPU (siblings N and N+40)."""
    return cpu % 40


@pytest.fixture
def intel(tmp_path: Path):  # type: ignore[no-untyped-def]
    return host_config(tmp_path, "intel-2s-io")


def test_prefer_is_what_numahook_always_did(intel) -> None:  # type: ignore[no-untyped-def]
    """Explicit prefer renders the same pins as no attribute (whole cores, packed)."""
    plain = render_xml(intel, domain(passthrough=False)).plan
    prefer = render_xml(intel, domain(passthrough=False, cpu_attrs=" threadPolicy='prefer'")).plan
    assert plain.vcpu_pins == prefer.vcpu_pins == (0, 1, 40, 41)
    assert prefer.held == ()


def test_isolate_gives_each_vcpu_a_core_and_holds_the_siblings(intel) -> None:  # type: ignore[no-untyped-def]
    result = render_xml(intel, domain(passthrough=False, cpu_attrs=" threadPolicy='isolate'"))
    plan = result.plan
    assert len({core(c) for c in plan.vcpu_pins}) == 4
    assert set(plan.held) == {c + 40 for c in plan.vcpu_pins}
    assert plan.cpus == frozenset(plan.vcpu_pins) | frozenset(plan.held)
    assert set(plan.emulator) == set(plan.vcpu_pins)  # not isolated: floats over the vCPUs
    # the definition records the held siblings, for whoever counts CPUs from the XML
    root = safe.parse(result.xml)
    assert metadata.held_cpus(root) == frozenset(plan.held)
    mark = metadata.rendered(metadata.find(root))
    assert mark is not None and mark.held == cpulist.format(plan.held)
    # rendering the rendered definition keeps it all
    again = render_xml(intel, result.xml)
    assert again.xml == result.xml and again.plan.kept_pinning


def test_isolate_with_an_isolated_emulator_takes_a_whole_core(intel) -> None:  # type: ignore[no-untyped-def]
    plan = render_xml(intel, domain(passthrough=False, cpu_attrs=" threadPolicy='isolate' "
                                                                  "isolateEmulatorThread='true'")).plan
    assert len(plan.emulator) == 2 and core(plan.emulator[0]) == core(plan.emulator[1])
    assert core(plan.emulator[0]) not in {core(c) for c in plan.vcpu_pins}
    assert not set(plan.emulator) & set(plan.held)


def test_require_puts_guest_cores_on_sibling_pairs(intel) -> None:  # type: ignore[no-untyped-def]
    plan = render_xml(intel, domain(passthrough=False, threads=2,
                                    cpu_attrs=" threadPolicy='require' "
                                              "isolateEmulatorThread='true'")).plan
    for g in range(0, 4, 2):
        a, b = plan.vcpu_pins[g:g + 2]
        assert core(a) == core(b) and a != b
    assert len(plan.emulator) == 2 and core(plan.emulator[0]) == core(plan.emulator[1])
    assert plan.held == ()


def test_isolate_on_a_host_without_smt_is_prefer(tmp_path: Path) -> None:
    cfg = host_config(tmp_path, "quad-nosmt-io")
    ev = evaluate(cfg, domain(passthrough=False, cpu_attrs=" threadPolicy='isolate' "
                                                           "isolateEmulatorThread='true'"))
    assert ev.failed is None and ev.plan is not None
    assert ev.plan.held == () and len(ev.plan.emulator) == 1


def test_the_held_siblings_never_go_to_another_domain(intel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A's claim holds its idle siblings: B's allocation, from the same host, gets none."""
    a = render_xml(intel, domain(passthrough=False, vcpus=36,
                                 cpu_attrs=" threadPolicy='isolate'")).plan
    state = StateDir(intel.state_dir)
    state.ensure()
    state.save(Claim(uuid="5e1b1a5e-0000-4000-8000-0000000000aa", name="a", cpus=a.cpus))
    b_xml = domain(passthrough=False, vcpus=8, name="b").replace("f00d", "f00e")
    doc_b = render.parse(b_xml)
    inp, _ = hostinputs.gather(intel, None, doc_b.facts.uuid, state=state)
    assert not inp.available & set(a.held)
    b = hardware.evaluate(doc_b.facts, doc_b.request, inp).plan  # type: ignore[arg-type]
    assert b is not None and not set(b.vcpu_pins) & (set(a.vcpu_pins) | set(a.held))


def test_a_running_domain_without_a_claim_still_holds_its_siblings(intel) -> None:  # type: ignore[no-untyped-def]
    """libvirt's status XML carries the rendered metadata: its held CPUs count as pinned."""
    xml = render_xml(intel, domain(passthrough=False, cpu_attrs=" threadPolicy='isolate'")).xml
    plan = render_xml(intel, xml).plan
    status = (f"<domstatus state='running' reason='booted' pid='4242'><vcpus>"
              f"<vcpu id='0' pid='4243'/></vcpus>{xml.split('?>')[-1]}</domstatus>")
    st = libvirtstatus.parse_status(status)
    assert st.pinned_cpus == plan.cpus
    assert domainxml.read(safe.parse(xml)).vcpus == 4
