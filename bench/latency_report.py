"""The latency step's part of the report: whether this machine may judge it, and its tables.

bench/latency.py measures guest timer latency in configurations A, B-pin and C; a
verdict on those figures means something only when the machine's own noise floor is
well below them (bench/README.md, "The noise floor"). So the judgement (``floor_verdict``,
``latency_goals``) and everything that prints it live together here, apart from the
other steps, whose targets are plain ratios.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.cells import Row, fmt, target, us, verdict, x
from bench.histogram import HIST_EDGE_DEFAULT

# --- the noise floor ---------------------------------------------------------------------
#: Above this p99 of cyclictest on the idle host itself, the machine's own noise is larger
#: than what is judged: C's p99 under load on a quiet machine of this kind was about a
#: quarter to a half of it (bench/README.md), so a 10x ratio to A would measure the floor.
FLOOR_P99_US = 500.0
#: Above this share of CPU time stolen by the outer hypervisor (``/proc/stat`` steal), in
#: the idle-host probe or in the median run, the CPUs are taken away often enough to
#: dominate a 1 kHz timer's tail; a single run above it is marked noisy.
STEAL_MAX_PCT = 5.0
#: Above this share of busy CPU time during the idle-host probe, the host was not idle:
#: other work shared it (the probe itself uses a few %), so the floor measured is not the
#: machine's own and nothing is judged.
FLOOR_BUSY_MAX_PCT = 25.0

# --- the goals ---------------------------------------------------------------------------
#: C's p99 under load must be at least this many times better than A's, in every run
GOAL_P99_RATIO = 10.0


# --- the judgement -----------------------------------------------------------------------

def floor_verdict(lat: dict[str, Any]) -> tuple[bool, list[str]]:
    """(the machine is quiet enough to judge latency, why not / what was seen).

    Too high when the idle host's own cyclictest p99 exceeds ``FLOOR_P99_US`` (or lies
    beyond its histogram), when its steal time exceeds ``STEAL_MAX_PCT``, or when the
    median run's steal does; not measured when the host was busier than
    ``FLOOR_BUSY_MAX_PCT`` during the probe. Without a floor probe (older results)
    nothing is judged.
    """
    why: list[str] = []
    floor = lat.get("floor") or {}
    if not floor or "error" in floor:
        return False, ["no idle-host noise floor was measured"
                       + (f" ({floor['error']})" if floor.get("error") else "")]
    p99 = floor.get("p99_us")
    if p99 is None:
        why.append(f"noise floor too high: idle-host p99 beyond {floor.get('hist_us')} µs")
    elif p99 > FLOOR_P99_US:
        why.append(f"noise floor too high: idle-host p99 {p99:,.0f} µs > "
                   f"{FLOOR_P99_US:,.0f} µs")
    if (floor.get("busy_pct") or 0) > FLOOR_BUSY_MAX_PCT:
        why.append(f"the host was not idle during the floor probe: busy "
                   f"{floor['busy_pct']:.0f} % > {FLOOR_BUSY_MAX_PCT:.0f} %")
    if (floor.get("steal_pct") or 0) > STEAL_MAX_PCT:
        why.append(f"noise floor too high: idle-host steal {floor['steal_pct']:.1f} % > "
                   f"{STEAL_MAX_PCT:.0f} %")
    steals = [r["steal_pct"] for r in lat.get("runs", []) if r.get("steal_pct") is not None]
    if steals and statistics.median(steals) > STEAL_MAX_PCT:
        why.append(f"noise floor too high: median run steal {statistics.median(steals):.1f} % > "
                   f"{STEAL_MAX_PCT:.0f} %")
    return not why, why


def latency_goals(lat: dict[str, Any]) -> list[dict[str, Any]]:
    """Per repetition under load: A's and C's p99, C's max, and the two goals' verdicts.

    ``p99_ok``: A's p99 / C's p99 >= ``GOAL_P99_RATIO``; ``max_ok``: C's max < A's p99. An
    A p99 beyond the histogram counts as the histogram's edge, a lower bound, so a pass
    computed from it holds. None where a run is missing or its steal makes it noisy.
    """
    per = (lat.get("summary") or {}).get("load") or {}
    a_runs = {p.get("rep"): p for p in (per.get("A") or {}).get("per_run", [])}
    c_runs = {p.get("rep"): p for p in (per.get("C") or {}).get("per_run", [])}
    edge = (per.get("A") or {}).get("hist_us", HIST_EDGE_DEFAULT)
    out = []
    for rep in sorted(set(a_runs) | set(c_runs), key=lambda r: (r is None, r)):
        a, c = a_runs.get(rep), c_runs.get(rep)
        row: dict[str, Any] = {"rep": rep, "a_p99_us": a and a["p99_us"],
                               "c_p99_us": c and c["p99_us"], "c_max_us": c and c["max_us"],
                               "p99_ratio": None, "p99_ok": None, "max_ok": None,
                               "noisy": None}
        if a and c:
            steal = max((x.get("steal_pct") or 0) for x in (a, c))
            row["steal_pct"] = steal
            row["noisy"] = steal > STEAL_MAX_PCT
            a_p99 = a["p99_us"] if a["p99_us"] is not None else float(edge)
            row["a_p99_bound"] = a["p99_us"] is None
            if c["p99_us"]:
                row["p99_ratio"] = round(a_p99 / c["p99_us"], 2)
            if not row["noisy"]:
                row["p99_ok"] = (row["p99_ratio"] is not None
                                 and row["p99_ratio"] >= GOAL_P99_RATIO)
                row["max_ok"] = c["max_us"] < a_p99
                if row["a_p99_bound"]:  # a bound only proves a pass, never a failure
                    row["p99_ok"] = row["p99_ok"] or None
                    row["max_ok"] = row["max_ok"] or None
        out.append(row)
    return out


# --- the rows and tables ----------------------------------------------------------------

CONFIG_LABEL = {"A": "A plain libvirt", "B": "B libvirt vcpusched",
                "B-pin": "B-pin libvirt pinning", "C": "C numahook"}
STATS = ("min_us", "median_us", "p99_us", "p999_us", "max_us")


def bounded_ratio(a: float | None, c: float | None, hist_max: int) -> str:
    """a / c; a percentile beyond the histogram (None) counts as its edge, as a bound."""
    if a and c:
        return x(a / c)
    if a is None and c:
        return f"≥ {hist_max / c:.1f}x"
    if c is None and a:
        return f"≤ {a / hist_max:.1f}x"
    return "n/a"


def _floor_figures(floor: dict[str, Any]) -> str:
    """A host cyclictest probe's median / p99 / p99.9 / max, as the floor rows print it."""
    return " / ".join(us(floor.get(k), floor.get("hist_us", HIST_EDGE_DEFAULT))
                      for k in ("median_us", "p99_us", "p999_us", "max_us"))


