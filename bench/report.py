"""The bench report: one results document (``bench/results/latest.json``) as one table.

Pure (standard library only, no lab, no libvirt): bench/run turns a whole results
document into the table, and tests/unit/test_bench_report.py feeds it synthetic ones.
The pieces: bench/histogram.py (cyclictest statistics, which bench/latency.py also uses
while it measures), bench/cells.py (a figure and its verdict in a cell),
bench/step_rows.py (every step but latency) and bench/latency_report.py (latency, judged
only when the machine's noise floor allows it).

Every target is a ratio to a baseline measured in the same run (bench/README.md, "The
figures"): absolute times move with the machine, ratios to its own Python start, its own
``sh``, its own libvirt listing, its own unmanaged domain do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import latency_report, step_rows
from bench.cells import Row

#: keys that tools read (issue 17): keep them
CONTRACT = ("started.daemon.*.runs[].delay_ms", "latency.summary.load.A.p99_us",
            "latency.summary.load.C.p99_us")

#: each step's rows, in the table's order; each gets the step's results and the bare
#: Python start the hook step measured (None without it)
STEPS: tuple[tuple[str, Callable[[dict[str, Any], float | None], list[Row]]], ...] = (
    ("render", step_rows.render_rows), ("hook", step_rows.hook_rows),
    ("started", step_rows.started_rows), ("start", step_rows.start_rows),
    ("daemon", step_rows.daemon_rows), ("latency", latency_report.rows))


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


def rows(res: dict[str, Any]) -> list[Row]:
    """(figure, result, baseline measured in the same run, ratio, target and verdict).

    A step whose results cannot be read gets one row that says so, so that one broken
    step never hides the others' figures.
    """
    out: list[Row] = []
    py = ((res.get("hook") or {}).get("results") or {}).get("python_start", {}).get("median_ms")
    for name, build in STEPS:
        if name not in res:
            continue
        try:
            out += build(res[name], py)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            out.append((name, f"unreadable result ({type(exc).__name__}: {exc})", "", "", ""))
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res.get("machine", {})
    lines = ["| figure | result | baseline (same run) | ratio | target: verdict |",
             "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(res)]
    lat = res.get("latency")
    if lat and "summary" in lat:
        lines += latency_report.tables(lat)
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
