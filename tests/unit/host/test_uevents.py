"""Kernel uevents read from a plain netlink socket (what replaced pyroute2)."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from numahook.host import uevents

CPU0_UEVENT = Path("/sys/devices/system/cpu/cpu0/uevent")


def test_a_kernel_cpu_event_parses_into_its_fields() -> None:
    data = (b"online@/devices/system/cpu/cpu3\0ACTION=online\0DEVPATH=/devices/system/cpu/cpu3"
            b"\0SUBSYSTEM=cpu\0SEQNUM=4242\0")
    ev = uevents.parse(data)
    assert ev == {"ACTION": "online", "DEVPATH": "/devices/system/cpu/cpu3",
                  "SUBSYSTEM": "cpu", "SEQNUM": "4242"}
    assert uevents.hotplug([ev]) == [ev]


def test_udev_rebroadcasts_and_garbage_are_not_events() -> None:
    assert uevents.parse(b"libudev\0\xfe\xed\xca\xfe" + b"\0" * 32) is None
    assert uevents.parse(b"") is None
    assert uevents.parse(b"no separator at all") is None


def test_the_header_stands_in_for_a_missing_action() -> None:
    ev = uevents.parse(b"add@/devices/system/memory/memory9\0SUBSYSTEM=memory\0")
    assert ev is not None and ev["ACTION"] == "add"
    assert ev["DEVPATH"] == "/devices/system/memory/memory9"


def test_fields_are_bounded_and_odd_bytes_survive() -> None:
    data = b"change@/x\0ACTION=change\0" + b"".join(b"K%d=v\0" % i for i in range(1000))
    ev = uevents.parse(data + b"SUBSYSTEM=\xff\xfe\0")
    assert ev is not None and len(ev) <= 64
    assert uevents.parse(b"change@/x\0ACTION=change\0DEVPATH=/\xff\0")["DEVPATH"] == "/\ufffd"


def test_other_subsystems_are_not_hotplug() -> None:
    evs = [{"ACTION": "add", "SUBSYSTEM": "block"}, {"ACTION": "remove", "SUBSYSTEM": "node"}]
    assert uevents.hotplug(evs) == [evs[1]]


@pytest.mark.skipif(os.geteuid() != 0 or not CPU0_UEVENT.exists(),
                    reason="needs root to make the kernel emit a uevent")
def test_a_real_kernel_uevent_arrives_on_the_socket() -> None:
    sock = uevents.open_socket()
    try:
        assert uevents.drain(sock)[0] is not None  # empty the queue first
        CPU0_UEVENT.write_text("change")
        got: list[dict[str, str]] = []
        for _ in range(20):  # bounded: 20 x 100 ms
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            events, _ = uevents.drain(sock)
            got += uevents.hotplug(events)
            if any(e.get("DEVPATH") == "/devices/system/cpu/cpu0" for e in got):
                break
        assert any(e["ACTION"] == "change" and e["SUBSYSTEM"] == "cpu"
                   and e.get("DEVPATH") == "/devices/system/cpu/cpu0" for e in got), got
    finally:
        sock.close()