def rows(lat: dict[str, Any], _py: float | None) -> list[Row]:
    """The floor probes, B's refusal, and per host condition each configuration's figures."""
    out: list[Row] = []
    quiet, why = floor_verdict(lat)
    floor = lat.get("floor") or {}
    if floor and "error" not in floor:
        out.append(("noise floor: cyclictest on the idle host itself, "
                    f"{floor.get('seconds')} s per CPU: median / p99 / p99.9 / max",
                    _floor_figures(floor),
                    f"steal {fmt(floor.get('steal_pct'), '%')}, busy "
                    f"{fmt(floor.get('busy_pct'), '%')}, load {fmt(floor.get('loadavg_1m'))}",
                    "", target(floor.get("p99_us"), FLOOR_P99_US, " µs")))
    loaded = lat.get("floor_load") or {}
    if loaded and "error" not in loaded:
        out.append(("noise floor under load: the same cyclictest on the host under "
                    f"`{lat.get('hog', 'the hog')}`: median / p99 / p99.9 / max",
                    _floor_figures(loaded), f"steal {fmt(loaded.get('steal_pct'), '%')}",
                    "", ""))
    for b in lat.get("b_vcpusched", []):
        cond = "under load" if b["load"] else "idle"
        out.append((f"guest latency B ({cond}): libvirt `<vcpusched>` + pinning",
                    "refused: " + (b.get("error") or "started").replace("|", "/"),
                    "", "", ""))
    for cond, per in lat["summary"].items():
        out += _config_rows(cond, per, quiet, why)
    return out


def _config_rows(cond: str, per: dict[str, Any], quiet: bool, why: list[str]) -> list[Row]:
    """One row per configuration: min / median / p99 / p99.9 / max, and A's over it."""
    label = "idle host" if cond == "idle" else "host under CPU hog"
    a = per.get("A", {})
    out: list[Row] = []
    for cfg in ("A", "B-pin", "C"):
        s = per.get(cfg)
        if not s or not s.get("runs"):
            continue
        hm = s.get("hist_us", HIST_EDGE_DEFAULT)
        mine = " / ".join(us(s.get(k), hm) for k in STATS)
        if cfg == "A":
            out.append((f"guest latency {CONFIG_LABEL[cfg]}, {label}: "
                        "min / median / p99 / p99.9 / max", mine, "", "", ""))
            continue
        base = "A: " + " / ".join(us(a.get(k), a.get("hist_us", hm)) for k in STATS)
        if quiet:
            ratios = "A/" + cfg + ": " + " / ".join(
                bounded_ratio(a.get(k), s.get(k), a.get("hist_us", hm)) for k in STATS)
        else:
            ratios = "not judged: " + "; ".join(why)
        goal = ""
        if cfg == "C" and cond == "load":
            goal = (f"p99 ≥ {GOAL_P99_RATIO:g}x better than A's and max below A's p99, "
                    "every run (below)" if quiet else "not judged")
        out.append((f"guest latency {CONFIG_LABEL[cfg]}, {label}", mine, base, ratios, goal))
    return out


