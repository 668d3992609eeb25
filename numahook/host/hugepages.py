"""Per-NUMA-node hugepage pools: reserve what a domain needs, give back exactly that.

A pool is ``(node, size_kib)`` under
``<sysfs>/devices/system/node/nodeN/hugepages/hugepages-<size>kB/``. Reserving raises the
pool's ``nr_hugepages`` and reads it back, because the kernel may deliver fewer pages
than asked when memory is fragmented. Every change is journalled before it is made
(write-ahead) and after, so a process killed in between leaves enough to roll back
without ever lowering a pool below what the administrator configured.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping

from numahook import faults
from numahook import log as logmod
from numahook.core.units import counted, human_kib, plural
from numahook.errors import HostError, NumahookError, Refusal
from numahook.host import fsutil
from numahook.records import NamedTuple

log = logmod.get(__name__)

PoolKey = tuple[int, int]  # (node, size_kib)


class Pending(NamedTuple):
    """A write about to happen to a pool's ``nr_hugepages``: its value before, and by how much."""

    before: int
    delta: int


#: journal(added, pending): persist both before returning, or raise to stop the change.
Journal = Callable[[dict[PoolKey, int], dict[PoolKey, Pending]], None]

_SIZE_DIR = re.compile(r"^hugepages-([0-9]{1,9})kB\Z")


class PoolCounts(NamedTuple):
    nr: int
    free: int
    surplus: int


def pool_name(pool: PoolKey) -> str:
    """A pool in a message: "the 2 MiB pool of node 0"."""
    return f"the {human_kib(pool[1])} pool of node {pool[0]}"


def describe(pools: Mapping[PoolKey, int]) -> str:
    """Pages per pool in a message: "64 pages of 2 MiB on node 0", or "no pages"."""
    parts = [f"{counted(n, 'page')} of {human_kib(size)} on node {node}"
             for (node, size), n in sorted(pools.items()) if n]
    return ", ".join(parts) or "no pages"


def node_dir(sysfs_root: str, node: int) -> str:
    return fsutil.under(sysfs_root, "devices/system/node", f"node{int(node)}")


def pool_dir(sysfs_root: str, pool: PoolKey) -> str:
    node, size = pool
    return os.path.join(node_dir(sysfs_root, node), "hugepages", f"hugepages-{int(size)}kB")


def supported_sizes(sysfs_root: str, node: int) -> list[int]:
    """Hugepage sizes (kB) the host offers on ``node``, ascending."""
    try:
        names = os.listdir(os.path.join(node_dir(sysfs_root, node), "hugepages"))
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(_SIZE_DIR.match, names) if m)


def counts(sysfs_root: str, pool: PoolKey) -> PoolCounts:
    d = pool_dir(sysfs_root, pool)
    return PoolCounts(
        fsutil.read_int(os.path.join(d, "nr_hugepages")),
        fsutil.read_int(os.path.join(d, "free_hugepages")),
        fsutil.read_int(os.path.join(d, "surplus_hugepages")),
    )


def check_pools(pools: list[PoolKey], sysfs_root: str = "/sys") -> None:
    """Refuse pools the host does not have, naming what it does have."""
    for node, size in pools:
        if not fsutil.is_dir(node_dir(sysfs_root, node)):
            raise Refusal(
                f"NUMA node {node} does not exist on this host; pin the domain to CPUs of "
                "existing nodes",
                check="hugepage-node",
            )
        if fsutil.is_dir(pool_dir(sysfs_root, (node, size))):
            continue
        sizes = supported_sizes(sysfs_root, node)
        offered = " and ".join(f"{s} kB" for s in sizes) or "no hugepage size at all"
        raise Refusal(
            f"node {node} has no {size} kB hugepages; this host supports {offered}, so use "
            "one of those in the domain's <memoryBacking><hugepages>",
            check="hugepage-size",
        )


_MEMFREE = re.compile(r"^Node\s+[0-9]+\s+MemFree:\s+([0-9]{1,15})\s+kB", re.MULTILINE)


class Supply(NamedTuple):
    """What :func:`reserve` would find in one pool now: pages free, and how many more the
    node's free memory could hold (an upper bound: fragmentation may give fewer)."""

    node: int
    size_kib: int
    need: int
    free: int
    addable: int

    @property
    def enough(self) -> bool:
        return self.free + self.addable >= self.need


