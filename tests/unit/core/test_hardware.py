"""Hugepages without guestMappingPassthrough (issue 25, item 2): like Nova's implicit
one-cell topology, the dedicated CPUs on one host node, all memory bound strict there,
and the plan says how many pages of which size that node must give."""

from __future__ import annotations

import pytest

from numahook import config, records
from numahook.core import cpulist, domainxml, hardware, render
from numahook.core.plan import Inputs, Plan
from numahook.core.topology import Topology
from numahook.host import sysfs
from numahook.xml import safe
from tests.fixtures.hosts import HOSTS, build_sysfs
from tests.support.cli import domain

#: intel-2s-ht: node 0 is CPUs 0-19 and their siblings 40-59, node 1 is 20-39 and 60-79
NODE0 = frozenset(range(0, 20)) | frozenset(range(40, 60))
NODE1 = frozenset(range(20, 40)) | frozenset(range(60, 80))
MEMORY = "<memory unit='GiB'>2</memory>"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    return sysfs.read_topology(build_sysfs(tmp_path_factory.mktemp("intel"),
                                           HOSTS["intel-2s-ht"]))


def inputs(topo: Topology, available: frozenset[int] | str) -> Inputs:
    cpus = cpulist.parse(available) if isinstance(available, str) else available
    return Inputs(topology=topo, available=cpus, config=config.parse("", "/dev/null"))


def bound(isolate: bool = False, vcpus: int = 4, memory: str = MEMORY,
          cputune: str = "") -> str:
    """A dedicated domain on 2 MiB pages without passthrough."""
    attrs = 'dedicatedCpuPlacement="true"' + (' isolateEmulatorThread="true"' if isolate else "")
    return domain(attrs, numa=False, vcpus=vcpus, memory=memory, cputune=cputune,
                  backing="<memoryBacking><hugepages><page size='2048' unit='KiB'/>"
                          "</hugepages></memoryBacking>")


def plan_of(xml: str, inp: Inputs) -> Plan:
    return render.render(xml, inp).plan


def facts(xml: str) -> domainxml.DomainFacts:
    return domainxml.read(safe.parse(xml))


def test_all_cpus_and_memory_on_one_node_with_its_pages(topo: Topology) -> None:
    result = render.render(bound(isolate=True), inputs(topo, NODE0 | NODE1))
    plan = result.plan
    nodes = topo.nodes_of(plan.cpus)
    assert nodes == [plan.memory_node]
    assert plan.page_kib == 2048 and plan.memory_pages == 1024 and plan.cells == ()
    assert plan.page_need == {(plan.memory_node, 2048): 1024}
    out = facts(result.xml)
    assert out.numatune_memory == ("strict", frozenset({plan.memory_node}))
    assert out.memnodes == {} and out.cells == ()  # no guest NUMA: the guest sees one node
    assert hardware.differences(out, plan) == []


def test_isolated_emulator_goes_where_the_vcpus_are_when_the_usual_choice_spans(
        topo: Topology) -> None:
    """vCPUs kept on the 4 CPUs still free on node 0 leave the isolated emulator to node 1,
    where QEMU could not place its preallocation thread for memory bound to node 0
    (issue 25, item 1): bound, the whole domain moves to node 1."""
    avail = frozenset({0, 1, 2, 3, 20, 21, 22, 23, 24})
    pins = "".join(f"<vcpupin vcpu='{v}' cpuset='{v}'/>" for v in range(4))
    attrs = 'dedicatedCpuPlacement="true" isolateEmulatorThread="true"'
    plain = plan_of(domain(attrs, numa=False, backing="", cputune=f"<cputune>{pins}</cputune>"),
                    inputs(topo, avail))
    assert plain.kept_pinning and topo.nodes_of(plain.cpus) == [0, 1]  # the usual choice
    plan = plan_of(bound(isolate=True, cputune=f"<cputune>{pins}</cputune>"),
                   inputs(topo, avail))
    assert plan.memory_node == 1
    assert set(plan.vcpu_pins) | set(plan.emulator) <= NODE1


