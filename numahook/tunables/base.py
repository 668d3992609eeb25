"""The tunable protocol: one lifecycle per host setting a managed domain changes.

Modelled on tuned's plugins (apply, verify, unapply, with the old values stored for undo),
with numahook's write-ahead claim as the store: a tunable writes what it is about to
change into its entry of the domain's claim *before* it touches the host, so that
recovery can undo it from the entry alone after any crash (numahook/state/recovery.py).

Lifecycle, recovery, reconcile, status, ``check`` and the hook's fast path iterate
:data:`numahook.tunables.REGISTRY` and never name a tunable; tests/unit/tunables/
test_registry.py holds them to that, and to every tunable defining every part below.

Import-light on purpose: the hook's ``prepare`` imports the registry, so a tunable's
module imports host adapters inside its methods, and only what it uses is loaded.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from numahook.config import Config
    from numahook.core.plan import Check, Plan
    from numahook.core.render import Parsed
    from numahook.tunables.view import View


def shown(value: Any) -> str:
    """A value of a claim as the file spells it (JSON), not as Python would: for the
    messages of a malformed entry (tests/unit/state/test_claims.py)."""
    import json  # only for a malformed record: the hook's start-up pays nothing

    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "..."


def integer(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{shown(value)} is not an integer")
    return value


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{shown(value)} is not a string")
    return value


class Journal:
    """What a tunable may do with the claim it is journalled in (numahook/state/
    statedir.py's ClaimJournal implements it): read its entry, and save a new one before
    and after each host write. ``others`` and ``put_other`` are for tunables whose undo
    must hand something to another domain's claim (hugepages a starting domain counts on)."""

    @property
    def uuid(self) -> str:
        raise NotImplementedError

    @property
    def name(self) -> str:
        raise NotImplementedError

    def entry(self, tunable: str) -> Any:
        raise NotImplementedError

    def put(self, tunable: str, entry: Any) -> None:
        raise NotImplementedError

    def others(self) -> list[Any]:
        raise NotImplementedError

    def put_other(self, uuid: str, tunable: str, entry: Any) -> bool:
        """False: that claim is gone."""
        raise NotImplementedError


class Store:
    """Where host-wide tunables keep the host's own value (numahook/state/statedir.py's
    StateDir implements it): saved once, before the first change, until the last claim
    that needed the change is gone (numahook/tunables/hostwide.py)."""

    def original(self, tunable: str) -> str | None:
        raise NotImplementedError

    def save_original(self, tunable: str, value: str) -> None:
        raise NotImplementedError

    def forget(self, tunable: str) -> None:
        raise NotImplementedError


#: every part a tunable defines (tests/unit/tunables/test_registry.py checks each class)
PARTS = ("wanted", "precondition", "intent", "apply", "verify", "undo", "backstop",
         "status", "held", "text", "fast_checks", "decode")


class Tunable:
    """One host setting a managed domain changes while it runs.

    ``step`` is when :meth:`apply` runs: ``prepare`` (before QEMU exists, under the state
    lock, inside the admission: a failure refuses the start and undoes every tunable) or
    ``started`` (QEMU runs; under the state lock with the claim in phase ``running``).
    ``attributes`` names the metadata it reads (core/schema.py), ``plan_fields`` the
    fields of core/plan.py's Plan it applies: the plan is fitted in core, which may not
    see this layer (docs/architecture.md), so a tunable declares what it reads there.
    """

    name = ""
    step = "started"
    attributes: tuple[str, ...] = ()
    plan_fields: tuple[str, ...] = ()

    def wanted(self, doc: Parsed | View) -> bool:
        """Whether this domain's request uses this tunable at all."""
        raise NotImplementedError

    def precondition(self, cfg: Config, doc: Parsed, plan: Plan) -> Check | None:
        """A host check at ``prepare`` beyond the plan's own; a failed Check refuses."""
        raise NotImplementedError

    def intent(self, doc: Parsed, plan: Plan) -> Any:
        """The entry ``prepare`` records in the new claim before anything is touched
        (None: nothing yet)."""
        raise NotImplementedError

    def apply(self, cfg: Config, journal: Journal,
              view: View | None) -> dict[str, object] | None:
        """Make the host match; journal before each write. ``view`` is None at
        ``prepare`` (QEMU does not run yet; the entry holds the intent). Returns the fields of the
        audit line ``action=<name>`` (None: the tunable logged its own, or nothing
        happened). Raises NumahookError when it cannot."""
        raise NotImplementedError

    def early(self, cfg: Config, journal: Journal, tids: dict[int, int],
              pid: int) -> bool | None:
        """numahookd, between ``prepare`` and ``started``, once libvirt has moved vCPU
        threads ``tids`` of QEMU ``pid`` into their cgroups (daemon/vcpuwatch.py). True:
        applied and verified, so the ``started`` hook may take its fast path; False: ask
        again when more have moved; None: nothing to do early. Optional."""
        return None

    def verify(self, cfg: Config, view: View) -> str | None:
        """What is not as applied (one phrase), or None when everything is in place."""
        raise NotImplementedError

    def undo(self, cfg: Config, journal: Journal) -> bool:
        """Put back what the entry says was changed, journalling as it goes. False: part
        is still held (logged); the entry says what, and the next call retries."""
        raise NotImplementedError

    def recover(self, cfg: Config, journal: Journal) -> None:
        """Settle writes a killed process left half-done, before anyone counts on the
        entry. Optional: most writes are idempotent and need nothing."""

    def watch(self, cfg: Config, running: Callable[[], list[View]],
              retune: Callable[[View, str], bool], force: bool, memo: dict[str, Any]) -> int:
        """numahookd's cheap check between passes (a few times a second): the host changing
        under the running domains in a way that cannot wait for the next pass. ``running``
        lists them (it reads files: call it only when needed), ``retune`` applies this
        tunable again, ``memo`` survives between calls. Returns the threads it had to
        demote. Optional: the default watches nothing."""
        return 0

    def sync(self, cfg: Config, store: Store, entries: list[Any]) -> None:
        """Derive a host-wide value from every claim's entry (``entries``); runs under the
        lock after every change to the claims. Optional: only host-wide tunables
        (numahook/tunables/hostwide.py) share a file between domains."""

    def backstop(self, cfg: Config, view: View) -> str | None:
        """numahookd's periodic pass on a running domain: fix quietly what needs no
        journal, or say what must be applied again (the reconciler then applies it under
        the lock); None when in place."""
        raise NotImplementedError

    def status(self, cfg: Config, view: View) -> dict[str, Any]:
        """This tunable's keys in a running domain's ``status`` entry (docs/schemas/
        status.schema.json)."""
        raise NotImplementedError

    def held(self, entry: Any) -> dict[str, Any]:
        """This tunable's keys in the ``claim`` part of ``status``: what the entry holds."""
        raise NotImplementedError

    def text(self, domain: dict[str, Any]) -> list[str]:
        """``status``'s terminal lines for this tunable, from the domain's JSON entry."""
        raise NotImplementedError

    def fast_checks(self, doc: Parsed, plan: Plan) -> dict[str, Any] | None:
        """What the ``started`` hook's fast path must confirm for this tunable, as data in
        the kinds numahook/hook/fast.py knows (``CHECK_KINDS``), stored in the claim at
        ``prepare``: that path imports no tunable. ``{}``: nothing to confirm; None: it
        cannot be confirmed that way, so the fast path declines and the full path runs."""
        raise NotImplementedError

    @property
    def has_early(self) -> bool:
        """Whether :meth:`early` does anything, so numahookd's vCPU watch need not take
        the state lock for a domain none of whose tunables acts early."""
        return type(self).early is not Tunable.early

    def decode(self, data: Any) -> Any:
        """The entry from the claim's JSON; raise ValueError/TypeError/KeyError when it
        is not one this tunable wrote. Entries have ``to_json()``."""
        raise NotImplementedError
