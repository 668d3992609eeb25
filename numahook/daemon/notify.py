"""sd_notify(3) that never blocks the daemon's loop.

A datagram to ``NOTIFY_SOCKET`` blocks once the receiver's queue is full
(``net.unix.max_dgram_qlen``): PID 1 busy with a burst of units or a ``daemon-reload``,
or a test harness that reads late. A blocked ``WATCHDOG=1`` cannot be told apart from a
hung daemon, and the libvirt events queued behind it are lost for good. So every message
is sent with ``MSG_DONTWAIT``; one that cannot go at once is dropped and counted
(node.json's daemon counters, ``numahook_sd_notify_dropped_total``). A dropped
``WATCHDOG=1`` is harmless: the next one follows within half of ``WatchdogSec``.

As libsystemd does, each message opens its own socket, so a re-executed PID 1 or a
changed path is followed, and ``@name`` is an abstract socket.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

#: a dropped message is logged at most this often (seconds)
LOG_EVERY = 60.0


def socket_address(value: str) -> str | bytes | None:
    """``NOTIFY_SOCKET`` as an address for ``sendto``: a path, or ``@name`` for the abstract
    namespace (a leading NUL). None for what is neither (sd_notify ignores those too)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.enabled = self.address is not None
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        #: messages that could not be sent at once and were dropped
        self.dropped = 0
        self.sent = 0
        self._last_logged = -LOG_EVERY

    def send(self, text: str) -> bool:
        """Send one notification without waiting; False when it was dropped."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)
                s.sendto(text.encode(), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL,
                         self.address)
        except OSError as exc:
            self._dropped(text, exc)
            return False
        self.sent += 1
        return True

    def _dropped(self, text: str, exc: OSError) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_logged < LOG_EVERY:
            return
        self._last_logged = now
        why = ("the receiver's queue is full" if exc.errno in (errno.EAGAIN, errno.ENOBUFS)
               else exc.strerror or str(exc))
        log.warning("sd_notify: dropped %r (%s); %d dropped so far, the next is logged in a "
                    "minute at the earliest", text.split("\n", 1)[0], why, self.dropped)

    def watchdog_interval(self) -> float | None:
        """Half of systemd's WatchdogSec, when it is set for us."""
        usec, pid = self._watchdog_usec, self._watchdog_pid
        if not usec.isascii() or not usec.isdigit() or int(usec) == 0 or \
                (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 match the reload to its request
        self.send(f"RELOADING=1\nMONOTONIC_USEC={int(time.monotonic() * 1e6)}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")
