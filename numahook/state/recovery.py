"""Recovery: giving back what a claim says was taken, after a crash or a hand-over.

Rounds towards leaking rather than taking what belongs to the administrator or another
domain: a write that may not have happened is undone only as far as it is seen.
"""

from __future__ import annotations

from numahook import faults
from numahook import log as logmod
from numahook.errors import NumahookError
from numahook.host import hugepages, rtsched
from numahook.host.hugepages import PoolKey
from numahook.state.statedir import ClaimJournal, StateDir

log = logmod.get(__name__)


def hand_over(journal: ClaimJournal, sysfs_root: str = "/sys") -> None:
    """Pages this claim added that other domains now count on change owner, not pool.

    A stopping domain's pages turn free when its QEMU exits, before libvirt runs the
    release hook; a domain starting in between is admitted on them without adding any.
    Lowering the pool then would take its RAM away. So the pages that claims not yet
    holding their own (their need minus what they added) can use are handed to them,
    and they give them back when they stop: every page we added is still given back
    exactly once. The giver's record shrinks before the taker's grows, so a crash in
    between can strand pages but never make two claims own the same ones.
    Must run under the state lock.
    """
    claim = journal.claim
    if not claim.hugepages:
        return
    others = sorted((c for c in journal.state.list_claims() if c.uuid != claim.uuid),
                    key=lambda c: c.created)
    keep = dict(claim.hugepages)
    transfers: dict[str, dict[PoolKey, int]] = {}
    for pool, added in sorted(claim.hugepages.items()):
        try:
            free = hugepages.counts(sysfs_root, pool).free
        except NumahookError:
            continue  # the pool is gone; release() says so
        waiting = sum(c.need.get(pool, 0) for c in others if c.phase in ("claimed", "reserved"))
        # what the pool can lose without taking pages anyone counts on
        spare = max(0, free - waiting)
        retained = max(0, added - spare)
        for other in others:
            if retained <= 0:
                break
            wants = other.need.get(pool, 0) - other.hugepages.get(pool, 0)
            if wants <= 0:
                continue
            n = min(wants, retained)
            transfers.setdefault(other.uuid, {})[pool] = n
            keep[pool] -= n
            retained -= n
    if not transfers:
        return
    journal.update(hugepages={p: n for p, n in keep.items() if n})
    for uuid, pools in transfers.items():
        taker = journal.state.load(uuid)
        if taker is None:
            log.error("handing %s to a claim that vanished; they stay in the pool",
                      hugepages.describe(pools))
            continue
        merged = dict(taker.hugepages)
        for pool, n in pools.items():
            merged[pool] = merged.get(pool, 0) + n
        ClaimJournal(journal.state, taker).update(hugepages=merged)
        log.info("handed %s from %s to %s, which counts on them", hugepages.describe(pools),
                 claim.name, taker.name)


def recover(state: StateDir, sysfs_root: str = "/sys") -> None:
    """Before a call changes a pool: make every claim say what it still holds.

    Only a holder of the state lock writes ``nr_hugepages``, so a pending record seen
    under the lock was left by a writer that died. Read back now, the pool's growth since
    its write-ahead is that writer's alone; once another start has reserved, settling
    would count that start's pages as the dead one's and give them back. And where /run
    is not a tmpfs, records outlive a reboot but the pools, budgets and cgroups they
    journal do not: such a claim is dropped, giving nothing back. Must run under the
    state lock.
    """
    for claim in state.list_claims():
        if claim.from_earlier_boot():
            log.warning("dropping the claim of %s from an earlier boot; what it held went "
                        "with that boot", claim.name)
            state.remove(claim.uuid)
        elif claim.hugepages_pending:
            settled = hugepages.settle(claim.hugepages, claim.hugepages_pending, sysfs_root)
            log.warning("%s: a hugepage write was interrupted (a crash); it holds %s now",
                        claim.name, hugepages.describe(settled))
            ClaimJournal(state, claim).update(hugepages=settled, hugepages_pending={})


def rollback(journal: ClaimJournal, sysfs_root: str = "/sys") -> bool:
    """Give back the claim's hugepages and RT budget, then drop the claim.

    Used at domain stop and by the daemon for orphans (a domain that is gone, a process
    killed mid-reservation). Real-time threads must already be gone or demoted. Returns
    False, keeping the claim with what is still held, when something could not be given
    back; the error is logged and the next call retries.
    """
    stale = journal.claim.from_earlier_boot()
    ok = True
    try:
        recover(journal.state, sysfs_root)
        journal.claim = journal.state.load(journal.claim.uuid) or journal.claim
    except NumahookError as exc:
        log.error("settling interrupted hugepage writes failed: %s", exc)
    if stale:  # recover() dropped it, unless its record could not be read
        journal.state.remove(journal.claim.uuid)
        return True
    claim = journal.claim
    try:
        if claim.hugepages_pending:  # the record could not be re-read above
            settled = hugepages.settle(claim.hugepages, claim.hugepages_pending, sysfs_root)
            journal.update(hugepages=settled, hugepages_pending={})
        hand_over(journal, sysfs_root)
        hugepages.release(journal.claim.hugepages, sysfs_root, journal.hugepages)
    except NumahookError as exc:
        log.error("giving back the hugepages of %s failed: %s", claim.name, exc)
        ok = False
    faults.point("rollback.hugepages-released")
    try:
        rtsched.undelegate(journal.claim.rt_budget, journal.rt_budget)
    except NumahookError as exc:
        log.error("giving back the real-time budget of %s failed: %s", claim.name, exc)
        ok = False
    if ok:
        journal.state.remove(claim.uuid)
        log.info("released everything %s held", claim.name)
    return ok
