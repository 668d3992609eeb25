"""Host-wide tunables: one file every domain shares (the IRQ affinity, the workqueue mask,
irqbalance's ban), derived from the union of every running claim.

A per-domain tunable saves the old value in its own claim and puts it back at stop. For a
shared file that is wrong: domain A starts (saves the host's mask, writes it without A's
CPUs), B starts (saves *that*, writes it without A's and B's), A stops and restores its
snapshot, the host's mask, and B's CPUs are back in it while B still runs. So a host-wide
tunable keeps no snapshot per domain. Its entry in a claim says only what the domain needs
(its CPUs, say); :meth:`HostWide.sync` computes the value from every claim's entry, saves
the host's own value once (in the state directory, before the first write) and puts it
back when the last claim that needs it is gone. ``sync`` runs under the state lock after
every change to the claims (numahook/state/recovery.py's ``settle_host``), so the file
always follows the claims, in any stop order and after any crash.
"""

from __future__ import annotations

from numahook.tunables.base import Tunable

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

    from numahook.config import Config
    from numahook.tunables.base import Journal, Store


class HostWide(Tunable):
    """A tunable whose host value follows every running claim's entry."""

    def read(self, cfg: Config) -> str:
        """The host's value now."""
        raise NotImplementedError

    def write(self, cfg: Config, value: str) -> None:
        """Set the host's value; raise NumahookError when the kernel refuses."""
        raise NotImplementedError

    def combine(self, original: str, entries: list[Any]) -> str:
        """The value every running domain together needs, from the host's own."""
        raise NotImplementedError

    def undo(self, cfg: Config, journal: Journal) -> bool:
        """Nothing per domain: dropping the claim is the undo, and ``sync`` then derives
        the file from the claims that remain."""
        return True

    def sync(self, cfg: Config, store: Store, entries: list[Any]) -> None:
        saved = store.original(self.name)
        if not entries:
            if saved is not None:
                self.write(cfg, saved)
                store.forget(self.name)
            return
        if saved is None:
            saved = self.read(cfg)
            store.save_original(self.name, saved)  # before the first write
        want = self.combine(saved, entries)
        if self.read(cfg) != want:
            self.write(cfg, want)
