"""Prometheus's own linter on numahook's metrics: ``promtool check metrics``.

promtool comes from Debian's prometheus package (tests/support/promtool.py says how
scripts/test provides it, so that under scripts/test this test runs, never skips). The
e2e test does the same on the file a real numahookd wrote (tests/e2e/test_daemon.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.node import metrics
from numahook.node.metrics import Metric
from tests.support.nodes import capability
from tests.support.promtool import lint


@pytest.mark.parametrize(("host", "runtime", "version"), [
    ("intel-2s-ht-rt", -1, 1), ("intel-2s-ht", 950000, 1), ("intel-2s-ht", 950000, 2)])
def test_promtool_accepts_the_metrics(tmp_path: Path, host: str, runtime: int,
                                      version: int) -> None:
    cap = capability(tmp_path, host, runtime, version)
    # the shapes numahookd adds (numahook/daemon/main.py): gauges in base units, counters
    extra = [Metric.gauge("numahook_managed_domains_running", "Managed domains running.", 2),
             Metric.gauge("numahook_reconcile_seconds", "Last reconcile pass.", 0.004),
             Metric.counter("numahook_redefined_total", "Definitions redefined.", 3)]
    text = metrics.metrics_text(cap, extra)
    proc = lint(text)
    assert proc.returncode == 0, f"promtool: {proc.stdout}{proc.stderr}\n{text}"
    assert proc.stdout == proc.stderr == ""


def test_promtool_is_strict_enough_to_tell() -> None:
    """What numahook 0.1.0 published: promtool must reject it, or the test above is empty."""
    old = ("# HELP numahook_hugepages_total Hugepages reserved.\n"
           "# TYPE numahook_hugepages_total gauge\n"
           'numahook_hugepages_total{node="0",size_kib="2048"} 4\n'
           "# HELP numahook_sched_rt_runtime_us kernel.sched_rt_runtime_us.\n"
           "# TYPE numahook_sched_rt_runtime_us gauge\n"
           "numahook_sched_rt_runtime_us 950000\n")
    proc = lint(old)
    assert proc.returncode != 0
    assert 'non-counter metrics should not have "_total" suffix' in proc.stdout + proc.stderr
    assert "abbreviated units" in proc.stdout + proc.stderr
