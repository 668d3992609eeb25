"""bench/report.py and its parts: the bench report keeps the keys tools read, judges latency
only above a quiet noise floor, and prints every target as a ratio with its verdict.

Results documents are synthetic, built the way bench/latency.py builds its runs (one
cyclictest histogram per run), so each figure below is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import cells, histogram, latency_report, report

REPO = Path(__file__).resolve().parents[2]


def run(config: str, rep: int, hist: dict[int, int], *, over: int = 0, max_us: int | None = None,
        steal: float = 0.5, load: bool = True, hist_us: int = 50000) -> dict[str, Any]:
    """One run as bench/latency.py's run_once returns it (thread 0 only)."""
    return {"config": config, "load": load, "rep": rep, "hist_us": hist_us,
            "hist": {str(k): [v] for k, v in hist.items()}, "overflows": [over],
            "min_us": [min(hist)], "avg_us": [min(hist)],
            "max_us": [max_us if max_us is not None else max(hist)],
            "steal_pct": steal, "loadavg_1m": 2.0,
            "threads": {"vcpu0": {"wait_ms": 1.0, "max_wait_ms_per_s": 1.0,
                                  "max_run_ms_per_s": 200.0}}}


def a_run(rep: int, **kw: Any) -> dict[str, Any]:
    # 10,000 samples: 98.5 % at 100 µs, 1 % at 3,000 µs, 0.5 % at 6,000 µs -> p99 3,000
    return run("A", rep, {100: 9850, 3000: 100, 6000: 50}, **kw)


def c_run(rep: int, c_max: int = 2000, **kw: Any) -> dict[str, Any]:
    # p99 250 µs; one sample at c_max
    return run("C", rep, {100: 9800, 250: 199, c_max: 1}, **kw)


def document(runs: list[dict[str, Any]], floor: dict[str, Any]) -> dict[str, Any]:
    summary = histogram.summarize(runs, ["A", "C"], [True])
    return {
        "machine": {"date": "2026-12-03", "commit": "abc", "cpus": 2},
        "steps": {"latency": {"seconds": 60, "loadavg_1m_before": 0.5}},
        "hook": {"results": {"python_start": {"median_ms": 16.0},
                             "sh_cat": {"median_ms": 2.0},
                             "hook_unmanaged": {"median_ms": 2.5},
                             "hook_prepare_dedicated": {"median_ms": 42.0}},
                 "unmanaged_ratio": 1.25},
        "started": {"floors": {"python_start": {"median_ms": 16.0},
                               "python_with_hook_imports": {"median_ms": 30.0}},
                    "daemon": {"1": {"runs": [{"delay_ms": 0.0}, {"delay_ms": 4.0}],
                                     "delay": {"median_ms": 2.0, "max_ms": 4.0, "runs": 2},
                                     "hook_wall": {"median_ms": 20.0}, "early": [5.0, -4.0]}}},
        "latency": {"duration_s": 10, "hog": "stress-ng --cpu 4 --taskset 0-1",
                    "hist_us": 50000, "floor": floor, "b_vcpusched": [], "summary": summary,
                    "runs": [{k: v for k, v in r.items() if k != "hist"} for r in runs]},
    }


QUIET = {"seconds": 10, "hist_us": 50000, "median_us": 20.0, "p99_us": 80.0,
         "p999_us": 300.0, "max_us": 900, "steal_pct": 0.4, "busy_pct": 3.0,
         "loadavg_1m": 0.3}


def test_the_document_keeps_the_keys_tools_read() -> None:
    doc = document([a_run(0), c_run(0)], QUIET)
    assert report.contract_problems(doc) == []
    assert doc["latency"]["summary"]["load"]["A"]["p99_us"] == 3000.0
    assert doc["latency"]["summary"]["load"]["C"]["p99_us"] == 250.0
    del doc["started"]["daemon"]["1"]["runs"][1]["delay_ms"]
    del doc["latency"]["summary"]["load"]["C"]["p99_us"]
    assert report.contract_problems(doc) == ["started.daemon.1.runs[1].delay_ms",
                                             "latency.summary.load.C.p99_us"]


def test_the_committed_results_keep_the_keys_tools_read() -> None:
    doc = json.loads((REPO / "bench" / "results" / "latest.json").read_text())
    assert report.contract_problems(doc) == []


def test_a_wide_histogram_gives_a_numbers_beyond_2_ms() -> None:
    s = histogram.stats([a_run(0)])
    assert (s["p99_us"], s["p999_us"], s["max_us"]) == (3000.0, 6000.0, 6000)
    clipped = histogram.stats([run("A", 0, {100: 9850}, over=150, max_us=6000, hist_us=2000)])
    assert clipped["p99_us"] is None and clipped["hist_us"] == 2000


