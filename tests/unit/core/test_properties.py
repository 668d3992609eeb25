"""Property tests: random hosts, random requests, random free CPUs; the plan's invariants.

Hosts are built directly as :class:`numahook.core.topology.Topology` objects (sysfs reading has
its own tests). Every invariant is checked against an independent computation here, not
against the allocator's own helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from numahook import NAMESPACE, config
from numahook.core import cpulist, domainxml, hardware, render
from numahook.core.plan import Inputs, Plan
from numahook.core.topology import Topology
from numahook.errors import Refusal
from numahook.xml import safe
from tests.fixtures.randomhosts import PAGE, SETTINGS, topologies


@dataclass(frozen=True)
class Ask:
    cores: int
    threads: int
    passthrough: bool
    isolate: bool
    realtime: bool
    mask: str | None
    pages: int
    iothreads: int
    policy: str | None

    @property
    def vcpus(self) -> int:
        return self.cores * self.threads

    def xml(self) -> str:
        attrs = 'dedicatedCpuPlacement="true"'
        if self.isolate:
            attrs += ' isolateEmulatorThread="true"'
        if self.policy:
            attrs += f' ioThreadsPolicy="{self.policy}"'
        inner = ""
        if self.passthrough:
            inner += "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
        if self.realtime:
            inner += ("<numahook:realtime/>" if self.mask is None
                      else f'<numahook:realtime mask="{self.mask}" priority="5"/>')
        backing = ("<memoryBacking>\n    <hugepages>\n      <page size='2' unit='MiB'/>\n"
                   "    </hugepages>\n  </memoryBacking>\n  " if self.passthrough else "")
        io = f"<iothreads>{self.iothreads}</iothreads>\n  " if self.iothreads else ""
        return f"""<domain type='kvm'>
  <name>prop</name>
  <uuid>5e1b1a5e-0000-4000-8000-00000000beef</uuid>
  <metadata>
    <numahook:domain xmlns:numahook="{NAMESPACE}">
      <numahook:cpu {attrs}>{inner}</numahook:cpu>
    </numahook:domain>
  </metadata>
  <memory unit='KiB'>{self.pages * PAGE}</memory>
  {backing}<vcpu placement='static'>{self.vcpus}</vcpu>
  {io}<os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <cpu mode='host-passthrough'>
    <topology sockets='1' dies='1' cores='{self.cores}' threads='{self.threads}'/>
  </cpu>
  <devices>
    <!-- left alone -->
    <memballoon model='virtio'/>
  </devices>
</domain>
"""


@st.composite
def asks(draw: st.DrawFn, topo: Topology, available: frozenset[int]) -> Ask:
    smt = any(len(c.siblings) > 1 for c in topo.cpus.values())
    threads = draw(st.sampled_from([1, 2])) if smt else 1
    realtime = draw(st.booleans())
    passthrough = realtime or draw(st.booleans())
    # sizes up to what the free CPUs could hold (often spanning nodes), sometimes one more
    probe = Ask(1, threads, passthrough, False, False, None, 1, 0, None)
    cap = sum(units_per_node(topo, allowed_cpus(topo, available, probe), threads).values())
    if cap == 0 or all(draw(st.booleans()) for _ in range(3)):
        cores = cap + 1  # one guest core too many: a refusal
    else:
        cores = draw(st.integers(max(1, cap // 2) if draw(st.booleans()) else 1, cap))
    vcpus = cores * threads
    mask = None
    if realtime and draw(st.booleans()):
        chosen = draw(st.sets(st.integers(0, vcpus - 1), min_size=1))
        mask = cpulist.format(chosen)
    return Ask(
        cores=cores, threads=threads, passthrough=passthrough, isolate=draw(st.booleans()),
        realtime=realtime, mask=mask, pages=draw(st.integers(1, 12)),
        iothreads=draw(st.integers(0, 3)), policy=draw(st.sampled_from([None, "shared", "auto"])),
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[Topology, Ask, frozenset[int]]:
    topo = draw(topologies())
    ids = sorted(topo.cpus)
    available = draw(st.one_of(
        st.just(frozenset(ids)),
        st.frozensets(st.sampled_from(ids), min_size=1),
    ))
    ask = draw(asks(topo, available))
    return topo, ask, available


def inputs(topo: Topology, available: frozenset[int], vcpusched: bool = True) -> Inputs:
    return Inputs(topology=topo, available=available, config=config.Config(),
                  emit_vcpusched=vcpusched)


# --------------------------------------------------------------------------- oracle


def allowed_cpus(topo: Topology, available: frozenset[int], ask: Ask) -> frozenset[int]:
    return frozenset(c for c in available if c in topo.cpus and (
        not ask.passthrough or topo.nodes[topo.cpus[c].node].memory_kib > 0))


def units_per_node(topo: Topology, allowed: frozenset[int], threads: int) -> dict[int, int]:
    """Guest cores each node could host: per host core, free siblings // threads."""
    per_core: dict[tuple[int, int, int, int], int] = {}
    for c in allowed:
        cpu = topo.cpus[c]
        key = (cpu.node, cpu.package, cpu.die, cpu.core)
        per_core[key] = per_core.get(key, 0) + 1
    out: dict[int, int] = {}
    for (node, *_), free in per_core.items():
        out[node] = out.get(node, 0) + free // threads
    return out


