"""The validated per-domain request: KubeVirt's VMI cpu fields, typed and checked."""

from __future__ import annotations

from numahook.core.metadata import RawRequest
from numahook.core.units import clip, is_decimal
from numahook.errors import InputError
from numahook.records import record

IO_THREADS_POLICIES = ("shared", "auto")
#: Nova's hw:pci_numa_affinity_policy values numahook has (``legacy`` and ``socket`` it has not)
PCI_NUMA_AFFINITIES = ("required", "preferred", "none")
#: Nova's hw:cpu_thread_policy
THREAD_POLICIES = ("prefer", "isolate", "require")


@record(frozen=True)
class Request:
    dedicated: bool = False
    isolate_emulator: bool = False
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

    @property
    def managed(self) -> bool:
        """Whether numahook has anything to do for this domain."""
        return (self.dedicated or self.passthrough or self.realtime or self.isolate_emulator
                or self.pci_numa_affinity is not None or self.thread_policy is not None)

    @property
    def pci_affinity(self) -> str:
        return self.pci_numa_affinity or "preferred"

    @property
    def threads(self) -> str:
        return self.thread_policy or "prefer"


def _bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    low = value.strip().lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise InputError(f"numahook:cpu {name}={clip(value)} must be \"true\" or \"false\"")


def _choice(value: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if text not in allowed:
        raise InputError(f"numahook:cpu {name}={clip(text)} must be one of {', '.join(allowed)}")
    return text


def from_raw(raw: RawRequest) -> Request:
    """Validate attribute values; combinations are checked later as preconditions."""
    policy = _choice(raw.io_threads_policy, "ioThreadsPolicy", IO_THREADS_POLICIES)
    priority = 1
    if raw.realtime_priority is not None:
        text = raw.realtime_priority.strip()
        if len(text) > 2 or not is_decimal(text) or not 1 <= int(text) <= 99:
            raise InputError(
                f"numahook:realtime priority={clip(text)} must be a whole number from 1 to 99"
            )
        priority = int(text)
    return Request(
        dedicated=_bool(raw.dedicated, "dedicatedCpuPlacement"),
        isolate_emulator=_bool(raw.isolate_emulator, "isolateEmulatorThread"),
        io_threads_policy=policy,
        passthrough=raw.passthrough,
        realtime=raw.realtime,
        realtime_mask=raw.realtime_mask,
        realtime_priority=priority,
        pci_numa_affinity=_choice(raw.pci_numa_affinity, "pciNumaAffinity", PCI_NUMA_AFFINITIES),
        thread_policy=_choice(raw.thread_policy, "threadPolicy", THREAD_POLICIES),
    )
