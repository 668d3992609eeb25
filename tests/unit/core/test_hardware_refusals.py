"""Every refusal the pure core can produce: its check name, its key words and the fix it names.

Refusals are ``Check``s that failed in :func:`numahook.core.hardware.evaluate` (and the
:class:`~numahook.errors.Refusal` that ``render_parsed`` raises from the first of them);
malformed input is an :class:`~numahook.errors.InputError`. Either way the message is one
line an operator can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from numahook import NAMESPACE, config
from numahook.core import allocate, hardware, render
from numahook.core.pci import HostPci
from numahook.core.plan import Inputs
from numahook.core.topology import Topology
from numahook.errors import InputError, NumahookError, Refusal
from numahook.host import sysfs
from numahook.records import replace
from tests.fixtures.hosts import HOSTS, build_sysfs

CORE = Path(__file__).resolve().parents[3] / "numahook" / "core"
CONF = "/etc/numahook/numahook.conf"


def one_line(msg: str) -> str:
    """Every message checked here is one line an operator can act on."""
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.strip() == msg
    assert "Traceback" not in msg
    return msg


@pytest.fixture(scope="module")
def topos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Topology]:
    base = tmp_path_factory.mktemp("hosts")
    return {n: sysfs.read_topology(build_sysfs(base / n, HOSTS[n]))
            for n in ("quad-nosmt", "asym-cpuless", "single", "intel-2s-ht")}


@dataclass
class Dom:
    """Knobs for a test domain; defaults give a valid 4-vCPU passthrough domain."""

    vcpus: int = 4
    memory: str = "<memory unit='MiB'>64</memory>"
    backing: str = "<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages>" \
                   "</memoryBacking>"
    cpu_attrs: dict[str, str] = field(default_factory=lambda: {"dedicatedCpuPlacement": "true"})
    numa: bool = True
    realtime: str | None = None
    topology: str = ""
    extra: str = ""

    def xml(self) -> str:
        attrs = " ".join(f'{k}="{v}"' for k, v in self.cpu_attrs.items())
        inner = ("<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
                 if self.numa else "") + (self.realtime or "")
        return f"""<domain type='kvm'>
  <name>vm1</name>
  <metadata>
    <numahook:domain xmlns:numahook="{NAMESPACE}">
      <numahook:cpu {attrs}>{inner}</numahook:cpu>
    </numahook:domain>
  </metadata>
  {self.memory}
  {self.backing}
  <vcpu placement='static'>{self.vcpus}</vcpu>
  <cpu mode='host-passthrough'>{self.topology}</cpu>
  {self.extra}
</domain>"""


def inputs(topo: Topology, available: str | frozenset[int], cfg_text: str = "") -> Inputs:
    from numahook.core import cpulist
    avail = cpulist.parse(available) if isinstance(available, str) else available
    return Inputs(topology=topo, available=avail, config=config.parse(cfg_text, CONF))


def refusal(dom: Dom, inp: Inputs, check: str, *words: str) -> str:
    """Assert the evaluation fails first at ``check`` with ``words``; return the message."""
    doc = render.parse(dom.xml())
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inp)
    assert ev.plan is None
    bad = ev.failed
    assert bad is not None, [c for c in ev.checks]
    assert bad.name == check, bad
    for w in words:
        assert w in bad.reason, (w, bad.reason)
    # render_parsed raises the same, with the check name attached
    with pytest.raises(Refusal) as exc:
        render.render_parsed(render.parse(dom.xml()), inp)
    assert exc.value.check == check
    assert str(exc.value) == bad.reason
    one_line(bad.reason)
    return bad.reason


# --------------------------------------------------------------------------- feature gates


def test_numa_gate_off(topos: dict[str, Topology]) -> None:
    msg = refusal(Dom(), inputs(topos["quad-nosmt"], "0-31", "[features]\nNUMA = false\n"),
                  "feature-gate-numa",
                  "vm1 asks for guestMappingPassthrough", "NUMA feature gate is off",
                  "set NUMA = true under [features]", CONF)
    assert msg.endswith(CONF)


def test_realtime_gate_off(topos: dict[str, Topology]) -> None:
    refusal(Dom(realtime="<numahook:realtime/>"),
            inputs(topos["quad-nosmt"], "0-31", "[features]\nRealtime = false\n"),
            "feature-gate-realtime",
            "vm1 asks for realtime", "Realtime feature gate is off",
            "set Realtime = true under [features]", CONF)


def test_gate_off_does_not_matter_for_domains_not_asking(topos: dict[str, Topology]) -> None:
    doc = render.parse(Dom().xml())
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request,
                         inputs(topos["quad-nosmt"], "0-31", "[features]\nRealtime = false\n"))
    assert ev.failed is None and ev.plan is not None
    assert "feature-gate-realtime" not in [c.name for c in ev.checks]


# --------------------------------------------------------------------------- devices, SMT


def device(bdf: str = "0000:41:00.0") -> str:
    return (f"<devices><hostdev mode='subsystem' type='pci'><source><address domain='0x0000' "
            f"bus='0x{bdf[5:7]}' slot='0x00' function='0x0'/></source></hostdev></devices>")


@pytest.mark.parametrize("host, words", [
    (HostPci("0000:41:00.0", True, None, "pci0000:40"),
     ["0000:41:00.0 reports none (its numa_node is -1", "set pciNumaAffinity='preferred'"]),
    (HostPci("0000:41:00.0", False),
     ["0000:41:00.0 is not on this host", "fix its <source><address>"]),
    (HostPci("0000:41:00.0", True, 1, "pci0000:40"),
     ["0000:41:00.0 (node 1, root complex pci0000:40) is there",
      "only 2 CPUs (8-9) are free in its cpuset on node 1 (its devices' node)",
      "or set pciNumaAffinity='preferred' to let the vCPUs run elsewhere"]),
])
def test_pci_numa_affinity_required(topos: dict[str, Topology], host: HostPci,
                                    words: list[str]) -> None:
    inp = replace(inputs(topos["quad-nosmt"], "0-9"), devices={host.bdf: host})
    refusal(Dom(cpu_attrs={"dedicatedCpuPlacement": "true", "pciNumaAffinity": "required"},
                extra=device()), inp, "pci-numa-affinity", *words)


def test_pci_numa_topology_needs_q35(topos: dict[str, Topology]) -> None:
    """A device on a guest cell's node and an i440fx machine: no pcie-expander-bus there."""
    host = HostPci("0000:41:00.0", True, 1, "pci0000:40")
    inp = replace(inputs(topos["quad-nosmt"], "8-15"), devices={host.bdf: host})
    refusal(Dom(extra=device() + "<os><type arch='x86_64' machine='pc'>hvm</type></os>"), inp,
            "pci-numa-topology", "0000:41:00.0 (node 1, root complex pci0000:40) belongs "
            "behind a pcie-expander-bus on guest cell 0, which needs a q35 machine",
            "set machine='q35', or set PCINUMAAwareTopology = false under [features] in " + CONF)


