"""The registry of tunables: every host setting a managed domain changes, in apply order.

Lifecycle (ops/lifecycle.py), recovery (state/recovery.py), the reconciler
(daemon/reconcile.py), ``status`` (ops/status.py) and the hook's fast path
(hook/fast.py) iterate :data:`REGISTRY`; docs/architecture.md, "Adding a tunable", says
what a new one is made of. Undo runs in reverse order, as tuned unapplies its plugins.
"""

from __future__ import annotations

from numahook.tunables import emulator, hugepages, kvmpit, power, realtime

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

    from numahook.tunables.base import Tunable

REGISTRY: tuple[Tunable, ...] = (hugepages.TUNABLE, realtime.TUNABLE, kvmpit.TUNABLE,
                                 emulator.TUNABLE, power.TUNABLE)


def host_wide(registry: tuple[Tunable, ...] = REGISTRY) -> tuple[Tunable, ...]:
    """The tunables that derive a shared host file from every claim (their ``sync``):
    none yet, so a start pays nothing for reading every claim."""
    from numahook.tunables.base import Tunable

    return tuple(t for t in registry if type(t).sync is not Tunable.sync)


def by_name(name: str) -> Tunable:
    for t in REGISTRY:
        if t.name == name:
            return t
    raise KeyError(name)


def decode(journal: Any) -> dict[str, Any]:
    """A claim's ``tunables`` JSON object, each entry decoded by its tunable. An entry of
    a tunable this version does not know raises ValueError: the claim is then reported as
    unreadable rather than released without undoing that tunable."""
    if type(journal) is not dict:
        raise TypeError("its tunables are not a JSON object")
    out = {}
    for name, data in journal.items():
        try:
            tunable = by_name(name)
        except KeyError:
            raise ValueError(f"it journals {name!r}, a tunable this numahook does not know "
                             "(written by a newer version?)") from None
        if type(data) is not dict:
            raise TypeError(f"its {name} entry is not a JSON object")
        out[name] = tunable.decode(data)
    return out
