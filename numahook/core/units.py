"""libvirt's memory units, converted to KiB (libvirt's canonical unit), and counts as a
human reads them in messages: one place, so that no message says "1 sockets"."""

from __future__ import annotations

import re

from numahook.errors import InputError

_DECIMAL = re.compile(r"[0-9]+")


def clip(text: str, limit: int = 40) -> str:
    """Quote outside input in a message without echoing megabytes of it."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` accepts '²', which ``int()`` then rejects."""
    return _DECIMAL.fullmatch(text) is not None

_SCALE = {
    "b": 1, "bytes": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
    "p": 1024**5, "pib": 1024**5, "pb": 1000**5,
    "e": 1024**6, "eib": 1024**6, "eb": 1000**6,
}
#: 16 EiB in KiB: anything larger is hostile, not a VM.
MAX_KIB = 1 << 54


def to_kib(value: str | None, unit: str | None, what: str, default_unit: str = "KiB") -> int:
    """Convert a libvirt scaled integer to KiB, rounding up as libvirt does."""
    text = (value or "").strip()
    if not is_decimal(text) or len(text) > 24:
        raise InputError(f"{what} {clip(value or '')} is not a whole number")
    scale = _SCALE.get((unit or default_unit).strip().lower())
    if scale is None:
        raise InputError(f"{what} has unknown unit {clip(unit or '')}; use KiB, MiB, GiB or TiB")
    kib = -(-int(text) * scale // 1024)
    if kib > MAX_KIB:
        # both parts passed validation above: short digits and a known unit
        raise InputError(f"{what} {text} {unit or default_unit} is beyond any real host")
    return kib


def human_kib(kib: int) -> str:
    """Short human form for messages: 2048 -> '2 MiB'."""
    for unit, scale in (("TiB", 1 << 30), ("GiB", 1 << 20), ("MiB", 1 << 10)):
        if kib >= scale and kib % scale == 0:
            return f"{kib // scale} {unit}"
    return f"{kib} KiB"


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``singular`` when ``count`` is 1, else ``many`` (``singular`` + "s" by default):
    ``plural(n, "vCPU")``, ``plural(n, "is", "are")``."""
    return singular if count == 1 else many or singular + "s"


def counted(count: int, singular: str, many: str | None = None) -> str:
    """``count`` and its noun in the right number: "1 socket", "2 sockets", "0 sockets"."""
    return f"{count} {plural(count, singular, many)}"