@pytest.mark.parametrize("policy, threads, host, words", [
    ("require", 2, "quad-nosmt", ["needs a host with SMT", "turn SMT (Hyper-Threading) on",
                                  "or set threadPolicy='isolate' or 'prefer'"]),
    ("require", 1, "single", ["<cpu><topology> has threads='1'",
                              "set threads='2' (this host's threads per core)"]),
    ("isolate", 2, "single", ["the guest can have no thread siblings", "set threads='1' or "
                              "threadPolicy='require'"]),
])
def test_thread_policy(topos: dict[str, Topology], policy: str, threads: int, host: str,
                       words: list[str]) -> None:
    cores = 4 // threads
    refusal(Dom(cpu_attrs={"dedicatedCpuPlacement": "true", "threadPolicy": policy},
                topology=f"<topology sockets='1' dies='1' cores='{cores}' threads='{threads}'/>"),
            inputs(topos[host], "0-31"), "thread-policy", *words)


def test_isolate_without_enough_whole_cores(topos: dict[str, Topology]) -> None:
    """single: 2 cores of 2 threads (0,2 and 1,3); CPU 3 taken leaves one whole core."""
    refusal(Dom(vcpus=2, cpu_attrs={"dedicatedCpuPlacement": "true", "threadPolicy": "isolate"}),
            inputs(topos["single"], "0-2"), "dedicated-cpus",
            "the domain needs 2 vCPUs on cores of their own", "1 whole cores among them",
            "or set threadPolicy='prefer'")


def test_no_whole_core_left_for_the_emulator(topos: dict[str, Topology]) -> None:
    refusal(Dom(vcpus=2, cpu_attrs={"dedicatedCpuPlacement": "true", "threadPolicy": "isolate",
                                    "isolateEmulatorThread": "true"}),
            inputs(topos["single"], "0-3"), "dedicated-cpus",
            "no whole core (threadPolicy='isolate' gives it a core of its own) is left",
            'set isolateEmulatorThread="false"')


# --------------------------------------------------------------------------- combinations


@pytest.mark.parametrize(("attrs", "realtime", "numa", "what"), [
    ({}, None, True, "guestMappingPassthrough need dedicated CPUs"),
    ({"dedicatedCpuPlacement": "false"}, None, True, "guestMappingPassthrough need"),
    ({}, "<numahook:realtime/>", True, "guestMappingPassthrough and realtime need"),
    ({"isolateEmulatorThread": "true"}, None, False, "isolateEmulatorThread need dedicated"),
    ({"emulatorThreadPolicy": "share"}, None, False, "emulatorThreadPolicy need dedicated"),
    ({"dedicatedMask": "0"}, None, False, "dedicatedMask need dedicated"),
])
def test_features_without_dedicated_placement(topos: dict[str, Topology], attrs: dict[str, str],
                                              realtime: str | None, numa: bool,
                                              what: str) -> None:
    refusal(Dom(cpu_attrs=attrs, realtime=realtime, numa=numa), inputs(topos["quad-nosmt"],
            "0-31"), "dedicated-cpu-placement", what,
            'set dedicatedCpuPlacement="true" on <numahook:cpu>')


