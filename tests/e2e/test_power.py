"""CPU power on this machine's kernel: what ``pm_qos_resume_latency_us`` holds while a
managed domain runs and after it stops (numahook/tunables/power.py).

The kernel's reading of the file is shown first, on a CPU no domain holds, each value put
back: ``n/a`` stops every idle state deeper than polling (the deeper states' usage counters
stand still while the polling state's grows), ``0`` is no limit, and what the kernel
refuses (a negative, S32_MAX). Then the hook writes it for a real domain's CPU, and puts
back what was there. This machine has no cpufreq (a VM): a governor is an advisory, and
the domain starts. Each test puts every CPU's file back, whatever happens.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import guest
from tests.e2e.helpers import (
    HOLD,
    claim_files,
    delegate_config,
    metadata,
    render_here,
    wait_until,
)

__all__ = ["delegate_config"]  # a fixture, used by name

CPU = Path("/sys/devices/system/cpu")
POWER = "<numahook:power idleStates='disable' governor='performance'/>"


def latency_file(cpu: int) -> Path:
    return CPU / f"cpu{cpu}/power/pm_qos_resume_latency_us"


def latencies() -> dict[int, str]:
    return {int(p.parent.parent.name[3:]): p.read_text().strip()
            for p in CPU.glob("cpu[0-9]*/power/pm_qos_resume_latency_us")}


def deep_usage(cpu: int) -> tuple[int, int]:
    """(times CPU ``cpu`` polled, times it entered any deeper idle state)."""
    states = sorted((CPU / f"cpu{cpu}/cpuidle").glob("state[0-9]*"))
    usage = [int((s / "usage").read_text()) for s in states]
    return usage[0], sum(usage[1:])


@pytest.fixture
def power_files() -> Iterator[dict[int, str]]:
    """Every CPU's PM QoS file as it was, put back after the test whatever it did, but
    on CPUs a claim holds: their domain's stop puts those back (the domains fixture
    destroys ours after this runs)."""
    before = latencies()
    if not before:
        pytest.skip("this kernel has no per-CPU pm_qos_resume_latency_us")
    if os.geteuid() != 0:
        pytest.skip("writing pm_qos_resume_latency_us needs root")
    try:
        yield before
    finally:
        held = _others("")
        for cpu, value in before.items():
            if cpu not in held and latency_file(cpu).read_text().strip() != value:
                latency_file(cpu).write_text(value)


def test_the_kernel_reads_n_a_as_polling_only_and_0_as_no_limit(
        power_files: dict[int, str]) -> None:
    """On the first CPU no domain holds that is idle at all: under ``n/a`` it polls and
    enters no deeper state; under ``0`` it enters deeper ones again."""
    free = [c for c in sorted(power_files, reverse=True) if c not in _others("")
            and (CPU / f"cpu{c}/cpuidle/state1").is_dir()]
    if not free:
        pytest.skip("no CPU outside the domains' with idle states deeper than polling")
    for cpu in free:
        f = latency_file(cpu)
        f.write_text("n/a")
        assert f.read_text() == "n/a\n"
        polls, deep = deep_usage(cpu)
        time.sleep(1.0)
        assert deep_usage(cpu)[1] == deep, f"CPU {cpu} entered a deeper idle state under n/a"
        if deep_usage(cpu)[0] > polls:
            break
        f.write_text(power_files[cpu])  # never idle for a second: try another
    else:
        pytest.skip(f"CPUs {free} were never idle for a second (something keeps them busy)")
    f.write_text("0")
    assert f.read_text() == "0\n"  # no limit, shown as 0 again
    wait_until(lambda: deep_usage(cpu)[1] > deep, timeout=10,
               what="a deeper idle state once the limit is lifted")
    for refused in ("-1", "2147483647"):
        with pytest.raises(OSError):
            f.write_text(refused)
    assert f.read_text() == "0\n"
    f.write_text(power_files[cpu])


def _claim(name: str) -> dict[str, Any] | None:
    for path in claim_files():
        data = json.loads(path.read_text())
        if data["name"] == name:
            return data
    return None


def _others(name: str) -> set[int]:
    """CPUs held by managed domains other than ``name`` (none, when the lab is ours)."""
    out: set[int] = set()
    for path in claim_files():
        data = json.loads(path.read_text())
        if data["name"] != name:
            out.update(data["cpus"])
    return out


def _apart(values: dict[int, str], skip: set[int]) -> dict[int, str]:
    return {c: v for c, v in values.items() if c not in skip}


def test_a_domain_polls_on_its_cpu_while_it_runs_and_the_value_is_put_back(
        domains: Any, power_files: dict[int, str]) -> None:
    from numahook.ops import status

    xml = render_here(domains.probe_xml("power", vcpus=1, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata().replace(
                                            "</numahook:cpu>", POWER + "</numahook:cpu>")))
    dom = domains.define(xml)
    domains.start(dom)
    (pins,) = dom.vcpuPinInfo()
    mine = [i for i, on in enumerate(pins) if on]
    assert len(mine) == 1
    cpu = mine[0]
    now = latencies()
    assert now[cpu] == "n/a"
    skip = _others(dom.name()) | {cpu}
    assert _apart(now, skip) == _apart(power_files, skip), "a CPU it does not hold changed"
    claim = _claim(dom.name())
    assert claim is not None
    assert claim["tunables"]["power"]["saved_latency"] == {str(cpu): power_files[cpu]}
    if (CPU / f"cpu{cpu}/cpuidle/state1").is_dir():
        deep = deep_usage(cpu)[1]
        time.sleep(1.0)
        assert deep_usage(cpu)[1] == deep, "the domain's CPU entered a deeper idle state"
    from numahook.config import Config

    (running,) = [d for d in status.collect(Config())["running"] if d["name"] == dom.name()]
    assert running["power"]["ok"] is True
    assert running["power"]["now"] == [{"cpu": cpu, "pm_qos_resume_latency_us": "n/a",
                                        "scaling_governor": None}]
    assert any("no cpufreq" in n for n in running["power"]["notes"])  # an advisory only
    domains.stop(dom)
    wait_until(lambda: _claim(dom.name()) is None, what="the claim to be released")
    assert _apart(latencies(), _others(dom.name())) == _apart(power_files, _others(dom.name()))


def test_a_realtime_domain_polls_by_default(domains: Any, power_files: dict[int, str],
                                            delegate_config: None) -> None:
    xml = render_here(domains.probe_xml("powerrt", vcpus=1, memory_mib=128,
                                        hugepage_kib=2048, cmdline=HOLD,
                                        extra=metadata(mask="0")))
    dom = domains.define(xml)
    domains.start(dom)
    pid, _ = guest.vcpu_threads(dom.name())
    assert pid is not None
    (pins,) = dom.vcpuPinInfo()
    cpu = pins.index(True)
    assert latencies()[cpu] == "n/a"
    domains.stop(dom)
    wait_until(lambda: _claim(dom.name()) is None, what="the claim to be released")
    assert latencies()[cpu] == power_files[cpu]
    assert _apart(latencies(), _others(dom.name())) == _apart(power_files, _others(dom.name()))
