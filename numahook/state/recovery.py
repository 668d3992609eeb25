"""Recovery: undoing what a claim says each tunable changed, after a crash or at stop.

Rounds towards leaking rather than taking what belongs to the administrator or another
domain: a write that may not have happened is undone only as far as it is seen. Every
tunable comes from numahook/tunables/'s registry; this module names none of them.
"""

from __future__ import annotations

from numahook import faults
from numahook import log as logmod
from numahook.config import Config
from numahook.errors import NumahookError
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.tunables import REGISTRY, host_wide
from numahook.tunables.base import Tunable

log = logmod.get(__name__)


def recover(state: StateDir, cfg: Config) -> None:
    """Before a call changes the host: make every claim say what it still holds.

    Only a holder of the state lock writes what a tunable journals, so an entry with a
    write in flight seen under the lock was left by a writer that died; each tunable
    settles its own (:meth:`numahook.tunables.base.Tunable.recover`). And where /run is
    not a tmpfs, records outlive a reboot but the pools, budgets and cgroups they journal
    do not: such a claim is dropped, giving nothing back. Must run under the state lock.
    """
    for claim in state.list_claims():
        if claim.from_earlier_boot():
            log.warning("dropping the claim of %s from an earlier boot; what it held went "
                        "with that boot", claim.name)
            state.remove(claim.uuid)
            continue
        journal = ClaimJournal(state, claim)
        for tunable in REGISTRY:
            if claim.entry(tunable.name) is not None:
                tunable.recover(cfg, journal)


def rollback(journal: ClaimJournal, cfg: Config) -> bool:
    """Undo every tunable of the claim, last applied first, then drop the claim.

    Used at domain stop and by the daemon for orphans (a domain that is gone, a process
    killed mid-reservation). Real-time threads must already be gone or demoted. Returns
    False, keeping the claim with what is still held, when something could not be given
    back; the error is logged and the next call retries.
    """
    stale = journal.claim.from_earlier_boot()
    try:
        recover(journal.state, cfg)
        journal.claim = journal.state.load(journal.claim.uuid) or journal.claim
    except NumahookError as exc:
        log.error("settling interrupted writes failed: %s", exc)
    if stale:  # recover() dropped it, unless its record could not be read
        journal.state.remove(journal.claim.uuid)
        return True
    ok = True
    for tunable in reversed(REGISTRY):
        if journal.claim.entry(tunable.name) is None:
            continue
        ok = tunable.undo(cfg, journal) and ok
        faults.point(f"rollback.{tunable.name}-undone")
    if ok:
        journal.state.remove(journal.claim.uuid)
        settle_host(journal.state, cfg)
        log.info("released everything %s held", journal.claim.name)
    return ok


def settle_host(state: StateDir, cfg: Config,
                registry: tuple[Tunable, ...] = REGISTRY) -> None:
    """Every host-wide tunable's file from the claims as they are now (numahook/tunables/
    hostwide.py): after each change to the claims, under the state lock."""
    shared = host_wide(registry)
    if not shared:
        return
    claims = state.list_claims()
    for tunable in shared:
        tunable.sync(cfg, state, [e for c in claims if (e := c.entry(tunable.name)) is not None])