def test_realtime_without_passthrough(topos: dict[str, Topology]) -> None:
    refusal(Dom(numa=False, realtime="<numahook:realtime/>"), inputs(topos["quad-nosmt"],
            "0-31"), "guest-mapping-passthrough", "realtime needs guestMappingPassthrough",
            "add <numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>")


def test_passthrough_without_hugepages(topos: dict[str, Topology]) -> None:
    refusal(Dom(backing=""), inputs(topos["quad-nosmt"], "0-31"), "hugepages",
            "guestMappingPassthrough needs hugepages",
            "add <memoryBacking><hugepages><page size='2048' unit='KiB'/>")


def test_two_page_sizes(topos: dict[str, Topology]) -> None:
    backing = ("<memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/>"
               "<page size='1' unit='GiB' nodeset='1'/></hugepages></memoryBacking>")
    refusal(Dom(backing=backing), inputs(topos["quad-nosmt"], "0-31"), "hugepages",
            "needs one hugepage size", "lists 2", "keep a single <page>")


def test_unknown_page_size(topos: dict[str, Topology]) -> None:
    backing = "<memoryBacking><hugepages><page size='1' unit='GiB'/></hugepages></memoryBacking>"
    refusal(Dom(backing=backing, memory="<memory unit='GiB'>4</memory>"),
            inputs(topos["quad-nosmt"], "0-31"), "page-size",
            "this host has no 1 GiB hugepages", "it supports 2 MiB", "change <page size>")


def test_memory_not_whole_pages(topos: dict[str, Topology]) -> None:
    refusal(Dom(memory="<memory unit='KiB'>5000</memory>"), inputs(topos["quad-nosmt"], "0-31"),
            "memory-whole-pages", "memory 5000 KiB is not a whole number of 2 MiB pages",
            "round <memory> to a multiple of 2 MiB")


def test_fewer_pages_than_cells(topos: dict[str, Topology]) -> None:
    # CPUs 6-9 straddle nodes 0 and 1: two cells, but 2 MiB is one page
    refusal(Dom(memory="<memory unit='MiB'>2</memory>"), inputs(topos["quad-nosmt"], "6-9"),
            "memory-page-per-cell", "2 MiB is 1 pages of 2 MiB",
            "fewer than the 2 guest cells its CPUs span",
            "raise <memory> to at least 4 MiB")


@pytest.mark.parametrize(("topology", "product"), [
    ("<topology sockets='1' dies='1' cores='3' threads='1'/>", 3),
    ("<topology sockets='2' dies='1' cores='2' threads='2'/>", 8),
])
def test_topology_mismatch(topos: dict[str, Topology], topology: str, product: int) -> None:
    refusal(Dom(topology=topology), inputs(topos["quad-nosmt"], "0-31"), "cpu-topology",
            f"<cpu><topology> gives {product} vCPUs", "but <vcpu> is 4", "make them agree")


@pytest.mark.parametrize(("mask", "words"), [
    ("4", ["'4' names vCPU 4", "only vCPUs 0-3", "fix the mask"]),
    ("0-7", ["names vCPU 7", "fix the mask"]),
    ("^9", ["names vCPU 9"]),
    ("x", ["realtime mask item 'x' is not a number or a range A-B"]),
])
def test_realtime_mask_out_of_range_or_malformed(topos: dict[str, Topology], mask: str,
                                                 words: list[str]) -> None:
    refusal(Dom(realtime=f"<numahook:realtime mask='{mask}'/>"),
            inputs(topos["quad-nosmt"], "0-31"), "realtime-mask", *words)


@pytest.mark.parametrize("mask", ["1,^1", "^0-3", "0-3,^0-3"])
def test_realtime_mask_selects_nothing(topos: dict[str, Topology], mask: str) -> None:
    refusal(Dom(realtime=f"<numahook:realtime mask='{mask}'/>"),
            inputs(topos["quad-nosmt"], "0-31"), "realtime-mask",
            f"realtime mask {mask!r} selects no vCPU",
            "fix the mask or remove <numahook:realtime>")


def test_not_enough_cpus(topos: dict[str, Topology]) -> None:
    refusal(Dom(vcpus=4), inputs(topos["quad-nosmt"], "0-2"), "dedicated-cpus",
            "not enough dedicated CPUs", "needs 4 vCPUs", "only 3 CPUs (0-2) are free",
            "widen the partition's cpuset or stop another dedicated domain")


