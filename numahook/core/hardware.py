"""Policy: from a request, the domain's facts and the host, decide the plan. No XML, no I/O.

Semantics follow KubeVirt's converter (GuestMappingPassthrough, realtime) and Nova's
libvirt driver: one guest cell per host node of the pinned vCPUs in host order, memory
split in whole pages with the remainder on the first cells, strict memory binding.
"""

from __future__ import annotations

from numahook import records
from numahook.core import advice, cpulist, guestmem, locality, placement, prealloc, shared, smt
from numahook.core.allocate import Allocation, allocate
from numahook.core.domainxml import DomainFacts
from numahook.core.plan import Cell, Check, Evaluation, Inputs, Plan
from numahook.core.request import Request
from numahook.core.units import clip, counted, plural
from numahook.errors import InputError, Refusal


class _Checks:
    def __init__(self) -> None:
        self.items: list[Check] = []

    def ok(self, name: str, reason: str) -> None:
        self.items.append(Check(name, True, reason))

    def fail(self, name: str, reason: str) -> None:
        self.items.append(Check(name, False, reason))

    def skip(self, name: str, why: str) -> None:
        self.items.append(Check(name, None, why))

    @property
    def failing(self) -> bool:
        return any(c.ok is False for c in self.items)


def evaluate(facts: DomainFacts, req: Request, inp: Inputs) -> Evaluation:
    """Run every precondition in order and, when all pass, build the plan."""
    ck = _Checks()
    cfg, topo = inp.config, inp.topology
    name = facts.name

    # feature gates (KubeVirt's NUMA gate; ours for realtime)
    if req.passthrough:
        if cfg.numa_gate:
            ck.ok("feature-gate-numa", "the NUMA feature gate is on")
        else:
            ck.fail("feature-gate-numa", f"{name} asks for guestMappingPassthrough but the NUMA "
                    f"feature gate is off; set NUMA = true under [features] in {cfg.path}")
    if req.realtime:
        if cfg.realtime_gate:
            ck.ok("feature-gate-realtime", "the Realtime feature gate is on")
        else:
            ck.fail("feature-gate-realtime", f"{name} asks for realtime but the Realtime feature "
                    f"gate is off; set Realtime = true under [features] in {cfg.path}")

    # combinations (the seed's preconditions)
    needs_dedicated = [w for w, on in (("guestMappingPassthrough", req.passthrough),
                                       ("realtime", req.realtime),
                                       ("isolateEmulatorThread", req.isolate_emulator),
                                       ("emulatorThreadPolicy",
                                        req.emulator_thread_policy is not None),
                                       ("dedicatedMask", req.dedicated_mask is not None),
                                       ("pciNumaAffinity", req.pci_numa_affinity is not None),
                                       ("threadPolicy", req.thread_policy is not None),
                                       ("<numahook:power>", req.asks_power)) if on]
    if needs_dedicated and not req.dedicated:
        ck.fail("dedicated-cpu-placement", f"{' and '.join(needs_dedicated)} need dedicated CPUs; "
                "set dedicatedCpuPlacement=\"true\" on <numahook:cpu>")
    elif req.dedicated:
        ck.ok("dedicated-cpu-placement", "dedicatedCpuPlacement is set")
    if req.realtime:
        if req.passthrough:
            ck.ok("guest-mapping-passthrough", "realtime has guestMappingPassthrough")
        else:
            ck.fail("guest-mapping-passthrough", "realtime needs guestMappingPassthrough; add "
                    "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>")

    if req.shares_emulator and req.isolate_emulator:
        ck.fail("emulator-thread-policy", "isolateEmulatorThread=\"true\" and "
                "emulatorThreadPolicy=\"share\" contradict each other; remove one of them")
    elif req.shares_emulator:
        trouble = shared.problem(inp, name, "emulatorThreadPolicy=\"share\"")
        if trouble:
            ck.fail(shared.CHECK, trouble)
        else:
            ck.ok(shared.CHECK, shared.summary(inp, "the emulator"))

    # hugepages without passthrough: Nova's implicit one-cell topology (hw:mem_page_size),
    # all memory bound strict to the one node of the dedicated CPUs, its pages reserved there
    bound = req.dedicated and facts.hugepages and not req.passthrough
    page_kib = None
    if req.passthrough or bound:
        page_kib = guestmem.check_hugepages(ck, facts, inp, req.passthrough)
    # guest CPU topology
    topology = facts.topology or (1, 1, facts.vcpus, 1)
    product = topology[0] * topology[1] * topology[2] * topology[3]
    if product != facts.vcpus:
        ck.fail("cpu-topology", f"<cpu><topology> gives {product} vCPUs "
                f"(sockets x dies x cores x threads) but <vcpu> is {facts.vcpus}; make them agree")
    else:
        ck.ok("cpu-topology", f"{counted(facts.vcpus, 'vCPU')} as "
              f"{counted(topology[0], 'socket')}, {counted(topology[1], 'die')}, "
              f"{counted(topology[2], 'core')}, {counted(topology[3], 'thread')}")
    if req.thread_policy is not None:
        why = smt.problem(req.threads, topology[3], topo)
        if why:
            ck.fail(smt.CHECK, why)
        else:
            ck.ok(smt.CHECK, smt.summary(req.threads, topology[3], req.isolated_emulator))

    rt_vcpus: frozenset[int] = frozenset()
    if req.realtime:
        try:
            rt_vcpus = cpulist.parse_mask(req.realtime_mask, facts.vcpus)
        except InputError as exc:
            ck.fail("realtime-mask", str(exc))
        else:
            if rt_vcpus:
                ck.ok("realtime-mask", f"real-time {plural(len(rt_vcpus), 'vCPU')} "
                      f"{cpulist.format(rt_vcpus)}")
            else:
                mask = clip(req.realtime_mask or "")
                ck.fail("realtime-mask", f"realtime mask {mask} selects no vCPU; "
                        "fix the mask or remove <numahook:realtime>")

    # Nova's hw:cpu_policy=mixed: the vCPUs outside dedicatedMask float on [cpus] shared
    dedicated = shared.dedicated_vcpus(ck, req, inp, facts, topology[3], rt_vcpus)

    if not req.dedicated or ck.failing:
        if req.dedicated:
            ck.skip("dedicated-cpus", "not evaluated: an earlier precondition failed")
        return _refused(ck, facts, req, inp)

    # allocation, on the passthrough devices' nodes first (core/locality.py)
    loc = locality.assess(facts, req, inp)
    refused = locality.refusal(loc)
    if refused:
        ck.fail(locality.CHECK, refused)
        return _refused(ck, facts, req, inp)
    extra = 1 if req.isolated_emulator else 0
    with_memory = frozenset(n.id for n in topo.nodes.values() if n.memory_kib > 0)
    base = with_memory if req.passthrough or bound else frozenset(topo.nodes)

    def fit(nodes: frozenset[int], where: str = "on nodes with memory") -> Allocation:
        return allocate(topo, shared.pool(inp), len(dedicated), topology[3], extra,
                        keep=shared.kept(facts.vcpupin, dedicated, facts.vcpus),
                        keep_extra=facts.emulator_cpus,
                        vcpu_nodes=nodes if nodes != frozenset(topo.nodes) else None,
                        where=where, policy=req.threads, one_node=bound,
                        holders=inp.holders)

    fallback = None
    try:
        try:
            alloc = fit(base & loc.nodes, locality.where(loc)) if loc.steers else fit(base)
        except Refusal as exc:
            if not loc.steers:
                raise
            if loc.policy == "required":
                ck.fail(locality.CHECK, locality.required_failure(loc, str(exc)))
                return _refused(ck, facts, req, inp)
            fallback = str(exc).partition(";")[0]
            alloc = fit(base)
    except Refusal as exc:
        ck.fail(exc.check, str(exc))
        return _refused(ck, facts, req, inp)
    vcpu_nodes = topo.nodes_of(alloc.vcpus)
    floating = tuple(v for v in range(facts.vcpus) if v not in dedicated)
    alloc = shared.expand(alloc, dedicated, facts.vcpus, inp.config.shared_cpus)
    if loc.devices:
        ck.ok(locality.CHECK, locality.summary(loc, vcpu_nodes, fallback is not None))
    own = [c for v, c in enumerate(alloc.vcpus) if v in dedicated]
    ck.ok("dedicated-cpus", f"{plural(len(own), 'vCPU')} on "
          f"{plural(len(own), 'CPU')} {cpulist.format(own)}"
          + (f", emulator on {plural(len(alloc.extra), 'CPU')} {cpulist.format(alloc.extra)}"
             if alloc.extra else "")
          + (f", their siblings {cpulist.format(alloc.held)} held" if alloc.held else "")
          + (" (existing pinning kept)" if alloc.kept else ""))

    cells: tuple[Cell, ...] = ()
    if req.passthrough and page_kib is not None:
        cells = guestmem.cells(ck, facts, topo, alloc.vcpus, page_kib, floating,
                               inp.config.shared_cpus)
        if ck.failing:
            return _refused(ck, facts, req, inp)

    # the devices in the guest: behind an expander bus on their cell (core/placement.py)
    why = _unplaced(req, cfg.pci_numa_topology)
    buses, devices, dev_notes, refused = placement.plan(
        facts, cells, inp.devices, enabled=not why, reason=why, config_path=cfg.path)
    if refused:
        ck.fail(placement.CHECK, refused)
        return Evaluation(ck.items, None, advice.realtime(facts, req, None), devices)
    if buses:
        cells_used = {b.cell for b in buses}
        ck.ok(placement.CHECK, f"{counted(sum(len(b.ports) for b in buses), 'device')} behind "
              f"{counted(len(buses), 'pcie-expander-bus', 'pcie-expander-buses')}, on guest "
              f"{plural(len(cells_used), 'cell')} {cpulist.format(cells_used)}")

    plan = records.replace(_plan(facts, req, inp, alloc, cells, rt_vcpus, topology, page_kib,
                                 floating), buses=buses)
    if bound and page_kib is not None:
        plan = records.replace(plan, memory_node=vcpu_nodes[0],
                               memory_pages=facts.memory_kib // page_kib,
                               emulator_start=prealloc.start_set(
                                   topo, plan.emulator, plan.vcpu_pins, rt_vcpus, plan.held,
                                   (vcpu_nodes[0],), floating))
    notes = (locality.advice(loc, vcpu_nodes, fallback) + dev_notes
             + advice.realtime(facts, req, plan, topo))
    if req.realtime and not inp.can_lock_memory:
        notes.append("memory is not locked: libvirtd lacks CAP_SYS_RESOURCE to lift QEMU's "
                     "memlock limit, so <locked/> is left out (hugepage guest RAM is never "
                     "swapped); run libvirtd with CAP_SYS_RESOURCE to lock QEMU's own memory")
    return Evaluation(ck.items, plan, notes, devices)


