"""The rows of every step but latency: render, hook, started, start and daemon.

Each figure here is judged by one ratio to a baseline measured in the same run, against
a target kept beside it below (bench/README.md, "The figures", says where each target
comes from). bench/latency_report.py holds the latency step, whose verdicts depend on
the machine's noise floor as well.
"""

from __future__ import annotations

from typing import Any

from bench.cells import Row, div, fmt, target, x

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
#: ``virsh start`` of a managed domain / the same definition unmanaged, paired (issue 26):
#: what a user waits for, not one hook call
START_OVER_UNMANAGED = 1.1


def render_rows(r: dict[str, Any], py: float | None) -> list[Row]:
    by = {(x_["case"], x_["path"]): x_ for x_ in r["results"]}
    big, small = by[("render 240 vCPUs", "fresh")], by[("render 4 vCPUs", "fresh")]
    over_py = div(big["median_ms"], py)
    again = by[("render 240 vCPUs", "re-render")]
    return [(f"render 240 vCPUs, {r['nodes']}-node {r['cpus']}-CPU host (in-process)",
             fmt(big["median_ms"], "ms", 2),
             f"`python3 -I -c pass` (hook step): {fmt(py, 'ms')}; 4 vCPUs: "
             f"{fmt(small['median_ms'], 'ms', 2)}",
             f"{x(over_py)} Python start; {x(big['median_ms'] / small['median_ms'])} 4 vCPUs",
             target(over_py, RENDER_OVER_PYTHON)),
            ("re-render 240 vCPUs (already rendered, kept pinning)",
             fmt(again["median_ms"], "ms", 2), "", x(div(again["median_ms"], py)), "")]


def hook_rows(hk: dict[str, Any], _py: float | None) -> list[Row]:
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