def test_not_enough_cpus_with_emulator_and_threads(topos: dict[str, Topology]) -> None:
    dom = Dom(cpu_attrs={"dedicatedCpuPlacement": "true", "isolateEmulatorThread": "true"},
              topology="<topology sockets='1' dies='1' cores='2' threads='2'/>")
    # CPUs 0-2 hold one whole core (0,2) and half of another: one guest core fits, not two
    refusal(dom, inputs(topos["single"], "0-2"), "dedicated-cpus",
            "needs 4 vCPUs in cores of 2 threads plus 1 emulator CPU", "only 3 CPUs (0-2)")


def test_not_enough_cpus_on_nodes_with_memory(topos: dict[str, Topology]) -> None:
    # node 3 (CPUs 16-19) has no memory: passthrough cannot put a cell there
    refusal(Dom(vcpus=2), inputs(topos["asym-cpuless"], "16-19"), "dedicated-cpus",
            "only 0 CPUs (none) are free in its cpuset on nodes with memory")


def test_empty_cpuset(topos: dict[str, Topology]) -> None:
    refusal(Dom(vcpus=1, numa=False, backing=""), inputs(topos["quad-nosmt"], ""),
            "dedicated-cpus", "only 0 CPUs (none) are free")


def test_no_cpu_left_for_the_emulator(topos: dict[str, Topology]) -> None:
    dom = Dom(cpu_attrs={"dedicatedCpuPlacement": "true", "isolateEmulatorThread": "true"})
    refusal(dom, inputs(topos["quad-nosmt"], "0-3"), "dedicated-cpus",
            "4 vCPUs fit, but no CPU is left for the isolated emulator thread in 0-3",
            "widen the partition's cpuset or set isolateEmulatorThread=\"false\"")


def test_refusal_order_reports_the_first_failure(topos: dict[str, Topology]) -> None:
    # gate off and no hugepages: the gate is named first
    dom = Dom(backing="")
    doc = render.parse(dom.xml())
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request,
                         inputs(topos["quad-nosmt"], "0-31", "[features]\nNUMA = false\n"))
    failed = [c.name for c in ev.checks if c.ok is False]
    assert failed[0] == "feature-gate-numa"
    assert "hugepages" in failed
    # allocation is not attempted once a precondition failed
    assert [c.ok for c in ev.checks if c.name == "dedicated-cpus"] == [None]


def test_allocator_refuses_vcpus_not_divisible_by_threads(topos: dict[str, Topology]) -> None:
    with pytest.raises(Refusal) as exc:
        allocate.allocate(topos["single"], frozenset(range(4)), 3, threads=2)
    assert exc.value.check == "cpu-topology"
    assert "3 vCPUs cannot be split into guest cores of 2 threads" in str(exc.value)
    one_line(str(exc.value))


def _shape_refusal(topo: Topology, available: str, cells: list[tuple[int, ...]],
                   threads: int = 1, extra: int = 0) -> str:
    from numahook.core import cpulist
    with pytest.raises(Refusal) as exc:
        allocate.allocate_cells(topo, cpulist.parse(available), cells, threads, extra)
    assert exc.value.check == "guest-shape"
    one_line(str(exc.value))
    return str(exc.value)


def test_fixed_guest_shape_cell_of_half_a_core(topos: dict[str, Topology]) -> None:
    # migration/restore keep the guest's cells; a cell must hold whole guest cores
    msg = _shape_refusal(topos["single"], "0-3", [(0, 1, 2)], threads=2)
    assert "a guest cell does not hold whole guest cores" in msg


def test_fixed_guest_shape_needs_distinct_nodes(topos: dict[str, Topology]) -> None:
    msg = _shape_refusal(topos["quad-nosmt"], "0-7", [(0, 1), (2, 3)])
    assert "no 2 distinct NUMA nodes have 2/2 free CPUs in 0-7" in msg


def test_fixed_guest_shape_no_cpu_for_the_emulator(topos: dict[str, Topology]) -> None:
    msg = _shape_refusal(topos["quad-nosmt"], "0-1,8-9", [(0, 1), (2, 3)], extra=1)
    assert "no CPU is left for the isolated emulator thread" in msg


def test_fixed_guest_shape_fits(topos: dict[str, Topology]) -> None:
    from numahook.core import cpulist
    alloc = allocate.allocate_cells(topos["quad-nosmt"], cpulist.parse("6-9,16"),
                                    [(0, 1), (2, 3)], 1, 1)
    assert alloc.cell_nodes == (0, 1)
    assert alloc.vcpus == (6, 7, 8, 9)
    assert alloc.extra == (16,)


# --------------------------------------------------------------------------- render-level


