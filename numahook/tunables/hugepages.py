"""Hugepages: the pages a domain's plan needs, reserved per node at ``prepare`` and given
back at release (host/hugepages.py does the pool arithmetic).

Its claim entry holds ``need`` (promised to the domain between ``prepare`` and
``started``, so two starts never count the same free pages), ``added`` (pages we raised a
pool by, the only pages ever given back) and ``pending`` (a write in flight, journalled
before it, which :meth:`Hugepages.recover` settles after a crash).
"""

from __future__ import annotations

from numahook.records import field, record
from numahook.tunables.base import Tunable, integer, shown

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from numahook.config import Config
    from numahook.core.plan import Check, Plan
    from numahook.core.render import Parsed
    from numahook.host.hugepages import Pending, PoolKey
    from numahook.tunables.base import Journal
    from numahook.tunables.view import View


@record(frozen=True)
class Entry:
    #: (node, size_kib) -> pages the domain needs there
    need: Mapping[PoolKey, int] = field(default_factory=dict)
    #: (node, size_kib) -> pages we added to that pool
    added: Mapping[PoolKey, int] = field(default_factory=dict)
    #: (node, size_kib) -> an nr_hugepages write journalled but not yet confirmed
    pending: Mapping[PoolKey, Pending] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"need": _pools(self.need), "added": _pools(self.added),
                "pending": {f"{n}:{s}": list(p) for (n, s), p in sorted(self.pending.items())}}


def _pools(pools: Mapping[PoolKey, int]) -> dict[str, int]:
    return {f"{n}:{s}": v for (n, s), v in sorted(pools.items())}


def entry_of(claim: Any) -> Entry:
    """A claim's hugepage entry (empty when it holds none): for whoever counts pages."""
    return claim.entry(TUNABLE.name) or Entry()


def promised(claims: list[Any], exclude_uuid: str) -> dict[PoolKey, int]:
    """Pages other starting domains were promised but QEMU has not mapped yet."""
    out: dict[PoolKey, int] = {}
    for claim in claims:
        if claim.uuid == exclude_uuid or claim.phase != "reserved":
            continue
        for pool, pages in entry_of(claim).need.items():
            out[pool] = out.get(pool, 0) + pages
    return out


def held_by(claims: list[Any]) -> dict[PoolKey, dict[str, int]]:
    """Pool -> domain -> the pages its memory takes there: whom a shortage names."""
    out: dict[PoolKey, dict[str, int]] = {}
    for claim in claims:
        for pool, pages in entry_of(claim).need.items():
            if pages:
                mine = out.setdefault(pool, {})
                mine[claim.name] = mine.get(claim.name, 0) + pages
    return out