def fewest_nodes(caps: dict[int, int], need: int) -> int | None:
    """Least number of nodes whose capacity adds up to ``need`` (None: impossible)."""
    total = 0
    for k, cap in enumerate(sorted(caps.values(), reverse=True), 1):
        total += cap
        if total >= need:
            return k
    return None


# --------------------------------------------------------------------------- invariants


def check_plan(topo: Topology, ask: Ask, available: frozenset[int], plan: Plan) -> None:
    pins = plan.vcpu_pins
    # every vCPU on exactly one CPU, all distinct, all available
    assert len(pins) == ask.vcpus
    assert len(set(pins)) == len(pins)
    assert set(pins) <= available
    if ask.passthrough:
        assert all(topo.nodes[topo.node_of(c)].memory_kib > 0 for c in pins)

    # guest thread siblings sit on host thread siblings
    for g in range(0, ask.vcpus, ask.threads):
        group = pins[g:g + ask.threads]
        assert len({topo.core_key(c) for c in group}) == 1
        for c in group:
            assert set(group) <= topo.cpus[c].siblings

    # the fewest nodes are used
    allowed = allowed_cpus(topo, available, ask)
    used = {topo.node_of(c) for c in pins}
    k = fewest_nodes(units_per_node(topo, allowed, ask.threads), ask.cores)
    assert k is not None
    assert len(used) == k, f"used {sorted(used)} but {k} nodes would do"

    # emulator
    if ask.isolate:
        assert len(plan.emulator) == 1
        assert not set(plan.emulator) & set(pins)
        assert set(plan.emulator) <= available
    else:
        rt = set(plan.realtime_vcpus)
        non_rt = {pins[v] for v in range(ask.vcpus) if v not in rt}
        assert set(plan.emulator) == (non_rt or set(pins))

    # while QEMU starts, the emulator reaches every cell's node, on CPUs the domain holds
    # (core/prealloc.py); it borrows a real-time vCPU's CPU only where nothing else is there
    start = set(plan.emulator_pin)
    assert start >= set(plan.emulator) and start <= plan.cpus
    assert {c.host_node for c in plan.cells} <= {topo.node_of(c) for c in start}
    for cpu in start - set(plan.emulator):
        node = topo.node_of(cpu)
        assert node not in {topo.node_of(c) for c in plan.emulator}
        if cpu in {pins[v] for v in plan.realtime_vcpus}:
            rt = set(plan.realtime_vcpus)
            assert not [c for v, c in enumerate(pins) if v not in rt and topo.node_of(c) == node]
            assert not [c for c in plan.held if topo.node_of(c) == node]
    if not plan.cells:
        assert plan.emulator_start == ()

    # IO threads
    assert [io for io, _ in plan.iothread_pins] == list(range(1, ask.iothreads + 1))
    for i, (_, cpus) in enumerate(plan.iothread_pins):
        if ask.policy == "auto" and len(plan.emulator) > 1:
            assert cpus == (plan.emulator[i % len(plan.emulator)],)
        else:
            assert cpus == plan.emulator

    # realtime
    if ask.realtime:
        assert set(plan.realtime_vcpus) == cpulist.parse_mask(ask.mask, ask.vcpus)
        assert plan.priority == (1 if ask.mask is None else 5)
    else:
        assert plan.realtime_vcpus == ()

    if not ask.passthrough:
        assert plan.cells == ()
        return

    # cells partition the vCPUs by host node, in host order, numbered 0..k-1
    cells = plan.cells
    assert [c.id for c in cells] == list(range(len(cells)))
    hosts = [c.host_node for c in cells]
    assert hosts == sorted(set(hosts))
    assert set(hosts) == used
    for c in cells:
        assert c.vcpus == tuple(v for v, cpu in enumerate(pins)
                                if topo.node_of(cpu) == c.host_node)
    assert sorted(v for c in cells for v in c.vcpus) == list(range(ask.vcpus))

    # memory split in whole pages, the remainder on the first cells
    assert plan.page_kib == PAGE
    assert sum(c.memory_kib for c in cells) == ask.pages * PAGE
    base, rem = divmod(ask.pages, len(cells))
    for i, c in enumerate(cells):
        assert c.pages >= 1
        assert c.memory_kib == c.pages * PAGE
        assert c.pages == base + (1 if i < rem else 0)
    assert max(c.pages for c in cells) - min(c.pages for c in cells) <= 1

    # guest distances mirror the host's SLIT
    if len(cells) > 1:
        for a, b, v in plan.distances:
            assert v == topo.distance(cells[a].host_node, cells[b].host_node)
        assert len(plan.distances) == len(cells) ** 2