def test_not_opted_in_is_refused_by_render(topos: dict[str, Topology]) -> None:
    xml = "<domain><name>plain</name><memory>1024</memory></domain>"
    with pytest.raises(NumahookError) as exc:
        render.render(xml, inputs(topos["single"], "0-3"))
    msg = str(exc.value)
    assert "plain has no <numahook:domain> metadata" in msg
    assert "add the metadata element to opt in" in msg
    one_line(msg)


def test_asking_for_nothing_is_refused_by_render(topos: dict[str, Topology]) -> None:
    dom = Dom(cpu_attrs={}, numa=False, backing="")
    with pytest.raises(NumahookError) as exc:
        render.render(dom.xml(), inputs(topos["single"], "0-3"))
    msg = str(exc.value)
    assert "vm1's <numahook:cpu> asks for nothing" in msg
    assert 'set dedicatedCpuPlacement="true" at least' in msg
    one_line(msg)


# --------------------------------------------------------------------------- input errors


def _input_error(xml: str, *words: str) -> str:
    with pytest.raises(InputError) as exc:
        render.parse(xml)
    msg = str(exc.value)
    for w in words:
        assert w in msg, (w, msg)
    one_line(msg)
    return msg


def _meta(cpu: str) -> str:
    return (f"<domain><name>v</name><metadata><n:domain xmlns:n='{NAMESPACE}'>{cpu}</n:domain>"
            "</metadata><memory>2048</memory></domain>")


@pytest.mark.parametrize(("cpu", "words"), [
    ("<n:cpu dedicatedCpuPlacement='yes'/>", ["dedicatedCpuPlacement='yes'",
                                              'must be "true" or "false"']),
    ("<n:cpu ioThreadsPolicy='pool'/>", ["ioThreadsPolicy='pool'", "must be one of shared, auto"]),
    ("<n:cpu><n:realtime priority='0'/></n:cpu>", ["priority='0'", "from 1 to 99"]),
    ("<n:cpu><n:realtime priority='100'/></n:cpu>", ["priority='100'", "from 1 to 99"]),
    ("<n:cpu><n:realtime priority='high'/></n:cpu>", ["priority='high'", "from 1 to 99"]),
    ("<n:cpu bogus='1'/>", ["unknown attribute 'bogus'", "allowed:"]),
    ("<n:cpu mask='0'/>", ["unknown attribute 'mask'"]),
    (f"<n:cpu><n:realtime mask='{'0' * 5000}'/></n:cpu>", ["attribute mask is too long"]),
    ("<x:cpu xmlns:x='urn:x'/>", ["is not in the numahook namespace"]),
    ("<n:numa/>", ["may hold one <numahook:cpu>, not <numa>"]),
    ("<n:cpu><n:numa/></n:cpu>", ["must hold exactly <numahook:guestMappingPassthrough/>"]),
    ("<n:cpu><n:realtime><n:x/></n:realtime></n:cpu>", ["takes attributes only"]),
    ("<n:cpu><n:topology/></n:cpu>", ["unexpected or repeated <topology>"]),
])
def test_metadata_and_request_input_errors(cpu: str, words: list[str]) -> None:
    _input_error(_meta(cpu), *words)


def test_two_metadata_elements() -> None:
    xml = _meta("<n:cpu/>").replace("</metadata>",
                                     f"<n:domain xmlns:n='{NAMESPACE}'/></metadata>")
    _input_error(xml, "more than one <numahook:domain> element; keep one")


@pytest.mark.parametrize(("xml", "words"), [
    ("<network><name>n</name></network>", ["expected a <domain> document, got <network>"]),
    ("<domain><memory>1</memory></domain>", ["the domain has no <name>"]),
    ("<domain><name> </name><memory>1</memory></domain>", ["the domain has no <name>"]),
    ("<domain><name>v</name></domain>", ["the domain has no <memory>"]),
    ("<domain><name>v</name><memory>1</memory><vcpu>0</vcpu></domain>",
     ["<vcpu> '0' is not a whole number between 1 and 4096"]),
    ("<domain><name>v</name><memory>1</memory><vcpu>5000</vcpu></domain>",
     ["<vcpu> '5000'", "between 1 and 4096"]),
    ("<domain><name>v</name><memory>1</memory><vcpu>four</vcpu></domain>", ["<vcpu> 'four'"]),
    ("<domain><name>v</name><memory>1</memory><vcpu current='9'>4</vcpu></domain>",
     ["<vcpu current> '9' is not a whole number between 1 and 4"]),
    ("<domain><name>v</name><memory>1</memory><cpu><topology sockets='0'/></cpu></domain>",
     ["<topology sockets> '0'"]),
    ("<domain><name>v</name><memory>1</memory><iothreads>x</iothreads></domain>",
     ["<iothreads> 'x'"]),
    ("<domain><name>v</name><memory>1</memory><iothreadids><iothread id='0'/></iothreadids>"
     "</domain>", ["<iothread id> '0'"]),
    ("<domain><name>v</name><memory>1</memory><cputune><vcpupin vcpu='a' cpuset='1'/>"
     "</cputune></domain>", ["<vcpupin vcpu> 'a'"]),
    ("<domain><name>v</name><memory>1</memory><cputune><vcpupin vcpu='0' cpuset='1-'/>"
     "</cputune></domain>", ["<vcpupin> '1-' is not a number or a range"]),
    ("<domain><name>v</name><memory>1</memory><cputune><emulatorpin cpuset='9999'/>"
     "</cputune></domain>", ["<emulatorpin> '9999' is beyond the largest allowed id"]),
    ("<domain><name>v</name><memory>1</memory><cputune><vcpusched vcpus='0' "
     "scheduler='fifo' priority='120'/></cputune></domain>", ["<vcpusched priority> '120'"]),
    ("<domain><name>v</name><memory>1</memory><numatune><memnode cellid='x' nodeset='0'/>"
     "</numatune></domain>", ["<memnode cellid> 'x'"]),
    ("<domain><name>v</name><memory>1</memory><cpu><numa><cell id='0' cpus='0' memory='1' "
     "unit='parsecs'/></numa></cpu></domain>", ["<cell memory> has unknown unit 'parsecs'",
                                               "use KiB, MiB, GiB or TiB"]),
])
def test_domain_xml_input_errors(xml: str, words: list[str]) -> None:
    _input_error(xml, *words)


