"""How one figure is written into a cell of the bench table, and how a target is judged.

Shared by every step's rows, so that a ratio, a missing figure or a verdict reads the
same whichever benchmark produced it. Every target is a ratio to a baseline measured in
the same run (bench/README.md, "The figures"), so ``target`` takes a ratio.
"""

from __future__ import annotations

from bench.histogram import HIST_EDGE_DEFAULT

#: (figure, result, baseline measured in the same run, ratio, target and verdict)
Row = tuple[str, str, str, str, str]


def fmt(v: float | None, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{(' ' + unit) if unit else ''}"


def us(v: float | None, hist_max: int = HIST_EDGE_DEFAULT) -> str:
    """Microseconds; None is a percentile beyond the histogram, so only a bound is known."""
    if v is None:
        return f"> {hist_max:,} µs"
    return f"{v:,.0f} µs"


def x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def div(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing (a step that did not measure its baseline)."""
    return a / b if a is not None and b else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def target(value: float | None, limit: float, unit: str = "x", at_least: bool = False) -> str:
    """``≤ 2.0x: pass`` (or ``≥``): a target and its verdict for a measured ratio."""
    sign = "≥" if at_least else "≤"
    if value is None:
        return f"{sign} {limit:g}{unit}: n/a"
    ok = value >= limit if at_least else value <= limit
    return f"{sign} {limit:g}{unit}: {verdict(ok)}"