def supply(need: Mapping[PoolKey, int], sysfs_root: str = "/sys") -> list[Supply]:
    """Each pool of ``need`` as :func:`reserve` would start on it, without changing it.

    For ``numahook check``: free pages count as they are, as in ``reserve``, and the rest
    must come from the node's ``MemFree``.
    """
    pools = sorted(p for p, n in need.items() if n > 0)
    check_pools(pools, sysfs_root)
    out = []
    for node, size in pools:
        text = fsutil.read_text(os.path.join(node_dir(sysfs_root, node), "meminfo"))
        m = _MEMFREE.search(text)
        memfree = int(m.group(1)) if m else 0
        out.append(Supply(node, size, need[(node, size)], counts(sysfs_root, (node, size)).free,
                          memfree // size))
    return out


#: pool -> domain -> the pages its memory takes there (what the claims say)
Held = Mapping[PoolKey, Mapping[str, int]]


def supply_shortfall(rows: list[Supply], held: Held | None = None) -> str | None:
    """The refusal for pools :func:`supply` found short, with their numbers; None if none.

    ``held`` names the other domains whose pages fill those pools, so the fix can say
    which to stop."""
    short = [r for r in rows if not r.enough]
    if not short:
        return None
    parts = [f"need {r.need} pages of {human_kib(r.size_kib)} on node {r.node}, {r.free} "
             f"free and at most {r.addable} can be added from its free memory"
             + _held_there((held or {}).get((r.node, r.size_kib), {})) for r in short]
    return ("not enough hugepages: " + "; ".join(parts)
            + _fix([(r.node, r.size_kib) for r in short], held))


def _held_there(pages: Mapping[str, int]) -> str:
    """", while rt1 takes 512 pages there and rt2 256": the other domains in one pool,
    most pages first."""
    names = sorted(pages, key=lambda n: (-pages[n], n))
    if not names:
        return ""
    parts = [f"{n} {pages[n]}" for n in names[:_NAMED]]
    parts[0] = f"{names[0]} takes {pages[names[0]]} pages there"
    if len(names) > _NAMED:
        parts.append(f"{counted(len(names) - _NAMED, 'more domain')} "
                     f"{sum(pages[n] for n in names[_NAMED:])}")
    return ", while " + _and(parts)


def _and(parts: list[str], word: str = "and") -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" {word} " + parts[-1]


#: a shortage names at most this many domains per pool, then counts the rest
_NAMED = 4


def _fix(pools: list[PoolKey], held: Held | None) -> str:
    """The shortage's fix: free memory on the nodes, stop a domain holding pages there, or
    ask for less."""
    pages: dict[str, int] = {}
    for pool in pools:
        for name, n in (held or {}).get(pool, {}).items():
            pages[name] = pages.get(name, 0) + n
    names = sorted(pages, key=lambda n: (-pages[n], n))  # the biggest holders first
    where = _nodes(node for node, _ in pools)
    if not names:
        return f"; free memory on {where} or lower the domain's memory"
    listed = names[:_NAMED] + (["another"] if len(names) > _NAMED else [])
    return f"; free memory on {where}, stop {_and(listed, 'or')}, or lower the domain's memory"


def _nodes(ids: Iterable[int]) -> str:
    """``node 1`` or ``nodes 0, 1``, for the fixes of the shortage messages."""
    nodes = sorted(set(ids))
    return plural(len(nodes), "node") + " " + ", ".join(map(str, nodes))


class _Ledger:
    """What we added per pool plus the one write in flight, journalled on every change."""

    def __init__(self, added: Mapping[PoolKey, int], journal: Journal | None) -> None:
        self.added: dict[PoolKey, int] = {p: n for p, n in added.items() if n}
        self.pending: dict[PoolKey, Pending] = {}
        self.journal = journal

    def _note(self) -> None:
        if self.journal is not None:
            self.journal(dict(self.added), dict(self.pending))

    def change(self, sysfs_root: str, pool: PoolKey, delta: int) -> int:
        """Move ``nr_hugepages`` by ``delta``; return the change the kernel really made."""
        knob = os.path.join(pool_dir(sysfs_root, pool), "nr_hugepages")
        before = fsutil.read_int(knob)
        target = max(0, before + delta)
        self.pending[pool] = Pending(before, target - before)
        self._note()  # write-ahead: if this raises, nothing was touched
        faults.point("hugepages.pending")
        failure: HostError | None = None
        try:
            fsutil.write_knob(knob, str(target))
        except HostError as exc:
            failure = exc
        faults.point("hugepages.written")
        after = fsutil.read_int(knob)
        done = _clamp(after - before, target - before)
        self.added[pool] = self.added.get(pool, 0) + done
        if not self.added[pool]:
            del self.added[pool]
        del self.pending[pool]
        self._note()
        if failure is not None:
            raise failure
        return done


def _clamp(observed: int, intended: int) -> int:
    """The part of ``observed`` that our ``intended`` change can account for."""
    if intended >= 0:
        return max(0, min(observed, intended))
    return min(0, max(observed, intended))


def _compact(proc_root: str) -> None:
    try:
        fsutil.write_knob(fsutil.under(proc_root, "sys/vm/compact_memory"), "1")
    except HostError as exc:
        log.warning("memory compaction was not possible: %s", exc)


def reserve(
    need: Mapping[PoolKey, int],
    sysfs_root: str = "/sys",
    proc_root: str = "/proc",
    journal: Journal | None = None,
    compact: bool = True,
    held: Held | None = None,
) -> dict[PoolKey, int]:
    """Make ``need[pool]`` pages free in every pool; return the pages we added per pool.

    Only the deficit over what is already free is added. When the kernel delivers fewer
    pages, memory is compacted (unless ``compact`` is off, config [hugepages] compact) and
    the rest asked for once more. If a pool is still short, every page added so far is
    given back and a Refusal names each shortage, and ``held``'s domains there.
    """
    pools = sorted(p for p, n in need.items() if n > 0)
    check_pools(pools, sysfs_root)
    ledger = _Ledger({}, journal)
    asked: dict[PoolKey, int] = {}
    short: dict[PoolKey, int] = {}
    compacted = not compact
    try:
        for pool in pools:
            for attempt in range(2):
                free = counts(sysfs_root, pool).free
                deficit = need[pool] - free
                if deficit <= 0:
                    break
                if attempt == 1:
                    if not compacted:
                        _compact(proc_root)
                        compacted = True
                    log.info("node %d gave %d of %d kB pages short; retrying after compaction",
                             pool[0], deficit, pool[1])
                asked.setdefault(pool, deficit)  # the message reports the first deficit
                ledger.change(sysfs_root, pool, deficit)
            free = counts(sysfs_root, pool).free
            if free < need[pool]:
                short[pool] = free
    except NumahookError:
        _rollback(ledger, sysfs_root)
        raise
    if short:
        message = _shortage_message(need, short, asked, dict(ledger.added), held)
        _rollback(ledger, sysfs_root)
        raise Refusal(message, check="hugepages")
    for pool, n in sorted(ledger.added.items()):
        log.info("reserved %d hugepages of %d kB on node %d", n, pool[1], pool[0])
    return dict(ledger.added)


def _rollback(ledger: _Ledger, sysfs_root: str) -> None:
    """Give back everything the ledger added; a failure here is logged, the cause is raised."""
    try:
        _release_into(ledger, sysfs_root)
    except NumahookError as exc:
        log.error("giving back the hugepages added so far failed: %s", exc)


def _shortage_message(
    need: Mapping[PoolKey, int],
    short: Mapping[PoolKey, int],
    asked: Mapping[PoolKey, int],
    got: Mapping[PoolKey, int],
    held: Held | None = None,
) -> str:
    by_size: dict[int, list[str]] = {}
    for (node, size), free in sorted(short.items()):
        part = f"node {node} needs {need[(node, size)]} and has {free} free"
        if (node, size) in asked:
            part += f" (the kernel gave {got.get((node, size), 0)} of {asked[(node, size)]} asked)"
        part += _held_there((held or {}).get((node, size), {}))
        by_size.setdefault(size, []).append(part)
    clauses = [f"not enough {size} kB hugepages: " + ", ".join(parts)
               for size, parts in sorted(by_size.items())]
    return "; and ".join(clauses) + _fix(sorted(short), held)


def release(
    added: Mapping[PoolKey, int],
    sysfs_root: str = "/sys",
    journal: Journal | None = None,
) -> None:
    """Lower each pool's ``nr_hugepages`` by exactly what we added (never below 0).

    Pages the administrator configured are never touched. Every pool is tried; the
    first failure is raised afterwards, and the journal says what is still held.
    """
    _release_into(_Ledger(added, journal), sysfs_root)


def _release_into(ledger: _Ledger, sysfs_root: str) -> None:
    first: NumahookError | None = None
    for pool in sorted(ledger.added):
        if not fsutil.is_dir(pool_dir(sysfs_root, pool)):
            log.warning("hugepage pool %s is gone; nothing to give back there",
                        pool_name(pool))
            continue
        try:
            ledger.change(sysfs_root, pool, -ledger.added[pool])
        except NumahookError as exc:
            log.error("giving back %d pages of %d kB on node %d failed: %s",
                      ledger.added.get(pool, 0), pool[1], pool[0], exc)
            first = first or exc
    if first is not None:
        raise first


def settle(
    added: Mapping[PoolKey, int],
    pending: Mapping[PoolKey, Pending],
    sysfs_root: str = "/sys",
) -> dict[PoolKey, int]:
    """Fold writes interrupted by a crash into ``added`` by reading the pools back.

    A pending raise counts only the pages the pool really grew by (up to what was
    asked); a pending lowering counts only what really went away. Unknowable cases round
    towards holding fewer pages, so a later release can never eat the admin's pages.
    """
    out = {p: n for p, n in added.items() if n}
    for pool, intent in pending.items():
        try:
            now = counts(sysfs_root, pool).nr
        except NumahookError as exc:
            log.warning("cannot read %s to settle a crash: %s", pool_name(pool), exc)
            continue
        done = _clamp(now - intent.before, intent.delta)
        if intent.delta >= 0:
            out[pool] = out.get(pool, 0) + done
        else:
            out[pool] = max(0, out.get(pool, 0) + done)
        if not out[pool]:
            del out[pool]
    return out

