"""The validated per-domain request: KubeVirt's VMI cpu fields, typed and checked.

Each field is filled by the attribute or element core/schema.py declares for it, and
converted by that declaration; tests/unit/core/test_schema.py holds the fields and their
defaults to the table's.
"""

from __future__ import annotations

from numahook.core import schema
from numahook.records import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

    from numahook.core.metadata import RawRequest


@record(frozen=True)
class Request:
    dedicated: bool = False
    isolate_emulator: bool = False
    #: emulatorThreadPolicy as written: "isolate" (as isolateEmulatorThread="true") or
    #: "share" (the emulator and IO threads on ``[cpus] shared``); None: not set.
    #: isolateEmulatorThread="false" is its default and says nothing against either;
    #: "true" with "share" is refused as a precondition (core/hardware.py)
    emulator_thread_policy: str | None = None
    #: dedicatedMask as written (the realtime mask's grammar); None: every vCPU dedicated
    dedicated_mask: str | None = None
    #: "shared": every IO thread on the emulator CPUs; "auto": spread one per emulator CPU
    io_threads_policy: str | None = None
    passthrough: bool = False
    realtime: bool = False
    realtime_mask: str | None = None
    realtime_priority: int = 1
    #: pciNumaAffinity as written; None: not set (``preferred``)
    pci_numa_affinity: str | None = None
    #: threadPolicy as written; None: not set (``prefer``)
    thread_policy: str | None = None
    #: <numahook:power idleStates>: "enable", "disable" or a latency limit in µs; None: not
    #: set (``[power] realtime_idle_states`` for a real-time domain, else "enable")
    idle_states: str | int | None = None
    #: <numahook:power governor> as written (checked against the host at ``prepare``)
    governor: str | None = None

    @property
    def managed(self) -> bool:
        """Whether numahook has anything to do for this domain."""
        return (self.dedicated or self.passthrough or self.realtime or self.isolate_emulator
                or self.emulator_thread_policy is not None or self.dedicated_mask is not None
                or self.pci_numa_affinity is not None or self.thread_policy is not None
                or self.asks_power)

    @property
    def asks_power(self) -> bool:
        """Whether ``<numahook:power>`` says anything (real-time domains get a default)."""
        return self.idle_states is not None or self.governor is not None

    @property
    def isolated_emulator(self) -> bool:
        """The emulator gets a dedicated CPU of its own: ``isolateEmulatorThread="true"``,
        or its new name ``emulatorThreadPolicy="isolate"`` (both fields kept as written)."""
        return self.isolate_emulator or self.emulator_thread_policy == "isolate"

    @property
    def shares_emulator(self) -> bool:
        """The emulator and IO threads go to the host's shared set (``[cpus] shared``)."""
        return self.emulator_thread_policy == "share"

    @property
    def pci_affinity(self) -> str:
        return self.pci_numa_affinity or "preferred"

    @property
    def threads(self) -> str:
        return self.thread_policy or "prefer"


def from_raw(raw: RawRequest) -> Request:
    """Validate attribute values; combinations are checked later as preconditions."""
    values: dict[str, Any] = {}
    for element in schema.ELEMENTS:
        if element.flag is not None:
            values[element.flag] = element.flag in raw.present
        for attr in element.attrs:
            text = raw.text.get(attr.field)
            if text is None:
                values[attr.field] = attr.default
            else:
                values[attr.field] = attr.convert(text, element.name)
    return Request(**values)
