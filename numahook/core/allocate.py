"""Choose host CPUs for a domain's vCPUs (and its isolated emulator).

Policy, in order: keep a still-valid existing pinning (guests should not see their
topology change for nothing); use the fewest NUMA nodes, then the closest ones (SLIT),
then the tightest fit; put guest thread siblings on host thread siblings; take whole
free cores before split ones. Deterministic: same inputs, same answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

from numahook.core import cpulist
from numahook.core.topology import Topology
from numahook.errors import Refusal
from numahook.records import record

#: Beyond this many candidate nodes, node selection is greedy instead of exhaustive.
_EXHAUSTIVE_NODES = 16
#: threadPolicy values under which the isolated emulator thread takes a whole core
_WHOLE_CORE = frozenset({"isolate", "require"})


@record(frozen=True)
class Allocation:
    #: host CPU of each vCPU, by vCPU id
    vcpus: tuple[int, ...]
    #: extra CPUs (the isolated emulator), empty when not asked for
    extra: tuple[int, ...]
    kept: bool
    #: host node of each guest cell, when allocated for a fixed guest shape
    cell_nodes: tuple[int, ...] = ()
    #: threadPolicy isolate: the vCPU cores' other threads, held idle for this domain
    held: tuple[int, ...] = ()


def _units(topo: Topology, cpus: frozenset[int], threads: int,
           policy: str = "prefer") -> list[tuple[int, ...]]:
    """Allocation units on one node: cores' free siblings, whole free cores first.

    ``isolate``: one unit per whole free core, its lowest CPU (the rest are held).
    """
    cores: dict[tuple[int, int, int], list[int]] = {}
    for c in sorted(cpus):
        cores.setdefault(topo.core_key(c), []).append(c)
    whole: list[list[int]] = []
    split: list[list[int]] = []
    for key in sorted(cores):
        free = cores[key]
        online_siblings = topo.cpus[free[0]].siblings
        (whole if len(free) == len(online_siblings) else split).append(free)
    if policy == "isolate":
        return [(free[0],) for free in whole]
    units: list[tuple[int, ...]] = []
    for free in whole + split:
        if threads == 1:
            units.extend((c,) for c in free)
        else:
            units.extend(tuple(free[i:i + threads]) for i in range(0, len(free) - threads + 1,
                                                                     threads))
    return units


def held_siblings(topo: Topology, pins: Sequence[int], policy: str) -> tuple[int, ...]:
    """``isolate``: the other threads of each vCPU's core, held so no one else gets them."""
    if policy != "isolate":
        return ()
    return tuple(sorted({s for c in pins for s in topo.cpus[c].siblings} - set(pins)))


def holding(holders: Mapping[int, str] | None, cpus: Iterable[int]) -> dict[str, frozenset[int]]:
    """Domain name -> the CPUs of ``cpus`` it holds, for the refusals below to name."""
    out: dict[str, set[int]] = {}
    for c in cpus:
        name = (holders or {}).get(c)
        if name is not None:
            out.setdefault(name, set()).add(c)
    return {n: frozenset(v) for n, v in sorted(out.items())}


#: a refusal names at most this many holders, then counts the rest
_NAMED = 4


