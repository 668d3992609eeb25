"""The validated per-domain request: KubeVirt's VMI cpu fields, typed and checked."""

from __future__ import annotations

from numahook.core.metadata import RawRequest
from numahook.core.units import clip, is_decimal
from numahook.errors import InputError
from numahook.records import record

IO_THREADS_POLICIES = ("shared", "auto")


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

    @property
    def managed(self) -> bool:
        """Whether numahook has anything to do for this domain."""
        return self.dedicated or self.passthrough or self.realtime or self.isolate_emulator


def _bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    low = value.strip().lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise InputError(f"numahook:cpu {name}={clip(value)} must be \"true\" or \"false\"")


def from_raw(raw: RawRequest) -> Request:
    """Validate attribute values; combinations are checked later as preconditions."""
    policy = raw.io_threads_policy
    if policy is not None:
        policy = policy.strip()
        if policy not in IO_THREADS_POLICIES:
            raise InputError(
                f"numahook:cpu ioThreadsPolicy={clip(policy)} must be one of "
                f"{', '.join(IO_THREADS_POLICIES)}"
            )
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
    )
