"""The bench report: statistics over cyclictest histograms, the checks, and the table.

Pure (standard library only, no lab, no libvirt): bench/latency.py builds its summary with
it, bench/run turns a whole results document (``bench/results/latest.json``) into the
table, and tests/unit/test_bench_report.py feeds it synthetic documents.

Every target is a ratio to a baseline measured in the same run (bench/README.md, "The
figures"): absolute times move with the machine, ratios to its own Python start, its own
``sh``, its own libvirt listing do not. The latency figures are judged only when the
machine's own noise floor allows it (``floor_verdict``).
"""

from __future__ import annotations

import statistics
from typing import Any

#: cyclictest's histogram width when a run does not say (the probe's old ``-h 2000``)
HIST_EDGE_DEFAULT = 2000

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
#: started contract keys that tools read (issue 17): keep them
CONTRACT = ("started.daemon.*.runs[].delay_ms", "latency.summary.load.A.p99_us",
            "latency.summary.load.C.p99_us")


# --- statistics over cyclictest histograms ----------------------------------------------

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


# --- the checks --------------------------------------------------------------------------

def contract_problems(res: dict[str, Any]) -> list[str]:
    """The contract keys (``CONTRACT``) missing from a results document, as dotted paths."""
    out = []
    started = res.get("started")
    if started is not None:
        for n, d in (started.get("daemon") or {}).items():
            runs = d.get("runs")
            if not isinstance(runs, list):
                out.append(f"started.daemon.{n}.runs")
                continue
            out += [f"started.daemon.{n}.runs[{i}].delay_ms"
                    for i, r in enumerate(runs) if "delay_ms" not in r]
    lat = res.get("latency")
    if lat is not None:
        load = (lat.get("summary") or {}).get("load")
        if load is not None:
            out += [f"latency.summary.load.{c}.p99_us" for c in ("A", "C")
                    if c not in load or "p99_us" not in load[c]]
    return out


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


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def target(value: float | None, limit: float, unit: str = "x", at_least: bool = False) -> str:
    """``≤ 2.0x: pass`` (or ``≥``): a target and its verdict for a measured ratio."""
    sign = "≥" if at_least else "≤"
    if value is None:
        return f"{sign} {limit:g}{unit}: n/a"
    ok = value >= limit if at_least else value <= limit
    return f"{sign} {limit:g}{unit}: {verdict(ok)}"


# --- the table ---------------------------------------------------------------------------

CONFIG_LABEL = {"A": "A plain libvirt", "B": "B libvirt vcpusched",
                "B-pin": "B-pin libvirt pinning", "C": "C numahook"}
STATS = ("min_us", "median_us", "p99_us", "p999_us", "max_us")
Row = tuple[str, str, str, str, str]