def _refused(ck: _Checks, facts: DomainFacts, req: Request, inp: Inputs) -> Evaluation:
    """No plan: the checks so far, the advice, and each device where it is on the host."""
    devices = placement.plan(facts, (), inp.devices, enabled=False,
                             reason="not placed: an earlier precondition failed")[1]
    return Evaluation(ck.items, None, advice.realtime(facts, req, None), devices)


def _unplaced(req: Request, gate: bool) -> str:
    """Why the devices stay where libvirt puts them ("" when PCINUMAAwareTopology applies)."""
    if not req.passthrough:
        return "the guest has no NUMA cells (no guestMappingPassthrough)"
    if req.pci_affinity == "none":
        return "pciNumaAffinity is 'none'"
    return "" if gate else "PCINUMAAwareTopology is off"


def _plan(facts: DomainFacts, req: Request, inp: Inputs, alloc: Allocation,
          cells: tuple[Cell, ...], rt_vcpus: frozenset[int],
          topology: tuple[int, int, int, int], page_kib: int | None,
          floating: tuple[int, ...] = ()) -> Plan:
    topo = inp.topology
    float_cpus = tuple(sorted(inp.config.shared_cpus)) if floating else ()
    if alloc.extra:
        emulator = alloc.extra
    elif req.shares_emulator:  # Nova's hw:emulator_threads_policy=share
        emulator = tuple(sorted(inp.config.shared_cpus))
    else:  # float over the non-real-time vCPUs' CPUs, so the emulator never preempts RT
        non_rt = {c for v in range(facts.vcpus) if v not in rt_vcpus
                  for c in (float_cpus if v in floating else (alloc.vcpus[v],))}
        emulator = tuple(sorted(non_rt or set(alloc.vcpus)))
    distances = tuple(
        (a.id, b.id, topo.distance(a.host_node, b.host_node)) for a in cells for b in cells
    ) if len(cells) > 1 else ()
    start = prealloc.start_set(topo, emulator, alloc.vcpus, rt_vcpus, alloc.held,
                               (c.host_node for c in cells), floating)
    return Plan(
        vcpu_pins=alloc.vcpus,
        emulator=emulator,
        iothread_pins=_iothreads(facts.iothread_ids, emulator, req.io_threads_policy),
        cells=cells,
        page_kib=page_kib,
        topology=topology,
        realtime_vcpus=tuple(sorted(rt_vcpus)),
        priority=req.realtime_priority,
        vcpusched=req.realtime and inp.emit_vcpusched,
        realtime_extras=req.realtime,
        locked=req.realtime and inp.can_lock_memory,
        emulator_realtime=bool(req.realtime and rt_vcpus and alloc.extra),
        distances=distances,
        kept_pinning=alloc.kept,
        held=alloc.held,
        emulator_start=start,
        emulator_shared=req.shares_emulator,
        floating=floating,
        float_cpus=float_cpus,
    )


