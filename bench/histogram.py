"""Statistics over cyclictest histograms: percentiles, pooled runs and the per-run spread.

Its own module because two sides use it: bench/latency.py while it measures (each run's
p99 on stderr, the summary it writes), and the report that reads the summary back.
Standard library only, like the rest of the report.
"""

from __future__ import annotations

import statistics
from typing import Any

#: cyclictest's histogram width when a run does not say (the probe's old ``-h 2000``)
HIST_EDGE_DEFAULT = 2000


def thread_hist(run: dict[str, Any], thread: int) -> tuple[dict[int, int], int]:
    """(latency us -> samples, samples beyond the histogram) of one cyclictest thread."""
    h = {int(k): v[thread] for k, v in run.get("hist", {}).items()
         if thread < len(v) and v[thread]}
    over = run["overflows"][thread] if thread < len(run.get("overflows", [])) else 0
    return h, over


def percentile(hist: dict[int, int], over: int, p: float) -> float | None:
    """The p-quantile in us; None when it lies beyond the histogram's range."""
    n = sum(hist.values()) + over
    if not n:
        return None
    rank = p * n
    seen = 0
    for us_ in sorted(hist):
        seen += hist[us_]
        if seen >= rank:
            return float(us_)
    return None


def stats(runs: list[dict[str, Any]], thread: int = 0) -> dict[str, Any]:
    """Pooled min/median/p99/p99.9/max of ``thread`` over ``runs``, plus the per-run spread."""
    ok = [r for r in runs if "hist" in r]
    if not ok:
        return {"runs": 0}
    pooled: dict[int, int] = {}
    over = 0
    per_run = []
    for r in ok:
        h, o = thread_hist(r, thread)
        for k, v in h.items():
            pooled[k] = pooled.get(k, 0) + v
        over += o
        per_run.append({"rep": r.get("rep"), "min_us": r["min_us"][thread],
                        "median_us": percentile(h, o, 0.5),
                        "p99_us": percentile(h, o, 0.99), "p999_us": percentile(h, o, 0.999),
                        "max_us": r["max_us"][thread], "avg_us": r["avg_us"][thread],
                        "samples": sum(h.values()) + o, "overflows": o,
                        "steal_pct": r.get("steal_pct"), "loadavg_1m": r.get("loadavg_1m"),
                        "threads": r.get("threads", {})})
    out: dict[str, Any] = {
        "runs": len(ok), "samples": sum(pooled.values()) + over, "overflows": over,
        "hist_max_us": max(int(k) for r in ok for k in r["hist"]) if pooled else None,
        "hist_us": min(r.get("hist_us", HIST_EDGE_DEFAULT) for r in ok),
        "min_us": min(p["min_us"] for p in per_run),
        "median_us": percentile(pooled, over, 0.5),
        "p99_us": percentile(pooled, over, 0.99),
        "p999_us": percentile(pooled, over, 0.999),
        "max_us": max(p["max_us"] for p in per_run),
        "per_run": per_run,
    }
    for key in ("median_us", "p99_us", "p999_us", "max_us", "steal_pct"):
        vals = [p[key] for p in per_run if p[key] is not None]
        if vals:
            out[f"{key}_spread"] = [min(vals), statistics.median(vals), max(vals)]
    shares: dict[str, list[float]] = {}
    for r in ok:
        for k, v in r.get("cpu_share", {}).items():
            shares.setdefault(k, []).append(v)
    out["cpu_share_max"] = {k: max(v) for k, v in shares.items()}
    out["histogram"] = {str(k): pooled[k] for k in sorted(pooled)}
    return out


def ratio(a: float | None, c: float | None) -> float | None:
    return round(a / c, 2) if a and c else None


def summarize(runs: list[dict[str, Any]], configs: list[str],
              loads: list[bool]) -> dict[str, Any]:
    """latency.json's ``summary``: per load ("idle", "load"), per configuration, stats."""
    summary: dict[str, Any] = {}
    for load in loads:
        key = "load" if load else "idle"
        summary[key] = {c: stats([r for r in runs if r["config"] == c and r["load"] == load])
                        for c in configs}
        a, c = summary[key].get("A", {}), summary[key].get("C", {})
        summary[key]["ratio_A_over_C"] = {
            k: ratio(a.get(k), c.get(k)) for k in ("median_us", "p99_us", "p999_us", "max_us")}
    return summary