def span(runs: list[dict[str, Any]], key: str, hist_max: int) -> str:
    """Lowest – highest value over the runs; one beyond the histogram shows as '> edge'."""
    vals = [r.get(key) for r in runs]
    known = [v for v in vals if v is not None]
    if not vals or not any(key in r for r in runs):  # not measured (older results)
        return "n/a"
    hi = f"> {hist_max:,}" if len(known) < len(vals) else f"{max(known):,.0f}"
    lo = f"{min(known):,.0f}" if known else f"> {hist_max:,}"
    return lo if lo == hi else f"{lo} – {hi}"


def spread_lines(lat: dict[str, Any]) -> list[str]:
    lines = []
    for cond, per in lat["summary"].items():
        for cfg in ("A", "B-pin", "C"):
            s = per.get(cfg)
            if not s or not s.get("runs"):
                continue
            hm = s.get("hist_us", HIST_EDGE_DEFAULT)
            runs = s.get("per_run", [])
            steal = [r["steal_pct"] for r in runs if r.get("steal_pct") is not None]
            waits = [r.get("threads", {}).get("vcpu0", {}).get("max_wait_ms_per_s")
                     for r in runs]
            waits_k = [w for w in waits if w is not None]
            stalls = [r.get("threads", {}).get("vcpu0", {}).get("stalls") for r in runs]
            stalls_k = [n for n in stalls if n is not None]
            lines.append(f"| {cond} | {cfg} | {s['runs']} | {s['samples']:,} | "
                         f"{span(runs, 'p99_us', hm)} | {span(runs, 'p999_us', hm)} | "
                         f"{span(runs, 'max_us', hm)} | "
                         + (f"{min(steal):.1f} – {max(steal):.1f}" if steal else "n/a")
                         + " | " + (f"{max(waits_k):,.1f}" if waits_k else "n/a")
                         + " | " + (f"{sum(stalls_k)}" if stalls_k else "n/a") + " |")
    return lines


def goal_lines(lat: dict[str, Any]) -> list[str]:
    quiet, why = floor_verdict(lat)
    if not quiet:
        return [f"Goals under load not judged: {'; '.join(why)}.",
                f"Criterion: idle-host cyclictest p99 ≤ {FLOOR_P99_US:g} µs with the host "
                f"≤ {FLOOR_BUSY_MAX_PCT:g} % busy, and steal ≤ {STEAL_MAX_PCT:g} % on the idle "
                "host and in the median run."]
    edge = ((lat.get("summary") or {}).get("load") or {}).get("A", {}).get(
        "hist_us", HIST_EDGE_DEFAULT)
    lines = [f"Goals under load, per repetition (C's p99 ≥ {GOAL_P99_RATIO:g}x better than A's; "
             "C's max below A's p99; a run with steal above "
             f"{STEAL_MAX_PCT:g} % is noisy and not judged):", "",
             "| rep | A p99 | C p99 | A/C p99 | p99 goal | C max | max goal | steal |",
             "|---|---|---|---|---|---|---|---|"]
    for g in latency_goals(lat):
        a = us(g["a_p99_us"], edge) if g["a_p99_us"] is not None or g.get("a_p99_bound") \
            else "n/a"
        rep = "?" if g["rep"] is None else str(g["rep"] + 1)
        r = g["p99_ratio"]
        rtxt = "n/a" if r is None else (("≥ " if g.get("a_p99_bound") else "") + f"{r:.1f}x")
        noisy = " (noisy)" if g["noisy"] else ""
        lines.append(f"| {rep} | {a} | {us(g['c_p99_us'], edge)} | {rtxt} | "
                     f"{verdict(g['p99_ok'])}{noisy} | "
                     f"{'n/a' if g['c_max_us'] is None else us(g['c_max_us'])} | "
                     f"{verdict(g['max_ok'])}{noisy} | {fmt(g.get('steal_pct'), '%')} |")
    loaded = lat.get("floor_load") or {}
    if loaded.get("max_us") is not None:
        # context, not a verdict: the goals stay judged as above
        lines += ["", f"The host's own FIFO thread under the same load (no guest): max "
                      f"{us(loaded['max_us'])}, p99 {us(loaded.get('p99_us'), edge)}. A "
                      "real-time vCPU is one such thread, so C's max is not expected below "
                      "that max."]
    return lines


def tables(lat: dict[str, Any]) -> list[str]:
    """The markdown after the main table: the per-run spread, then the goals per run."""
    lines: list[str] = []
    spread = spread_lines(lat)
    if spread:
        lines += ["", f"Spread over the runs (each {lat['duration_s']} s of cyclictest at "
                  f"1 kHz on vCPU 0; load: `{lat['hog']}`; histogram to "
                  f"{lat.get('hist_us', HIST_EDGE_DEFAULT):,} µs):", "",
                  "| host | config | runs | samples | p99 per run (µs) | "
                  "p99.9 per run (µs) | max per run (µs) | steal per run (%) | "
                  "vCPU's worst wait (ms per s) | vCPU stalls |",
                  "|---|---|---|---|---|---|---|---|---|---|", *spread]
    return [*lines, "", *goal_lines(lat)]