@pytest.mark.parametrize(("memory", "words"), [
    ("<memory>lots</memory>", ["<memory> 'lots' is not a whole number"]),
    ("<memory>-1</memory>", ["<memory> '-1' is not a whole number"]),
    ("<memory>1.5</memory>", ["<memory> '1.5' is not a whole number"]),
    ("<memory unit='furlong'>1</memory>", ["<memory> has unknown unit 'furlong'",
                                           "use KiB, MiB, GiB or TiB"]),
    ("<memory unit='EiB'>64</memory>", ["<memory> 64 EiB is beyond any real host"]),
    (f"<memory>{'9' * 30}</memory>", ["is not a whole number"]),
])
def test_unit_input_errors(memory: str, words: list[str]) -> None:
    _input_error(f"<domain><name>v</name>{memory}</domain>", *words)


def test_page_size_unit_errors() -> None:
    _input_error("<domain><name>v</name><memory>1</memory><memoryBacking><hugepages>"
                 "<page size='two' unit='MiB'/></hugepages></memoryBacking></domain>",
                 "<page size> 'two' is not a whole number")


@pytest.mark.parametrize("xml", [
    "<domain><name>v</name><memory>\u00b2</memory></domain>",
    "<domain><name>v</name><memory>\u0663</memory></domain>",
    "<domain><name>v</name><memory>1</memory><vcpu>\u00b2</vcpu></domain>",
    "<domain><name>v</name><memory>1</memory><vcpu>\u0664</vcpu></domain>",
    "<domain><name>v</name><memory>1</memory><cputune><vcpupin vcpu='0' cpuset='\u0663'/>"
    "</cputune></domain>",
])
def test_unicode_digits_are_input_errors(xml: str) -> None:
    # regression: str.isdigit() accepted '\u00b2' (then int() raised ValueError) and
    # '\u0663' (Arabic-Indic three, which int() silently read as 3)
    msg = _input_error(xml)
    assert "is not a whole number" in msg or "is not a number or a range" in msg


# --------------------------------------------------------------------------- shared CPUs

SHARE = {"dedicatedCpuPlacement": "true", "emulatorThreadPolicy": "share"}


def test_share_without_a_shared_set_names_the_key(topos: dict[str, Topology]) -> None:
    msg = refusal(Dom(cpu_attrs=SHARE), inputs(topos["quad-nosmt"], "0-31"), "shared-cpus",
                  'vm1 asks for emulatorThreadPolicy="share"', "no shared CPUs",
                  "set shared = <cpulist> under [cpus] in " + CONF)
    assert msg.endswith("(CPUs no dedicated domain needs)")


def test_shared_set_with_a_cpu_the_host_lacks(topos: dict[str, Topology]) -> None:
    refusal(Dom(cpu_attrs=SHARE), inputs(topos["quad-nosmt"], "0-31", "[cpus]\nshared = 0,40\n"),
            "shared-cpus", "names CPU 40 that this host does not have online",
            "remove it from the list")


def test_shared_set_outside_the_partition(topos: dict[str, Topology]) -> None:
    inp = replace(inputs(topos["quad-nosmt"], "8-15", "[cpus]\nshared = 0-1\n"),
                  partition_cpus=frozenset(range(8, 16)))
    refusal(Dom(cpu_attrs=SHARE), inp, "shared-cpus",
            "CPUs 0-1 outside the cpuset of vm1's partition (8-15)",
            "add them to the partition's cpuset or take them out of [cpus] shared")