def started_rows(s: dict[str, Any], _py: float | None) -> list[Row]:
    out: list[Row] = []
    fl = s.get("floors", {})
    py = (fl.get("python_start") or {}).get("median_ms")
    floor = (f"`python3 -I` start {fmt(py, 'ms')}; with the hook's imports "
             f"{fmt(fl['python_with_hook_imports']['median_ms'], 'ms')}" if fl else "")
    for n, d in sorted(s.get("daemon", {}).items()):
        early = [e for e in d.get("early", []) if e is not None]
        won = sum(e > 0 for e in early)
        margin = sorted(early)[len(early) // 2] if early else None
        over = div(d["delay"]["max_ms"], py)
        out.append((f"`started` → last masked vCPU FIFO, throttled node (delegation) with "
                    f"numahookd, {WHERE.get(n, n + ' vCPUs')}: median / max",
                    f"{fmt(d['delay']['median_ms'], 'ms')} / {fmt(d['delay']['max_ms'], 'ms')}",
                    f"{floor}; numahookd's audit line before `started` began in {won}/"
                    f"{d['delay']['runs']} starts"
                    + (f", median margin {fmt(margin, 'ms')}" if margin is not None else ""),
                    f"max {x(over)}", target(over, FIFO_OVER_PYTHON)))
    for n, d in sorted(s.get("delegate", {}).items()):
        over = div(d["delay"]["max_ms"], py)
        out.append((f"`started` → last masked vCPU FIFO, throttled node (delegation), "
                    f"hook alone (no numahookd), {WHERE.get(n, n + ' vCPUs')}: median / max",
                    f"{fmt(d['delay']['median_ms'], 'ms')} / {fmt(d['delay']['max_ms'], 'ms')}",
                    floor, f"max {x(over)}", target(over, HOOK_FIFO_OVER_PYTHON)))
    for n, v in sorted(s.get("vcpusched", {}).items()):
        note = f" (mask {v['mask']}: see findings)" if v.get("problem") else ""
        over = div(v["delay"]["max_ms"], py)
        out.append((f"`started` → FIFO, real-time capable node (sysctl -1, `<vcpusched>`), "
                    f"{n} vCPU(s){note}",
                    f"{fmt(v['delay']['max_ms'], 'ms')}: FIFO before the vCPUs ran in "
                    f"{v['fifo_at_first_sight']}/{v['delay']['runs']} starts", floor,
                    f"max {x(over)}", target(over, FIFO_OVER_PYTHON)))
    for n, d in sorted(s.get("daemon", {}).items()):
        if "hook_wall" not in d:
            continue
        over = div(d["hook_wall"]["median_ms"], py)
        out.append((f"numahook's `started` hook wall time, {n} vCPU(s), numahookd did the "
                    "work (fast path)", fmt(d["hook_wall"]["median_ms"], "ms"), floor,
                    x(over), target(over, FAST_PATH_OVER_PYTHON)))
    for n, d in sorted(s.get("delegate", {}).items()):
        v = s.get("vcpusched", {}).get(n)
        out.append((f"numahook's `started` hook wall time, {n} vCPU(s): delegation, no "
                    "numahookd", fmt(d["hook_wall"]["median_ms"], "ms"),
                    f"sysctl -1: {fmt(v['hook_wall']['median_ms'], 'ms')}" if v else "",
                    x(div(d["hook_wall"]["median_ms"], py)), ""))
    return out


def daemon_rows(dm: dict[str, Any], _py: float | None) -> list[Row]:
    out: list[Row] = []
    base = dm.get("baseline", {})
    for size, s in sorted(dm["sizes"].items(), key=lambda kv: int(kv[0])):
        label = f"numahookd, {size} managed domains ({s['running']} running)"
        b_rss = base.get("rss_mb")
        rss = div(s["rss_mb"], b_rss)
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
        over = div(ip["steady_pass_ms"]["median"], floor)
        out.append((f"{label}: reconcile pass, steady (in-process; as published)",
                    f"{fmt(ip['steady_pass_ms']['median'], 'ms')} "
                    f"({fmt(pub.get('median'), 'ms')})",
                    f"list all domains + their XML: {fmt(floor, 'ms')}" if floor else "",
                    x(over), target(over, PASS_OVER_LISTING) if int(size) >= 50 else ""))
        out.append((f"{label}: reconcile pass that re-renders every inactive one",
                    fmt(ip["forced_rerender_ms"], "ms"), "", "", ""))
    return out


#: the hook calls of a start, and the libvirt (and QEMU) work before, between and after them
#: (bench/start.py's trace segments)
HOOK_CALLS = ("prepare", "start", "started")
LIBVIRT_WORK = ("to_prepare", "prepare_to_start", "start_to_started", "after_started")


def start_rows(st: dict[str, Any], _py: float | None) -> list[Row]:
    """Per variant: the paired ratio, and where the traced starts' extra time went."""
    out: list[Row] = []
    for v in st["variants"].values():
        m, u = v["managed"], v["unmanaged"]
        lo, hi = v["ratio_spread"]
        fifo = v.get("fifo_at_return")
        out.append((f"`virsh start` to running, managed with numahookd: {v['label']}: median "
                    f"(min – max), {v['pairs']} pairs",
                    f"{fmt(m['median_ms'], 'ms', 0)} ({m['min_ms']:.0f} – {m['max_ms']:.0f})"
                    + (f"; vCPU FIFO when virsh returned in {fifo[0]}/{fifo[1]}" if fifo else ""),
                    f"the same definition unmanaged, paired: {fmt(u['median_ms'], 'ms', 0)} "
                    f"({u['min_ms']:.0f} – {u['max_ms']:.0f})",
                    f"{x(v['ratio'])} (pairs {lo:.2f}x – {hi:.2f}x)",
                    target(v["ratio"], START_OVER_UNMANAGED)))
        tr = v.get("trace") or {}
        seg = tr.get("segments")
        if not seg:
            continue
        cm, cu = tr["cpu_ms"]["managed"], tr["cpu_ms"]["unmanaged"]
        hooks = ", ".join(f"`{k}` {seg[k]['extra_ms']:+.0f} ms" for k in HOOK_CALLS)
        work = sum(seg[k]["extra_ms"] for k in LIBVIRT_WORK)
        out.append((f"where the managed start's extra {fmt(tr['extra_ms'], 'ms', 0)} went "
                    f"({tr['pairs']} traced pairs, medians of the pairs' differences)",
                    f"numahook's hook calls {hooks}; libvirt and QEMU around them "
                    f"{work:+.0f} ms",
                    "per start, managed / unmanaged: hook processes' CPU "
                    f"{cm['hooks_cpu']:.0f} / {cu['hooks_cpu']:.0f} ms, numahookd's "
                    f"{cm['numahookd_cpu']:.0f} / {cu['numahookd_cpu']:.0f} ms; libvirtd waited "
                    f"{cm['libvirtd_wait']:.0f} / {cu['libvirtd_wait']:.0f} ms for a CPU",
                    "", ""))
    return out