def test_a_quiet_floor_prints_the_ratio_and_judges_every_run() -> None:
    doc = document([a_run(0), c_run(0, c_max=2000), a_run(1), c_run(1, c_max=4000)], QUIET)
    assert latency_report.floor_verdict(doc["latency"]) == (True, [])
    goals = latency_report.latency_goals(doc["latency"])
    assert [(g["rep"], g["p99_ratio"], g["p99_ok"], g["max_ok"]) for g in goals] == [
        (0, 12.0, True, True), (1, 12.0, True, False)]
    md = report.markdown(doc)
    assert "A/C: " in md
    assert "| 1 | 3,000 µs | 250 µs | 12.0x | pass | 2,000 µs | pass |" in md
    assert "| 2 | 3,000 µs | 250 µs | 12.0x | pass | 4,000 µs | FAIL |" in md


@pytest.mark.parametrize("floor, runs_steal, why", [
    ({**QUIET, "p99_us": 900.0}, 0.5, "idle-host p99 900 µs > 500 µs"),
    ({**QUIET, "p99_us": None}, 0.5, "idle-host p99 beyond 50000 µs"),
    ({**QUIET, "steal_pct": 9.0}, 0.5, "idle-host steal 9.0 % > 5 %"),
    (QUIET, 12.0, "median run steal 12.0 % > 5 %"),
])
def test_a_high_floor_prints_no_ratio(floor: dict[str, Any], runs_steal: float,
                                      why: str) -> None:
    doc = document([a_run(0, steal=runs_steal), c_run(0, steal=runs_steal)], floor)
    quiet, reasons = latency_report.floor_verdict(doc["latency"])
    assert not quiet and any(why in r for r in reasons)
    md = report.markdown(doc)
    assert "A/C: " not in md and "12.0x" not in md
    assert f"not judged: noise floor too high: {why}" in md
    assert f"Goals under load not judged: noise floor too high: {why}" in md


def test_a_floor_probed_on_a_busy_host_is_no_floor() -> None:
    doc = document([a_run(0), c_run(0)], {**QUIET, "busy_pct": 97.6})
    md = report.markdown(doc)
    assert "A/C: " not in md
    assert "not judged: the host was not idle during the floor probe: busy 98 % > 25 %" in md


def test_results_without_a_floor_are_not_judged() -> None:
    doc = document([a_run(0), c_run(0)], {})
    md = report.markdown(doc)
    assert "A/C: " not in md
    assert "not judged: no idle-host noise floor was measured" in md


def test_a_noisy_run_is_not_judged_but_its_neighbours_are() -> None:
    doc = document([a_run(0), c_run(0), a_run(1), c_run(1, steal=8.0),
                    a_run(2), c_run(2)], QUIET)
    goals = latency_report.latency_goals(doc["latency"])
    assert [(g["noisy"], g["p99_ok"]) for g in goals] == [(False, True), (True, None),
                                                          (False, True)]


def test_an_a_beyond_the_histogram_only_proves_a_pass() -> None:
    a_clipped = run("A", 0, {100: 9850}, over=150, max_us=9000, hist_us=2000)
    proven = document([a_clipped, c_run(0, c_max=1500, hist_us=2000)], QUIET)
    goals = latency_report.latency_goals(proven["latency"])
    # 2,000 / 250 = 8x: a bound, so no failure is proven either
    assert [(g["p99_ok"], g["max_ok"]) for g in goals] == [(None, True)]
    fast = run("C", 0, {50: 9950, 150: 50}, hist_us=2000)
    doc = document([a_clipped, fast], QUIET)
    assert [(g["p99_ok"], g["max_ok"]) for g in latency_report.latency_goals(doc["latency"])] == [
        (True, True)]


def test_every_target_is_a_ratio_with_its_verdict() -> None:
    rows = {r[0]: r for r in report.rows(document([a_run(0), c_run(0)], QUIET))}
    prep = rows["hook, managed `prepare` (dedicated CPUs)"]
    assert (prep[3], prep[4]) == ("2.62x", "≤ 2x: FAIL")
    unmanaged = rows["hook, unmanaged domain (sh front)"]
    assert (unmanaged[3], unmanaged[4]) == ("1.25x", "≤ 3x: pass")
    fast = next(r for k, r in rows.items() if "fast path" in k)
    assert (fast[3], fast[4]) == ("1.25x", "≤ 1.5x: pass")
    assert cells.target(None, 2.0) == "≤ 2x: n/a"