def fmt(v: float | None, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{(' ' + unit) if unit else ''}"


def us(v: float | None, hist_max: int = HIST_EDGE_DEFAULT) -> str:
    if v is None:
        return f"> {hist_max:,} µs"
    return f"{v:,.0f} µs"


def x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rows(res: dict[str, Any]) -> list[Row]:
    """(figure, result, baseline measured in the same run, ratio, target and verdict)."""
    out: list[Row] = []
    py = ((res.get("hook") or {}).get("results") or {}).get("python_start", {}).get("median_ms")
    for name, build in (("render", _render_rows), ("hook", _hook_rows),
                        ("started", _started_rows), ("daemon", _daemon_rows),
                        ("latency", _latency_section)):
        if name not in res:
            continue
        try:
            out += build(res[name], py)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            out.append((name, f"unreadable result ({type(exc).__name__}: {exc})", "", "", ""))
    return out


#: render of 240 vCPUs / bare Python start (10 ms against 16 ms on the first machine)
RENDER_OVER_PYTHON = 0.6
#: the unmanaged hook / ``sh -c 'cat >/dev/null'``
UNMANAGED_OVER_SH = 3.0
#: a managed prepare / bare Python start (issue 17)
PREPARE_OVER_PYTHON = 2.0
#: started → FIFO with numahookd or ``<vcpusched>``, max / bare Python start (10 ms at 16)
FIFO_OVER_PYTHON = 0.6
#: started → FIFO by the hook alone, max / bare Python start (issue 17)
HOOK_FIFO_OVER_PYTHON = 2.0
#: the started hook's wall time when numahookd did the work (fast path) / Python start
FAST_PATH_OVER_PYTHON = 1.5
#: numahookd's idle RSS / python3 with libvirt and lxml, connected (40 MB against 31.4)
RSS_OVER_BASELINE = 1.3
#: a steady reconcile pass with 50 domains / listing them with their XML (50 ms against 8)
PASS_OVER_LISTING = 6.0


def _render_rows(r: dict[str, Any], py: float | None) -> list[Row]:
    by = {(x_["case"], x_["path"]): x_ for x_ in r["results"]}
    big, small = by[("render 240 vCPUs", "fresh")], by[("render 4 vCPUs", "fresh")]
    over_py = _div(big["median_ms"], py)
    again = by[("render 240 vCPUs", "re-render")]
    return [(f"render 240 vCPUs, {r['nodes']}-node {r['cpus']}-CPU host (in-process)",
             fmt(big["median_ms"], "ms", 2),
             f"`python3 -I -c pass` (hook step): {fmt(py, 'ms')}; 4 vCPUs: "
             f"{fmt(small['median_ms'], 'ms', 2)}",
             f"{x(over_py)} Python start; {x(big['median_ms'] / small['median_ms'])} 4 vCPUs",
             target(over_py, RENDER_OVER_PYTHON)),
            ("re-render 240 vCPUs (already rendered, kept pinning)",
             fmt(again["median_ms"], "ms", 2), "", x(_div(again["median_ms"], py)), "")]


def _hook_rows(hk: dict[str, Any], _py: float | None) -> list[Row]:
    h = hk["results"]
    py = h["python_start"]["median_ms"]
    base = f"`python3 -I -c pass`: {fmt(py, 'ms')}"
    prep = h["hook_prepare_dedicated"]["median_ms"] / py
    out = [("hook, unmanaged domain (sh front)", fmt(h["hook_unmanaged"]["median_ms"], "ms", 2),
            f"`sh -c 'cat >/dev/null'`: {fmt(h['sh_cat']['median_ms'], 'ms', 2)}",
            x(hk["unmanaged_ratio"]), target(hk["unmanaged_ratio"], UNMANAGED_OVER_SH)),
           ("hook, managed `prepare` (dedicated CPUs)",
            fmt(h["hook_prepare_dedicated"]["median_ms"], "ms"), base, x(prep),
            target(prep, PREPARE_OVER_PYTHON))]
    if "python_stdlib_floor" in h:  # bench/hook.py's FLOOR: no managed call goes below it
        f = h["python_stdlib_floor"]["median_ms"]
        out.append(("floor under a managed call: `python3 -I -S` importing xml.etree, json "
                    "and re", fmt(f, "ms"), base, x(f / py), ""))
    if "hook_prepare_passthrough_64_pages" in h:
        p = h["hook_prepare_passthrough_64_pages"]["median_ms"]
        out.append(("hook, managed `prepare`, passthrough, reserves 64 × 2 MiB",
                    fmt(p, "ms"), base, x(p / py), target(p / py, PREPARE_OVER_PYTHON)))
    if "hook_started_verified" in h:  # numahook/hook/fast.py, against paired bare starts
        v, paired = h["hook_started_verified"]["median_ms"], h["python_start_paired"]["median_ms"]
        out.append(("hook, `started` after numahookd verified (fast path, no libvirt)",
                    fmt(v, "ms"), f"`python3 -I -c pass`, paired: {fmt(paired, 'ms')}",
                    x(v / paired), target(v / paired, FAST_PATH_OVER_PYTHON)))
    return out


WHERE = {"1": "1 vCPU, CPU 1 free for libvirtd and the hook",
         "2": "2 vCPUs, the hook competes with the booting guest"}


def _started_rows(s: dict[str, Any], _py: float | None) -> list[Row]:
    out: list[Row] = []
    fl = s.get("floors", {})
    py = (fl.get("python_start") or {}).get("median_ms")
    floor = (f"`python3 -I` start {fmt(py, 'ms')}; with the hook's imports "
             f"{fmt(fl['python_with_hook_imports']['median_ms'], 'ms')}" if fl else "")
    for n, d in sorted(s.get("daemon", {}).items()):
        early = [e for e in d.get("early", []) if e is not None]
        won = sum(e > 0 for e in early)
        margin = sorted(early)[len(early) // 2] if early else None
        over = _div(d["delay"]["max_ms"], py)
        out.append((f"`started` → last masked vCPU FIFO, throttled node (delegation) with "
                    f"numahookd, {WHERE.get(n, n + ' vCPUs')}: median / max",
                    f"{fmt(d['delay']['median_ms'], 'ms')} / {fmt(d['delay']['max_ms'], 'ms')}",
                    f"{floor}; numahookd's audit line before `started` began in {won}/"
                    f"{d['delay']['runs']} starts"
                    + (f", median margin {fmt(margin, 'ms')}" if margin is not None else ""),
                    f"max {x(over)}", target(over, FIFO_OVER_PYTHON)))
    for n, d in sorted(s.get("delegate", {}).items()):
        over = _div(d["delay"]["max_ms"], py)
        out.append((f"`started` → last masked vCPU FIFO, throttled node (delegation), "
                    f"hook alone (no numahookd), {WHERE.get(n, n + ' vCPUs')}: median / max",
                    f"{fmt(d['delay']['median_ms'], 'ms')} / {fmt(d['delay']['max_ms'], 'ms')}",
                    floor, f"max {x(over)}", target(over, HOOK_FIFO_OVER_PYTHON)))
    for n, v in sorted(s.get("vcpusched", {}).items()):
        note = f" (mask {v['mask']}: see findings)" if v.get("problem") else ""
        over = _div(v["delay"]["max_ms"], py)
        out.append((f"`started` → FIFO, real-time capable node (sysctl -1, `<vcpusched>`), "
                    f"{n} vCPU(s){note}",
                    f"{fmt(v['delay']['max_ms'], 'ms')}: FIFO before the vCPUs ran in "
                    f"{v['fifo_at_first_sight']}/{v['delay']['runs']} starts", floor,
                    f"max {x(over)}", target(over, FIFO_OVER_PYTHON)))
    for n, d in sorted(s.get("daemon", {}).items()):
        if "hook_wall" not in d:
            continue
        over = _div(d["hook_wall"]["median_ms"], py)
        out.append((f"numahook's `started` hook wall time, {n} vCPU(s), numahookd did the "
                    "work (fast path)", fmt(d["hook_wall"]["median_ms"], "ms"), floor,
                    x(over), target(over, FAST_PATH_OVER_PYTHON)))
    for n, d in sorted(s.get("delegate", {}).items()):
        v = s.get("vcpusched", {}).get(n)
        out.append((f"numahook's `started` hook wall time, {n} vCPU(s): delegation, no "
                    "numahookd", fmt(d["hook_wall"]["median_ms"], "ms"),
                    f"sysctl -1: {fmt(v['hook_wall']['median_ms'], 'ms')}" if v else "",
                    x(_div(d["hook_wall"]["median_ms"], py)), ""))
    return out


def _daemon_rows(dm: dict[str, Any], _py: float | None) -> list[Row]:
    out: list[Row] = []
    base = dm.get("baseline", {})
    for size, s in sorted(dm["sizes"].items(), key=lambda kv: int(kv[0])):
        label = f"numahookd, {size} managed domains ({s['running']} running)"
        b_rss = base.get("rss_mb")
        rss = _div(s["rss_mb"], b_rss)
        out.append((f"{label}: idle RSS", fmt(s["rss_mb"], "MB"),
                    f"python3 + libvirt + lxml, connected: {fmt(b_rss, 'MB')}"
                    if b_rss else "", x(rss), target(rss, RSS_OVER_BASELINE)))
        lv = s.get("libvirtd_cpu_percent")
        out.append((f"{label}: idle CPU over {s['window_s']:.0f} s",
                    fmt(s["cpu_percent"], "% of a CPU", 2),
                    f"libvirtd, same window: {fmt(lv, '%', 2)}" if lv is not None else "",
                    "", target(s["cpu_percent"], 0.5, " % of a CPU")))
        ip = s["in_process"]
        floor = ip.get("list_xml_ms")
        pub = s.get("published_pass_ms") or {}
        over = _div(ip["steady_pass_ms"]["median"], floor)
        out.append((f"{label}: reconcile pass, steady (in-process; as published)",
                    f"{fmt(ip['steady_pass_ms']['median'], 'ms')} "
                    f"({fmt(pub.get('median'), 'ms')})",
                    f"list all domains + their XML: {fmt(floor, 'ms')}" if floor else "",
                    x(over), target(over, PASS_OVER_LISTING) if int(size) >= 50 else ""))
        out.append((f"{label}: reconcile pass that re-renders every inactive one",
                    fmt(ip["forced_rerender_ms"], "ms"), "", "", ""))
    return out


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


def _latency_section(lat: dict[str, Any], _py: float | None) -> list[Row]:
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
        out += _latency_rows(cond, per, quiet, why)
    return out


def _latency_rows(cond: str, per: dict[str, Any], quiet: bool, why: list[str]) -> list[Row]:
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


def markdown(res: dict[str, Any]) -> str:
    m = res.get("machine", {})
    lines = ["| figure | result | baseline (same run) | ratio | target: verdict |",
             "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(res)]
    lat = res.get("latency")
    if lat and "summary" in lat:
        spread = spread_lines(lat)
        if spread:
            lines += ["", f"Spread over the runs (each {lat['duration_s']} s of cyclictest at "
                      f"1 kHz on vCPU 0; load: `{lat['hog']}`; histogram to "
                      f"{lat.get('hist_us', HIST_EDGE_DEFAULT):,} µs):", "",
                      "| host | config | runs | samples | p99 per run (µs) | "
                      "p99.9 per run (µs) | max per run (µs) | steal per run (%) | "
                      "vCPU's worst wait (ms per s) | vCPU stalls |",
                      "|---|---|---|---|---|---|---|---|---|---|", *spread]
        lines += ["", *goal_lines(lat)]
    steps = res.get("steps", {})
    loads = ", ".join(f"{k} {v['loadavg_1m_before']:.2f}" for k, v in steps.items())
    total = res.get("total_seconds") or sum(v["seconds"] for v in steps.values())
    lines += ["", f"Measured {m.get('date', '?')} at {m.get('commit', '?')} on {m.get('cpus')} "
              f"CPUs, kernel {m.get('kernel')}, `kernel.sched_rt_runtime_us` = "
              f"{m.get('sched_rt_runtime_us')}; 1-minute load average before each step: "
              f"{loads}; {total / 60:.1f} minutes in all, lab set-up included"
              + (" (`--quick`)" if res.get("quick") else "")
              + ("; some steps re-run and merged" if m.get("merged") else "") + "."]
    return "\n".join(lines) + "\n"