def test_shared_set_held_by_a_dedicated_domain(topos: dict[str, Topology]) -> None:
    inp = replace(inputs(topos["quad-nosmt"], "1-31", "[cpus]\nshared = 0\n"),
                  partition_cpus=frozenset(range(32)), claimed_cpus=frozenset({0}))
    refusal(Dom(cpu_attrs=SHARE), inp, "shared-cpus",
            "CPU 0 of [cpus] shared is held by a dedicated domain",
            "run `numahook apply` on that domain and restart it")


def test_isolate_emulator_thread_true_with_share(topos: dict[str, Topology]) -> None:
    refusal(Dom(cpu_attrs={**SHARE, "isolateEmulatorThread": "true"}),
            inputs(topos["quad-nosmt"], "0-31", "[cpus]\nshared = 0\n"),
            "emulator-thread-policy", 'isolateEmulatorThread="true" and '
            'emulatorThreadPolicy="share" contradict each other; remove one of them')


def test_the_pool_never_reaches_the_shared_set(topos: dict[str, Topology]) -> None:
    """Shared CPUs are out of the dedicated pool even for domains that do not share: a
    domain that would fit only with them is refused rather than pinned there."""
    refusal(Dom(), inputs(topos["quad-nosmt"], "0-4", "[cpus]\nshared = 0-1\n"),
            "dedicated-cpus", "not enough dedicated CPUs")


MIXED = {"dedicatedCpuPlacement": "true", "dedicatedMask": "1-3"}


def test_mixed_without_a_shared_set_names_the_key(topos: dict[str, Topology]) -> None:
    refusal(Dom(cpu_attrs=MIXED), inputs(topos["quad-nosmt"], "0-31"), "shared-cpus",
            "vm1 asks for dedicatedMask='1-3', but this host has no shared CPUs",
            "set shared = <cpulist> under [cpus] in " + CONF)


@pytest.mark.parametrize(("mask", "realtime", "topology", "words"), [
    ("^0-3", None, "", ["dedicatedMask '^0-3' selects no vCPU; name at least one vCPU in it"]),
    ("1-4", None, "", ["dedicatedMask item '1-4' names vCPU 4", "fix the mask"]),
    ("1-3", "<numahook:realtime mask='0,2'/>", "",
     ["real-time vCPU 0 is outside dedicatedMask '1-3', and a floating vCPU cannot run "
      "SCHED_FIFO; add them to dedicatedMask or take them out of the realtime mask"]),
    ("1-3", None, "<topology sockets='1' dies='1' cores='2' threads='2'/>",
     ["dedicatedMask '1-3' splits guest core 0 (vCPUs 0-1, threads='2'); take all of its "
      "vCPUs or none"]),
])
def test_bad_dedicated_masks(topos: dict[str, Topology], mask: str, realtime: str | None,
                             topology: str, words: list[str]) -> None:
    refusal(Dom(cpu_attrs={**MIXED, "dedicatedMask": mask}, realtime=realtime,
                topology=topology),
            inputs(topos["intel-2s-ht"] if topology else topos["quad-nosmt"], "0-31",
                   "[cpus]\nshared = 0\n"), "dedicated-mask", *words)


# --------------------------------------------------------------------------- completeness


def _core_check_names() -> set[str]:
    names = {n for module in ("hardware.py", "guestmem.py")
             for n in re.findall(r'ck\.fail\(\s*"([a-z-]+)"', (CORE / module).read_text())}
    names |= set(re.findall(r'"([a-z-]+)",?\s*\)$', (CORE / "allocate.py").read_text(),
                            re.MULTILINE))
    # the checks of the modules hardware.evaluate hands a part to (core/locality.py, ...)
    for path in CORE.glob("*.py"):
        names |= set(re.findall(r'^(?:CHECK|MASK) = "([a-z-]+)"$', path.read_text(),
                                re.MULTILINE))
    return names


COVERED = {
    "feature-gate-numa", "feature-gate-realtime", "dedicated-cpu-placement",
    "guest-mapping-passthrough", "hugepages", "page-size", "memory-whole-pages",
    "memory-page-per-cell", "cpu-topology", "realtime-mask", "dedicated-cpus",
    # allocate_cells (migration/restore); lifecycle.relocate wraps these with the fix
    "guest-shape",
    "pci-numa-affinity", "thread-policy", "pci-numa-topology",
    "emulator-thread-policy", "shared-cpus", "dedicated-mask",
}


def test_every_check_name_in_the_core_has_a_test_here() -> None:
    names = _core_check_names()
    assert names, "no check names found; did hardware.py change shape?"
    missing = names - COVERED
    assert not missing, f"refusals without a test in this module: {sorted(missing)}"