class Hugepages(Tunable):
    name = "hugepages"
    step = "prepare"
    attributes = ()  # libvirt's own <memoryBacking><hugepages>, not our metadata
    plan_fields = ("page_kib", "cells", "memory_node", "memory_pages")

    def wanted(self, doc: Parsed | View) -> bool:
        return doc.facts.hugepages

    def precondition(self, cfg: Config, doc: Parsed, plan: Plan) -> Check | None:
        return None  # the plan's own check, hugepages-available (ops/hostinputs.py)

    def intent(self, doc: Parsed, plan: Plan) -> Entry | None:
        return Entry(need=plan.page_need) if plan.page_need else None

    def _journal(self, journal: Journal, entry: Entry) -> Any:
        from numahook import records

        def note(added: dict[PoolKey, int], pending: dict[PoolKey, Pending]) -> None:
            journal.put(self.name, records.replace(journal.entry(self.name) or entry,
                                                   added=added, pending=pending))
        return note

    def apply(self, cfg: Config, journal: Journal,
              view: View | None) -> dict[str, object] | None:
        """Make ``need`` free in each pool, on top of what other starts were promised."""
        from numahook.host import hugepages

        entry = journal.entry(self.name)
        if entry is None or not entry.need:
            return None
        asked = dict(entry.need)
        others = journal.others()
        for pool, pages in promised(others, journal.uuid).items():
            if pool in asked:
                asked[pool] += pages
        hugepages.reserve(asked, cfg.sysfs_root, cfg.proc_root, self._journal(journal, entry),
                          compact=cfg.hugepages_compact, held=held_by(others))
        return None  # admission's audit line says what was reserved

    def verify(self, cfg: Config, view: View) -> str | None:
        return None  # QEMU maps the pages at start; a pool changed later is the admin's

    def backstop(self, cfg: Config, view: View) -> str | None:
        return None  # nothing to re-apply while the domain runs: its pages are mapped

    def recover(self, cfg: Config, journal: Journal) -> None:
        """Only a holder of the state lock writes ``nr_hugepages``, so a pending record seen
        under the lock was left by a writer that died; read back now, the pool's growth
        since its write-ahead is that writer's alone."""
        from numahook import log as logmod
        from numahook import records
        from numahook.host import hugepages

        entry = journal.entry(self.name)
        if entry is None or not entry.pending:
            return
        settled = hugepages.settle(entry.added, entry.pending, cfg.sysfs_root)
        logmod.get(__name__).warning(
            "%s: a hugepage write was interrupted (a crash); it holds %s now", journal.name,
            hugepages.describe(settled))
        journal.put(self.name, records.replace(entry, added=settled, pending={}))

    def undo(self, cfg: Config, journal: Journal) -> bool:
        from numahook import log as logmod
        from numahook.errors import NumahookError
        from numahook.host import hugepages

        try:
            self.recover(cfg, journal)
            self._hand_over(cfg, journal)
            entry = journal.entry(self.name)
            if entry is not None and entry.added:
                hugepages.release(entry.added, cfg.sysfs_root, self._journal(journal, entry))
        except NumahookError as exc:
            logmod.get(__name__).error("giving back the hugepages of %s failed: %s",
                                       journal.name, exc)
            return False
        return True

    def _hand_over(self, cfg: Config, journal: Journal) -> None:
        """Pages this claim added that other domains now count on change owner, not pool.

        A stopping domain's pages turn free when its QEMU exits, before libvirt runs the
        release hook; a domain starting in between is admitted on them without adding
        any. Lowering the pool then would take its RAM away. So the pages that claims not
        yet holding their own (their need minus what they added) can use are handed to
        them, and they give them back when they stop: every page we added is still given
        back exactly once. The giver's record shrinks before the taker's grows, so a
        crash in between can strand pages but never make two claims own the same ones.
        """
        from numahook import log as logmod
        from numahook import records
        from numahook.errors import NumahookError
        from numahook.host import hugepages

        entry = journal.entry(self.name)
        if entry is None or not entry.added:
            return
        others = sorted(journal.others(), key=lambda c: c.created)
        keep = dict(entry.added)
        transfers: dict[str, dict[PoolKey, int]] = {}
        for pool, added in sorted(entry.added.items()):
            try:
                free = hugepages.counts(cfg.sysfs_root, pool).free
            except NumahookError:
                continue  # the pool is gone; release says so
            waiting = sum(entry_of(c).need.get(pool, 0) for c in others
                          if c.phase in ("claimed", "reserved"))
            # what the pool can lose without taking pages anyone counts on
            retained = max(0, added - max(0, free - waiting))
            for other in others:
                if retained <= 0:
                    break
                theirs = entry_of(other)
                wants = theirs.need.get(pool, 0) - theirs.added.get(pool, 0)
                if wants <= 0:
                    continue
                n = min(wants, retained)
                transfers.setdefault(other.uuid, {})[pool] = n
                keep[pool] -= n
                retained -= n
        if not transfers:
            return
        journal.put(self.name, records.replace(
            entry, added={p: n for p, n in keep.items() if n}))
        log = logmod.get(__name__)
        names = {c.uuid: c for c in others}
        for uuid, pools in transfers.items():
            theirs = entry_of(names[uuid])
            merged = dict(theirs.added)
            for pool, n in pools.items():
                merged[pool] = merged.get(pool, 0) + n
            if not journal.put_other(uuid, self.name, records.replace(theirs, added=merged)):
                log.error("handing %s to a claim that vanished; they stay in the pool",
                          hugepages.describe(pools))
                continue
            log.info("handed %s from %s to %s, which counts on them",
                     hugepages.describe(pools), journal.name, names[uuid].name)

    def status(self, cfg: Config, view: View) -> dict[str, Any]:
        return {}  # the claim says what is held (held below); cells say where

    def held(self, entry: Entry | None) -> dict[str, Any]:
        entry = entry or Entry()
        return {"hugepages_added": {_label(p): n for p, n in entry.added.items()},
                "hugepages_need": {_label(p): n for p, n in entry.need.items()}}

    def text(self, domain: dict[str, Any]) -> list[str]:
        claim = domain.get("claim")
        if not claim:
            return []
        return [f"  holds: hugepages added {_pages(claim['hugepages_added'])}, needs "
                f"{_pages(claim['hugepages_need'])}"]

    def fast_checks(self, doc: Parsed, plan: Plan) -> dict[str, Any] | None:
        return {}  # reserved at prepare, mapped by QEMU: nothing to see at started

    def decode(self, data: Any) -> Entry:
        from numahook.host.hugepages import Pending

        return Entry(need={_pool(k): integer(v) for k, v in data["need"].items()},
                     added={_pool(k): integer(v) for k, v in data["added"].items()},
                     pending={_pool(k): Pending(integer(b), integer(d))
                              for k, (b, d) in data["pending"].items()})


def _label(pool: PoolKey) -> str:
    """A pool as ``status`` JSON names it (docs/schemas/status.schema.json): node0:2048kB."""
    return f"node{pool[0]}:{pool[1]}kB"


def _pages(labelled: dict[str, int]) -> str:
    """The JSON's pages per pool in words, as host/hugepages.py's describe says them."""
    from numahook.host import hugepages

    pools = {}
    for label, n in labelled.items():
        node, _, size = label.partition(":")
        pools[(int(node[4:]), int(size[:-2]))] = n
    return hugepages.describe(pools)


def _pool(key: str) -> PoolKey:
    node, _, size = key.partition(":")
    if not (node.isdigit() and size.isdigit()):
        raise ValueError(f"{shown(key)} is not a hugepage pool (NODE:SIZE_KIB)")
    return int(node), int(size)


TUNABLE = Hugepages()