def who_holds(held: Mapping[str, frozenset[int]]) -> str:
    """"rt1 holds 2-3 and rt2 holds 4-5": what another domain took, so the operator sees
    which one to stop instead of guessing from CPU numbers."""
    names = list(held)
    parts = [f"{n} holds {cpulist.format(held[n])}" for n in names[:_NAMED]]
    if len(names) > _NAMED:
        rest = frozenset(c for n in names[_NAMED:] for c in held[n])
        parts.append(f"{len(names) - _NAMED} more domains hold {cpulist.format(rest)}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def which(held: Mapping[str, frozenset[int]]) -> str:
    """"rt1 or rt2": the domains a fix may stop."""
    names = list(held)[:_NAMED] + (["another"] if len(held) > _NAMED else [])
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _as_held(held: Mapping[str, frozenset[int]]) -> str:
    return f", as {who_holds(held)}" if held else ""


def _valid_kept(topo: Topology, available: frozenset[int], keep: Mapping[int, frozenset[int]],
                count: int, threads: int, policy: str = "prefer",
                usable: frozenset[int] = frozenset()) -> tuple[int, ...] | None:
    if sorted(keep) != list(range(count)) or any(len(v) != 1 for v in keep.values()):
        return None
    pins = tuple(next(iter(keep[i])) for i in range(count))
    if len(set(pins)) != count or not set(pins) <= available:
        return None
    for g in range(0, count, threads):
        group = pins[g:g + threads]
        if len({topo.core_key(c) for c in group}) != 1:
            return None
    if policy == "isolate" and (len({topo.core_key(c) for c in pins}) != count
                                or not set(held_siblings(topo, pins, policy)) <= usable):
        return None  # a core shared between vCPUs, or a sibling someone else now holds
    # cells must not split a guest core across host nodes, and vCPU order must follow nodes
    nodes = [topo.node_of(c) for c in pins]
    if nodes != sorted(nodes):
        return None
    return pins


def _choose_nodes(topo: Topology, caps: dict[int, tuple[int, int]], units: int,
                  cpus: int) -> list[int]:
    """Fewest nodes that fit, then closest together, then least left over; node ids break ties."""
    ids = sorted(n for n, (u, _) in caps.items() if u > 0)

    def fits(combo: Sequence[int]) -> bool:
        return sum(caps[n][0] for n in combo) >= units

    def score(combo: Sequence[int]) -> tuple[int, int, int, tuple[int, ...]]:
        spread = sum(topo.distance(a, b) for a, b in itertools.combinations(combo, 2))
        room = sum(caps[n][1] for n in combo) - cpus
        # vCPU nodes come first; room for the emulator on them is only a preference
        return (spread, room < 0, abs(room), tuple(combo))

    if len(ids) <= _EXHAUSTIVE_NODES:
        for k in range(1, len(ids) + 1):
            combos: list[tuple[int, ...]] = [c for c in itertools.combinations(ids, k)
                                             if fits(c)]
            if combos:
                best = min(combos, key=score)
                return sorted(best)
        return []
    # many nodes: largest first, then the best-fitting last node
    order = sorted(ids, key=lambda n: (-caps[n][0], n))
    chosen: list[int] = []
    for n in order:
        if fits(chosen):
            break
        chosen.append(n)
    return sorted(chosen) if fits(chosen) else []


def allocate(topo: Topology, available: frozenset[int], count: int, threads: int = 1,
             extra: int = 0, keep: Mapping[int, frozenset[int]] | None = None,
             keep_extra: frozenset[int] | None = None,
             vcpu_nodes: frozenset[int] | None = None,
             where: str = "on nodes with memory", policy: str = "prefer",
             one_node: bool = False, holders: Mapping[int, str] | None = None) -> Allocation:
    """Pin ``count`` vCPUs (guest cores of ``threads`` siblings) plus ``extra`` CPUs.

    ``vcpu_nodes`` limits the nodes vCPUs may use (passthrough binds each cell's memory
    to its node, so nodes without memory are left out; device locality may narrow them
    further), and ``where`` says which in a refusal; the emulator may go anywhere.
    ``policy`` is threadPolicy: ``isolate`` puts each vCPU on a whole free core and holds
    its siblings; with ``isolate`` or ``require`` the emulator takes a whole core too.
    ``one_node``: the vCPUs and the emulator all on one node, as a domain whose memory is
    bound to a single node needs (QEMU places its memory preallocation threads on that
    node's CPUs, inside the emulator's cpuset).
    ``holders``: CPU -> the other domain that holds it, so that a refusal names them.
    """
    if one_node:
        return _on_one_node(topo, available, count, threads, extra, keep, keep_extra,
                            vcpu_nodes, where, policy, holders)
    usable = frozenset(c for c in available if c in topo.cpus)
    allowed = frozenset(c for c in usable
                        if vcpu_nodes is None or topo.node_of(c) in vcpu_nodes)
    whole = policy in _WHOLE_CORE
    if count % threads:
        raise Refusal(f"{count} vCPUs cannot be split into guest cores of {threads} threads",
                      "cpu-topology")
    kept = (_valid_kept(topo, allowed, keep or {}, count, threads, policy, usable)
            if keep else None)
    if kept is not None:
        held = held_siblings(topo, kept, policy)
        rest = usable - set(kept) - set(held)
        if extra == 0:
            return Allocation(kept, (), True, held=held)
        if keep_extra and _valid_extra(topo, keep_extra, rest, kept, extra, whole):
            return Allocation(kept, tuple(sorted(keep_extra)), True, held=held)
        spare = _pick_extra(topo, rest, kept, extra, whole=whole)
        if spare is not None:
            return Allocation(kept, spare, True, held=held)

    need_units = count // threads
    per_node: dict[int, list[tuple[int, ...]]] = {}
    caps: dict[int, tuple[int, int]] = {}
    for n in sorted(topo.nodes):
        mine = allowed & topo.nodes[n].cpus
        per_node[n] = _units(topo, mine, threads, policy)
        caps[n] = (len(per_node[n]), len(mine))
    nodes = _choose_nodes(topo, caps, need_units, count + extra)
    if not nodes:
        shape = f"{count} vCPUs" + (f" in cores of {threads} threads" if threads > 1 else "")
        shape += " on cores of their own" if policy == "isolate" else ""
        shape += f" plus {extra} emulator CPU" if extra else ""
        whole_cores = sum(u for u, _ in caps.values())
        others = holding(holders, (c for c in topo.cpus
                                   if vcpu_nodes is None or topo.node_of(c) in vcpu_nodes))
        raise Refusal(
            f"not enough dedicated CPUs: the domain needs {shape}, but only "
            f"{len(allowed)} CPUs ({cpulist.format(allowed) or 'none'}) are free in its cpuset"
            + ("" if allowed == usable else f" {where}")
            + (f", {whole_cores} whole cores among them" if policy == "isolate" else "")
            + _as_held(others) + "; widen the partition's cpuset or stop another dedicated "
            "domain" + (f" ({which(others)})" if others else "")
            + (", or set threadPolicy='prefer'" if policy == "isolate" else ""),
            "dedicated-cpus",
        )
    # balance vCPUs across the chosen nodes (symmetric guest cells match the even memory
    # split and the guest's sockets); small nodes give what they have, big ones the rest
    taken: list[tuple[int, ...]] = []
    remaining = need_units
    by_room = sorted(nodes, key=lambda n: (caps[n][0], n))
    for i, n in enumerate(by_room):
        share = min(caps[n][0], -(-remaining // (len(by_room) - i)))
        taken.extend(per_node[n][:share])
        remaining -= share
    taken.sort(key=lambda u: (topo.node_of(u[0]), u))
    pins = tuple(c for u in taken for c in u)
    held = held_siblings(topo, pins, policy)
    spare = _pick_extra(topo, usable - set(pins) - set(held), pins, extra, prefer=nodes,
                        whole=whole)
    if spare is None:
        what = (f"no whole core (threadPolicy='{policy}' gives it a core of its own)" if whole
                else "no CPU")
        others = holding(holders, topo.cpus)
        raise Refusal(
            f"not enough dedicated CPUs: {count} vCPUs fit, but {what} is left for the "
            f"isolated emulator thread in {cpulist.format(usable)}{_as_held(others)}; widen "
            "the partition's cpuset" + (f", stop {which(others)}, " if others else " ")
            + "or set isolateEmulatorThread=\"false\"",
            "dedicated-cpus",
        )
    return Allocation(pins, spare, False, held=held)


def _on_one_node(topo: Topology, available: frozenset[int], count: int, threads: int,
                 extra: int, keep: Mapping[int, frozenset[int]] | None,
                 keep_extra: frozenset[int] | None, vcpu_nodes: frozenset[int] | None,
                 where: str, policy: str, holders: Mapping[int, str] | None) -> Allocation:
    """:func:`allocate` with every CPU on one node: the usual choice when it already is
    (a kept pinning, the fewest nodes), else the tightest node that holds it all."""
    # its refusal, when the cpuset is short anyway, is the one
    first = allocate(topo, available, count, threads, extra, keep, keep_extra, vcpu_nodes,
                     where, policy, holders=holders)
    if len(topo.nodes_of(first.vcpus + first.extra + first.held)) == 1:
        return first
    free = {n: frozenset(c for c in available if c in topo.cpus and topo.node_of(c) == n)
            for n in sorted(topo.nodes) if vcpu_nodes is None or n in vcpu_nodes}
    kept = {topo.node_of(c) for cpus in (keep or {}).values() for c in cpus if c in topo.cpus}
    for n in sorted(free, key=lambda n: (kept != {n}, len(free[n]), n)):
        try:
            return allocate(topo, free[n], count, threads, extra, keep, keep_extra,
                            None, where, policy)
        except Refusal:
            continue
    shape = f"{count} vCPUs" + (" plus the isolated emulator thread" if extra else "")
    per_node = ", ".join(f"{len(cpus)} on node {n}" for n, cpus in free.items() if cpus)
    others = holding(holders, (c for c in topo.cpus if topo.node_of(c) in free))
    raise Refusal(
        f"its memory is on hugepages without guestMappingPassthrough, so numahook binds it "
        f"to one host node with the dedicated CPUs, but no single node has {shape} free in "
        f"its cpuset (free CPUs {where}: {per_node or 'none'}){_as_held(others)}; add "
        "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa> so the guest "
        "gets one cell per node, " + (f"stop {which(others)}, " if others else "")
        + "or use fewer vCPUs",
        "dedicated-cpus",
    )


def _cores(topo: Topology, cpus: frozenset[int]) -> dict[tuple[int, int, int], list[int]]:
    """The cores all of whose online threads are in ``cpus``, with those threads."""
    out: dict[tuple[int, int, int], list[int]] = {}
    for c in sorted(cpus):
        if topo.cpus[c].siblings <= cpus:
            out.setdefault(topo.core_key(c), []).append(c)
    return out


def _valid_extra(topo: Topology, keep: frozenset[int], rest: frozenset[int],
                 pins: Sequence[int], extra: int, whole: bool) -> bool:
    """An existing emulator pinning still fits: free, off the vCPUs' cores (whole ones)."""
    if not keep <= rest:
        return False
    if not whole:
        return len(keep) == extra
    busy = {topo.core_key(c) for c in pins}
    cores = _cores(topo, keep)
    return len(cores) == extra and not busy & set(cores) and \
        sum(len(v) for v in cores.values()) == len(keep)


def _pick_extra(topo: Topology, rest: frozenset[int], pins: Sequence[int], extra: int,
                prefer: Sequence[int] = (), whole: bool = False) -> tuple[int, ...] | None:
    """Emulator CPUs: same node as vCPU 0 if possible, on a core no vCPU uses, then nearest.

    ``whole``: ``extra`` whole free cores, every thread of them.
    """
    if extra == 0:
        return ()
    if len(rest) < extra:
        return None
    home = topo.node_of(pins[0]) if pins else (prefer[0] if prefer else 0)
    busy_cores = {topo.core_key(c) for c in pins}

    def rank(c: int) -> tuple[int, int, int]:
        return (topo.distance(home, topo.node_of(c)), topo.core_key(c) in busy_cores, c)

    if whole:
        cores = [v for k, v in _cores(topo, rest).items() if k not in busy_cores]
        if len(cores) < extra:
            return None
        cores.sort(key=lambda v: rank(v[0]))
        return tuple(sorted(c for v in cores[:extra] for c in v))
    return tuple(sorted(sorted(rest, key=rank)[:extra]))


def allocate_cells(topo: Topology, available: frozenset[int], cells: Sequence[Sequence[int]],
                   threads: int = 1, extra: int = 0,
                   vcpu_nodes: frozenset[int] | None = None,
                   policy: str = "prefer",
                   holders: Mapping[int, str] | None = None) -> Allocation:
    """Pin a fixed guest shape: each guest cell's vCPUs on one distinct host node.

    For migration and restore, where the guest's cells must not change (libvirt's ABI
    check) but the host side may: cells map to nodes in ascending order where possible.
    """
    usable = frozenset(c for c in available if c in topo.cpus
                       and (vcpu_nodes is None or topo.node_of(c) in vcpu_nodes))
    per_node = {n: _units(topo, usable & topo.nodes[n].cpus, threads, policy)
                for n in sorted(topo.nodes)}
    need = [len(c) // threads for c in cells]
    if any(len(c) % threads for c in cells):
        raise Refusal("a guest cell does not hold whole guest cores", "guest-shape")
    choice: list[int] = []

    def place(i: int) -> bool:
        if i == len(cells):
            return True
        for n in sorted(per_node):
            if n not in choice and len(per_node[n]) >= need[i]:
                choice.append(n)
                if place(i + 1):
                    return True
                choice.pop()
        return False

    if len(cells) > len(per_node) or not place(0):
        others = holding(holders, (c for c in topo.cpus
                                   if vcpu_nodes is None or topo.node_of(c) in vcpu_nodes))
        raise Refusal(
            f"no {len(cells)} distinct NUMA nodes have "
            f"{'/'.join(str(len(c)) for c in cells)} free CPUs in {cpulist.format(usable)}"
            + _as_held(others), "guest-shape")
    pins: dict[int, int] = {}
    for cell, node in zip(cells, choice):
        units = per_node[node][: len(cell) // threads]
        for vcpu, cpu in zip(cell, [c for u in units for c in u]):
            pins[vcpu] = cpu
    ordered = tuple(pins[v] for v in sorted(pins))
    held = held_siblings(topo, ordered, policy)
    rest = frozenset(c for c in available if c in topo.cpus) - set(ordered) - set(held)
    spare = _pick_extra(topo, rest, ordered, extra, prefer=choice,
                        whole=policy in _WHOLE_CORE)
    if spare is None:
        raise Refusal("no CPU is left for the isolated emulator thread", "guest-shape")
    return Allocation(ordered, spare, False, tuple(choice), held)