def check_refusal(topo: Topology, ask: Ask, available: frozenset[int], exc: Refusal) -> None:
    """A refusal must be justified by an independent count."""
    caps = units_per_node(topo, allowed_cpus(topo, available, ask), ask.threads)
    k = fewest_nodes(caps, ask.cores)
    assert "\n" not in str(exc)
    if exc.check == "dedicated-cpus":
        if k is not None:  # the vCPUs fit, so the emulator must be what did not
            assert ask.isolate
            usable = {c for c in available if c in topo.cpus}
            # the allocator places vCPUs first; only then does the emulator need a spare CPU
            assert "emulator" in str(exc)
            assert len(usable) - ask.vcpus < 1
    elif exc.check == "memory-page-per-cell":
        assert k is not None and ask.pages < k
    else:
        pytest.fail(f"unexpected refusal {exc.check}: {exc}")


@SETTINGS
@given(cases())
def test_plan_invariants(case: tuple[Topology, Ask, frozenset[int]]) -> None:
    topo, ask, available = case
    doc = render.parse(ask.xml())
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inputs(topo, available))
    if ev.failed is not None:
        check_refusal(topo, ask, available, ev.refusal())
        return
    assert ev.plan is not None
    assert all(c.ok is not False for c in ev.checks)
    check_plan(topo, ask, available, ev.plan)


@SETTINGS
@given(cases())
def test_rendered_xml_round_trips(case: tuple[Topology, Ask, frozenset[int]]) -> None:
    topo, ask, available = case
    inp = inputs(topo, available)
    try:
        first = render.render(ask.xml(), inp)
    except Refusal as exc:
        check_refusal(topo, ask, available, exc)
        return
    plan = first.plan
    check_plan(topo, ask, available, plan)

    # deterministic: the same input renders the same bytes
    assert render.render(ask.xml(), inp).xml == first.xml

    # what the XML says is what the plan says
    facts = domainxml.read(safe.parse(first.xml))
    assert hardware.differences(facts, plan) == []
    assert facts.vcpupin == {v: frozenset({c}) for v, c in enumerate(plan.vcpu_pins)}
    assert facts.emulatorpin == frozenset(plan.emulator_pin)
    assert facts.emulator_cpus == frozenset(plan.emulator)
    if ask.passthrough:
        assert facts.memnodes == {c.id: frozenset({c.host_node}) for c in plan.cells}
        assert sorted(facts.page_nodesets) == sorted(
            (PAGE, frozenset({c.id})) for c in plan.cells)
        assert [(c.id, set(c.cpus), c.memory_kib) for c in facts.cells] == [
            (c.id, set(c.vcpus), c.memory_kib) for c in plan.cells]
    if ask.realtime:
        assert facts.vcpusched == ((frozenset(plan.realtime_vcpus), "fifo", plan.priority),)
        assert facts.memballoon == "none"
        assert facts.pmu_off and facts.nosharepages and facts.locked
    assert "<!-- left alone -->" in first.xml

    # idempotent: rendering the rendered domain changes nothing and keeps the pinning
    again = render.render(first.xml, inp)
    assert again.xml == first.xml
    assert again.plan.vcpu_pins == plan.vcpu_pins
    assert again.plan.kept_pinning


@SETTINGS
@given(cases(), st.data())
def test_valid_pinning_is_kept_when_the_cpuset_shrinks(
        case: tuple[Topology, Ask, frozenset[int]], data: st.DataObject) -> None:
    topo, ask, available = case
    try:
        first = render.render(ask.xml(), inputs(topo, available))
    except Refusal:
        return
    held = first.plan.cpus
    extra = data.draw(st.frozensets(st.sampled_from(sorted(available))))
    smaller = held | (extra & available)
    second = render.render(first.xml, inputs(topo, smaller))
    assert second.plan.vcpu_pins == first.plan.vcpu_pins
    assert second.plan.emulator == first.plan.emulator
    assert second.plan.cells == first.plan.cells
    assert second.xml == first.xml


@SETTINGS
@given(cases())
def test_vcpusched_only_where_libvirt_can_use_it(
        case: tuple[Topology, Ask, frozenset[int]]) -> None:
    topo, ask, available = case
    assume(ask.realtime)
    try:
        with_sched = render.render(ask.xml(), inputs(topo, available, vcpusched=True))
        without = render.render(ask.xml(), inputs(topo, available, vcpusched=False))
    except Refusal:
        return
    assert "<vcpusched" in with_sched.xml
    assert "<vcpusched" not in without.xml
    assert with_sched.plan.vcpu_pins == without.plan.vcpu_pins
    # a definition without <vcpusched> is tolerated where libvirt could have used it
    facts = domainxml.read(safe.parse(without.xml))
    assert hardware.differences(facts, with_sched.plan) == []
    # but a definition with <vcpusched> is stale on a node that needs a group budget
    facts = domainxml.read(safe.parse(with_sched.xml))
    assert hardware.differences(facts, without.plan) != []