#: domains each refused by a different check: (knobs, available CPUs, config)
REFUSED = [
    (Dom(), "0-31", "[features]\nNUMA = false\n"),
    (Dom(realtime="<numahook:realtime/>"), "0-31", "[features]\nRealtime = false\n"),
    (Dom(backing=""), "0-31", ""),
    (Dom(memory="<memory unit='KiB'>1000</memory>"), "0-31", ""),
    (Dom(vcpus=64), "0-3", ""),
    (Dom(topology="<topology sockets='1' dies='1' cores='3' threads='1'/>"), "0-31", ""),
    (Dom(realtime="<numahook:realtime mask='1,^1'/>"), "0-31", ""),
]


def test_every_refusal_message_is_a_single_line(topos: dict[str, Topology]) -> None:
    """On its own, with no state left by the tests above: each refusal, with every check
    that failed after it, is one line."""
    failed = []
    for dom, available, cfg_text in REFUSED:
        doc = render.parse(dom.xml())
        assert doc.request is not None
        ev = hardware.evaluate(doc.facts, doc.request,
                               inputs(topos["quad-nosmt"], available, cfg_text))
        assert ev.plan is None, dom
        failed += [c for c in ev.checks if c.ok is False]
    assert len({c.name for c in failed}) >= len(REFUSED)
    for check in failed:
        one_line(check.reason)


# --------------------------------------------------------------------------- who holds them


def held(topo: Topology, available: str, holders: dict[int, str]) -> Inputs:
    """Inputs whose missing CPUs other domains hold (ops/hostinputs.py fills holders)."""
    return replace(inputs(topo, available), holders=holders)


def test_not_enough_cpus_names_the_domains_that_hold_them(topos: dict[str, Topology]) -> None:
    """Issue 31: "stop another dedicated domain" without saying which one left the
    operator matching CPU numbers by hand."""
    msg = refusal(Dom(vcpus=4), held(topos["quad-nosmt"], "0-2",
                                     {3: "rt2", 4: "rt1", 5: "rt1", 20: "web"}),
                  "dedicated-cpus")
    assert msg == ("not enough dedicated CPUs: the domain needs 4 vCPUs, but only 3 CPUs (0-2) "
                   "are free in its cpuset, as rt1 holds 4-5, rt2 holds 3 and web holds 20; "
                   "widen the partition's cpuset or stop another dedicated domain (rt1, rt2 "
                   "or web)")


def test_only_holders_on_the_nodes_it_may_use_are_named(topos: dict[str, Topology]) -> None:
    # node 3 (CPUs 16-19) has no memory: its holder freed nothing passthrough could use
    msg = refusal(Dom(vcpus=2), held(topos["asym-cpuless"], "16-17",
                                     {0: "rt1", 18: "nomem"}), "dedicated-cpus")
    assert "as rt1 holds 0;" in msg and "(rt1)" in msg and "nomem" not in msg


def test_many_holders_are_counted_past_the_fourth(topos: dict[str, Topology]) -> None:
    msg = refusal(Dom(vcpus=4), held(topos["quad-nosmt"], "0-2",
                                     {3 + i: f"d{i}" for i in range(6)}), "dedicated-cpus")
    assert ("as d0 holds 3, d1 holds 4, d2 holds 5, d3 holds 6 and 2 more domains hold 7-8; "
            "widen the partition's cpuset or stop another dedicated domain (d0, d1, d2, d3 or "
            "another)") in msg


def test_no_cpu_left_for_the_emulator_names_the_holders(topos: dict[str, Topology]) -> None:
    dom = Dom(cpu_attrs={"dedicatedCpuPlacement": "true", "isolateEmulatorThread": "true"})
    msg = refusal(dom, held(topos["quad-nosmt"], "0-3", {4: "rt1"}), "dedicated-cpus")
    assert msg.endswith("isolated emulator thread in 0-3, as rt1 holds 4; widen the "
                        "partition's cpuset, stop rt1, or set isolateEmulatorThread=\"false\"")


def test_no_single_node_names_the_holders(topos: dict[str, Topology]) -> None:
    hugepages_only = Dom(vcpus=6, numa=False)
    msg = refusal(hugepages_only, held(topos["quad-nosmt"], "4-11", {0: "rt1", 12: "rt2"}),
                  "dedicated-cpus")
    assert ("(free CPUs on nodes with memory: 4 on node 0, 4 on node 1), as rt1 holds 0 and "
            "rt2 holds 12;") in msg
    assert msg.endswith("so the guest gets one cell per node, stop rt1 or rt2, or use fewer "
                        "vCPUs")


def test_guest_shape_names_the_holders(topos: dict[str, Topology]) -> None:
    with pytest.raises(Refusal) as exc:
        allocate.allocate_cells(topos["quad-nosmt"], frozenset(range(8)), [(0, 1), (2, 3)],
                                vcpu_nodes=frozenset({0, 1}), holders={8: "rt1", 16: "far"})
    assert str(exc.value) == ("no 2 distinct NUMA nodes have 2/2 free CPUs in 0-7, as rt1 "
                              "holds 8")
