"""Kernel uevents (CPU, node and memory hotplug) from a plain NETLINK_KOBJECT_UEVENT socket.

The datagrams are ``ACTION@DEVPATH`` followed by NUL-separated ``KEY=VALUE`` pairs, so
the socket API is all it takes; pyroute2 cost numahookd about 16 MB of resident memory
for the same thing.
"""

from __future__ import annotations

import errno
import socket

NETLINK_KOBJECT_UEVENT = 15
#: the kernel's multicast group; udev re-broadcasts on group 2 with a "libudev" header
KERNEL_GROUP = 1
#: subsystems whose events change what numahook renders
HOTPLUG = frozenset({"cpu", "node", "memory"})
_MAX_FIELDS = 64
_MAX_DATAGRAM = 8192
#: datagrams read per wake-up: a burst is drained in a bounded number of reads
_MAX_BATCH = 256


def open_socket() -> socket.socket:
    """A non-blocking socket on the kernel's uevent group (receiving needs no privilege)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT)
    try:
        sock.bind((0, KERNEL_GROUP))
    except OSError:
        sock.close()
        raise
    return sock


def parse(datagram: bytes) -> dict[str, str] | None:
    """The fields of one kernel uevent; None for anything else (a udev message, garbage)."""
    head, _, rest = datagram.partition(b"\0")
    if b"@" not in head or head.startswith(b"libudev"):
        return None
    fields: dict[str, str] = {}
    for item in rest.split(b"\0", _MAX_FIELDS)[:_MAX_FIELDS]:
        key, sep, value = item.partition(b"=")
        if sep and key:
            fields[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    if "ACTION" not in fields:
        action, _, devpath = head.partition(b"@")
        fields["ACTION"] = action.decode("ascii", "replace")
        fields.setdefault("DEVPATH", devpath.decode("utf-8", "replace"))
    return fields


def drain(sock: socket.socket) -> tuple[list[dict[str, str]], bool]:
    """Read what is queued: (kernel uevents, whether some were lost to a full buffer).

    Only datagrams from the kernel (sender port 0) count: another process could not
    send to this group without CAP_NET_ADMIN, but checking costs nothing.
    """
    events: list[dict[str, str]] = []
    lost = False
    for _ in range(_MAX_BATCH):
        try:
            data, (sender, _groups) = sock.recvfrom(_MAX_DATAGRAM)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped some: say so, go on
                lost = True
                continue
            raise
        if sender != 0:
            continue
        fields = parse(data)
        if fields is not None:
            events.append(fields)
    return events, lost


def hotplug(events: list[dict[str, str]]) -> list[dict[str, str]]:
    """The events that change the host's CPUs, nodes or memory."""
    return [e for e in events if e.get("SUBSYSTEM") in HOTPLUG]