def test_a_kept_pinning_on_one_node_stays(topo: Topology) -> None:
    first = render.render(bound(), inputs(topo, NODE1 | {0, 1, 2, 3}))
    again = plan_of(first.xml, inputs(topo, NODE0 | NODE1))
    assert again.kept_pinning and again.vcpu_pins == first.plan.vcpu_pins
    assert again.memory_node == first.plan.memory_node


def test_a_pinning_across_nodes_moves_to_one(topo: Topology) -> None:
    """A definition pinned across both nodes (rendered before the binding existed)."""
    pins = "".join(f"<vcpupin vcpu='{v}' cpuset='{c}'/>" for v, c in enumerate((0, 1, 20, 21)))
    plan = plan_of(bound(cputune=f"<cputune>{pins}</cputune>"), inputs(topo, NODE0 | NODE1))
    assert not plan.kept_pinning
    assert topo.nodes_of(plan.vcpu_pins) == [plan.memory_node]


@pytest.mark.parametrize("isolate, available, vcpus", [
    (False, "0-2,20-22", 4),    # 3 CPUs per node, 4 vCPUs: only across both nodes
    (True, "0-3,20-23", 4),     # the vCPUs fit on a node, the isolated emulator does not
])
def test_no_single_node_can_hold_it(topo: Topology, isolate: bool, available: str,
                                    vcpus: int) -> None:
    doc = render.parse(bound(isolate=isolate, vcpus=vcpus))
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inputs(topo, available))
    assert ev.plan is None and ev.failed is not None
    assert ev.failed.name == "dedicated-cpus"
    reason = ev.failed.reason
    assert "\n" not in reason
    assert "4 on node 0, 4 on node 1" in reason or "3 on node 0, 3 on node 1" in reason
    assert reason.endswith("add <numahook:numa><numahook:guestMappingPassthrough/>"
                           "</numahook:numa> so the guest gets one cell per node, or use "
                           "fewer vCPUs")


def test_a_cpuset_that_is_short_anyway_gets_the_usual_refusal(topo: Topology) -> None:
    doc = render.parse(bound(vcpus=8))
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inputs(topo, "0-2,20-22"))
    assert ev.failed is not None and ev.failed.name == "dedicated-cpus"
    assert "widen the partition's cpuset" in ev.failed.reason
    assert "guestMappingPassthrough" not in ev.failed.reason


def test_one_page_size_only(topo: Topology) -> None:
    xml = bound().replace("<page size='2048' unit='KiB'/>",
                          "<page size='2048' unit='KiB'/><page size='1' unit='GiB'/>")
    doc = render.parse(xml)
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inputs(topo, NODE0))
    assert ev.failed is not None and ev.failed.name == "hugepages"
    assert "on one node" in ev.failed.reason and ev.failed.reason.endswith(
        "keep a single <page>")


def test_a_definition_without_the_binding_is_stale(topo: Topology) -> None:
    inp = inputs(topo, NODE1)
    result = render.render(bound(), inp)
    root = safe.parse(result.xml)
    tune = root.find("numatune")
    tune.getparent().remove(tune)
    stale = hardware.differences(facts(safe.tostring(root)), result.plan)
    assert stale == ["its memory is not bound strict to host node 1, where its dedicated CPUs "
                     "and reserved hugepages are"]
    elsewhere = result.xml.replace("nodeset='1'", "nodeset='0'")
    assert hardware.differences(facts(elsewhere), result.plan) == stale


def test_without_hugepages_nothing_is_bound(topo: Topology) -> None:
    result = render.render(domain(numa=False, backing=""), inputs(topo, NODE0 | NODE1))
    assert result.plan.memory_node is None and result.plan.page_need == {}
    assert facts(result.xml).numatune_memory is None


def test_the_memory_node_joins_the_digest_even_when_it_is_node_0(topo: Topology) -> None:
    plan = plan_of(bound(), inputs(topo, NODE0))
    assert plan.memory_node == 0
    unbound = records.replace(plan, memory_node=None, memory_pages=0)
    assert len({plan.digest(), unbound.digest(),
                records.replace(plan, memory_node=1).digest()}) == 3