def test_the_stdlib_floor_under_a_managed_call_has_its_row_when_measured() -> None:
    doc = document([a_run(0), c_run(0)], QUIET)
    assert "floor under a managed call" not in report.markdown(doc)
    doc["hook"]["results"]["python_stdlib_floor"] = {"median_ms": 32.0}
    row = next(ln for ln in report.markdown(doc).splitlines()
               if ln.startswith("| floor under a managed call"))
    assert "| 32.0 ms | `python3 -I -c pass`: 16.0 ms | 2.00x |" in row


def test_the_loaded_host_floor_is_reported_beside_the_goals_without_changing_them() -> None:
    doc = document([a_run(0), c_run(0, c_max=4000)], QUIET)
    before = latency_report.latency_goals(doc["latency"])
    doc["latency"]["floor_load"] = {**QUIET, "max_us": 4500, "p99_us": 60.0}
    assert latency_report.latency_goals(doc["latency"]) == before
    assert before[0]["max_ok"] is False
    md = report.markdown(doc)
    assert "| noise floor under load: the same cyclictest on the host under " in md
    assert "The host's own FIFO thread under the same load (no guest): max 4,500 µs" in md


def start_variant(managed: float, unmanaged: float, trace: bool = True) -> dict[str, Any]:
    """bench/start.py's result for one variant: three pairs, the middle one at the medians."""
    cpu = {"hooks_cpu": 110.0, "numahookd_cpu": 11.0, "numahookd_wait": 0.5,
           "libvirtd_cpu": 50.0, "libvirtd_wait": 3.0}
    out: dict[str, Any] = {
        "label": "1 dedicated vCPU, passthrough, 64 × 2 MiB", "pairs": 3,
        "managed": {"median_ms": managed, "min_ms": managed - 50, "max_ms": managed + 90},
        "unmanaged": {"median_ms": unmanaged, "min_ms": unmanaged - 40,
                      "max_ms": unmanaged + 60},
        "ratio": round(managed / unmanaged, 3), "ratio_spread": [1.05, 1.6],
        "extra_ms": managed - unmanaged, "cpu_ms": {"managed": cpu, "unmanaged": cpu}}
    if trace:
        seg = dict.fromkeys(("to_prepare", "prepare_to_start", "after_started"), 1.0)
        seg.update(prepare=30.0, start=25.0, started=35.0, start_to_started=-7.0)
        out["trace"] = {"pairs": 2, "extra_ms": 85.0,
                        "cpu_ms": {"managed": cpu, "unmanaged": {**cpu, "hooks_cpu": 10.0}},
                        "segments": {k: {"extra_ms": v} for k, v in seg.items()}}
    return out


def test_a_managed_start_is_judged_against_the_same_domain_unmanaged() -> None:
    doc = document([a_run(0), c_run(0)], QUIET)
    doc["start"] = {"variants": {"dedicated": start_variant(600.0, 500.0),
                                 "realtime": start_variant(520.0, 500.0, trace=False)}}
    got = [r for r in report.rows(doc) if "virsh start" in r[0] or "extra" in r[0]]
    assert [(r[3], r[4]) for r in got] == [
        ("1.20x (pairs 1.05x – 1.60x)", "≤ 1.1x: FAIL"), ("", ""),
        ("1.04x (pairs 1.05x – 1.60x)", "≤ 1.1x: pass")]
    ratio, where = got[0], got[1]
    assert ratio[1] == "600 ms (550 – 690)"
    assert ratio[2] == "the same definition unmanaged, paired: 500 ms (460 – 560)"
    assert where[0].startswith("where the managed start's extra 85 ms went (2 traced pairs")
    assert where[1] == ("numahook's hook calls `prepare` +30 ms, `start` +25 ms, `started` "
                        "+35 ms; libvirt and QEMU around them -4 ms")
    assert "hook processes' CPU 110 / 10 ms" in where[2]
    md = report.markdown(doc)  # after the started rows, before latency
    order = [md.index(s) for s in ("`started` hook wall time", "virsh start", "guest latency A")]
    assert order == sorted(order)


def test_a_start_result_without_its_figures_says_so_and_keeps_the_rest() -> None:
    doc = document([a_run(0), c_run(0)], QUIET)
    doc["start"] = {"variants": {"dedicated": {"label": "x"}}}
    rows = report.rows(doc)
    assert ("start", "unreadable result (KeyError: 'managed')", "", "", "") in rows
    assert any(r[0].startswith("hook, managed `prepare`") for r in rows)