def replan(facts: DomainFacts, req: Request, inp: Inputs, alloc: Allocation,
           guest_cells: list[tuple[int, ...]]) -> Plan:
    """A plan for a fixed guest shape (migration, restore): the cells keep their vCPUs and
    memory, only the host nodes behind them change."""
    page_kib = facts.page_sizes[0] if facts.page_sizes else (
        inp.default_page_kib or inp.topology.default_page_kib)
    by_id = sorted(facts.cells, key=lambda c: c.id)
    cells = tuple(
        Cell(i, node, vcpus, by_id[i].memory_kib, by_id[i].memory_kib // page_kib)
        for i, (node, vcpus) in enumerate(zip(alloc.cell_nodes, guest_cells)))
    rt = cpulist.parse_mask(req.realtime_mask, facts.vcpus) if req.realtime else frozenset()
    topology = facts.topology or (1, 1, facts.vcpus, 1)
    return _plan(facts, req, inp, alloc, cells, rt, topology, page_kib)


def _iothreads(ids: tuple[int, ...], emulator: tuple[int, ...],
               policy: str | None) -> tuple[tuple[int, tuple[int, ...]], ...]:
    if policy == "auto" and len(emulator) > 1:
        return tuple((io, (emulator[i % len(emulator)],)) for i, io in enumerate(ids))
    return tuple((io, emulator) for io in ids)


def differences(facts: DomainFacts, plan: Plan) -> list[str]:
    """How a definition differs from ``plan``, one human phrase each (empty: up to date).

    Compares meaning, not text, because libvirt reformats what it stores.
    """
    out: list[str] = []
    for v in range(len(plan.vcpu_pins)):
        have, cpu = facts.vcpupin.get(v), cpulist.format(plan.pin(v))
        if have != frozenset(plan.pin(v)):
            if have:
                out.append(f"vCPU {v} is pinned to CPU {cpulist.format(have)}, but on this "
                           f"host now it belongs on CPU {cpu}")
            else:
                out.append(f"vCPU {v} is not pinned (it belongs on CPU {cpu})")
            break
    if facts.emulatorpin != frozenset(plan.emulator_pin):
        out.append(f"the emulator is pinned to {cpulist.format(facts.emulatorpin or ())}, "
                   f"not {cpulist.format(plan.emulator_pin)}")
    elif facts.emulator_own != (frozenset(plan.emulator) if plan.emulator_start else None):
        out.append("<numahook:rendered emulator> does not name the CPUs the emulator keeps "
                   f"once started ({cpulist.format(plan.emulator)})")
    want_io = {io: frozenset(cpus) for io, cpus in plan.iothread_pins}
    if {k: v for k, v in facts.iothreadpin.items()} != want_io:
        out.append("the IO thread pinning differs")
    if plan.cells:
        have_cells = [(set(c.cpus), c.memory_kib) for c in facts.cells]
        want_cells = [(set(c.vcpus), c.memory_kib) for c in plan.cells]
        if have_cells != want_cells:
            nodes = ", ".join(str(c.host_node) for c in plan.cells)
            out.append(f"the guest has {counted(len(have_cells), 'NUMA cell')}, but its CPUs "
                       f"now span {counted(len(want_cells), 'host node')} ({nodes})"
                       if len(have_cells) != len(want_cells) else
                       "the guest NUMA cells' CPUs or memory differ")
        want_mem = {c.id: frozenset({c.host_node}) for c in plan.cells}
        if facts.memnodes != want_mem:
            out.append("the strict memory binding of the cells to host nodes differs")
        want_pages = {(plan.page_kib or 0, frozenset({c.id})) for c in plan.cells}
        if set(facts.page_nodesets) != want_pages:
            out.append("the per-cell hugepage backing differs")
    if plan.memory_node is not None:
        want_tune = ("strict", frozenset({plan.memory_node}))
        if facts.numatune_memory != want_tune or facts.memnodes:
            out.append(f"its memory is not bound strict to host node {plan.memory_node}, "
                       "where its dedicated CPUs and reserved hugepages are")
    out += placement.differences(facts, plan.buses)
    want_sched = (((frozenset(plan.realtime_vcpus), "fifo", plan.priority),)
                  if plan.vcpusched else ())
    # libvirt stores <vcpusched vcpus='0-1'> as one element per vCPU: compare the union of
    # the vCPUs per policy and priority, not the elements as written
    merged: dict[tuple[str, int], frozenset[int]] = {}
    for vcpus, policy, prio in facts.vcpusched:
        merged[(policy, prio)] = merged.get((policy, prio), frozenset()) | vcpus
    have_sched = tuple((v, p, pr) for (p, pr), v in sorted(merged.items()))
    # A definition without <vcpusched> is still fine where libvirt could have used it:
    # the hook applies FIFO right after start instead. The reverse is not: on a node that
    # needs an RT group budget, libvirt's own vcpusched fails with EPERM.
    tolerable = plan.vcpusched and not have_sched
    if plan.realtime_extras and have_sched != want_sched and not tolerable:
        out.append("the <vcpusched> real-time settings differ from what this node needs")
    want_emu = ("fifo", plan.priority) if plan.vcpusched and plan.emulator_realtime else None
    if (plan.realtime_extras and facts.emulatorsched != want_emu
            and not (want_emu and facts.emulatorsched is None)):
        out.append("the <emulatorsched> real-time setting differs from what this node needs")
    return out
