"""Spanning guests with an emulator narrower than their cells start (issue 25, item 1).

On Debian 12's libvirt 9.0 with QEMU 7.2 each hugepage-backed cell is preallocated from a
``thread-context`` on its node, created inside the emulator's cpuset: before the fix, a
3-vCPU domain over both nodes of this 2+2 host did not start with an isolated emulator or
with a partial mask (``Setting CPU affinity failed: Invalid argument``), while ``check``
passed it. Each case here starts, QEMU holds the guest's two cells, and once running every
emulator thread sits exactly where ``numahook check`` said (core/prealloc.py,
tunables/emulator.py); the IO threads too under ``ioThreadsPolicy``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.host.conftest import (
    PREFIX,
    Host,
    domain_xml,
    start_and_check_emulator,
    with_cpu_attrs,
)

NAME = PREFIX + "emu"

CASES = {
    # the README's real-time setup: every vCPU FIFO, the emulator on a CPU of its own
    "isolated": ("0-2", {"isolateEmulatorThread": "true"}, 0),
    # the emulator floats on the non-real-time vCPU 1's CPU, on node 0 only
    "partial-mask": ("0-2,^1", {}, 0),
    "isolated-partial-mask": ("0,2", {"isolateEmulatorThread": "true"}, 0),
    # IO threads follow the emulator's own CPUs, not the wider set of the start
    "isolated-iothreads-auto": ("0-2", {"isolateEmulatorThread": "true",
                                        "ioThreadsPolicy": "auto"}, 2),
    "partial-mask-iothreads-shared": ("0,2", {"ioThreadsPolicy": "shared"}, 1),
}


@pytest.fixture
def emu(clean: Host) -> Iterator[Host]:
    baseline = clean.inside("hugepages")
    yield clean
    clean.remove_domains()
    assert clean.inside("hugepages") == baseline


@pytest.mark.parametrize("case", sorted(CASES))
def test_spanning_domain_starts_and_its_emulator_is_where_check_said(emu: Host,
                                                                     case: str) -> None:
    mask, attrs, iothreads = CASES[case]
    xml = with_cpu_attrs(domain_xml(NAME, 3, 128, realtime=mask), **attrs)
    check = start_and_check_emulator(emu, NAME, xml, iothreads)
    assert len(check["cells"]) == 2
    # the start set borrowed a CPU on the node the emulator lacks; narrowed now
    start, own = set(check["pinning"]["emulator_start"]), set(check["pinning"]["emulator"])
    assert start > own
    log = emu.sh(f"journalctl -q --no-pager -t numahook-hook | grep 'domain={NAME} "
                 "action=emulator' | tail -n 1").stdout
    assert "cpus=" + ",".join(map(str, sorted(own))) in log
