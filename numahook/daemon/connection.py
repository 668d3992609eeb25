"""The daemon's libvirt connection: keepalive, close callback, reconnect with backoff.

Once open, every call is bounded by libvirt's keepalive (:data:`KEEPALIVE`): a server that
stops answering is declared dead and the call fails. Opening is not: ``virConnectOpen``
and the keepalive set-up wait for the server's answer without a bound, and a libvirtd
that accepts but does not answer (stopped, or stuck in a reload) would hold the loop.
So each attempt runs in a thread of its own and hands its result back through a pipe;
the loop goes on meanwhile, and an attempt that takes long is reported, not repeated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt

from numahook import NAMESPACE
from numahook.daemon.loop import Loop

log = logging.getLogger(__name__)

#: libvirt's virConnectCloseReason, in words: the journal is read by people
CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "an I/O error on the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed it (stopped or restarted)",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "libvirtd stopped answering keepalives",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "numahookd closed it",
}


def close_reason(reason: int) -> str:
    """Why libvirt closed the connection; a code this libvirt does not know is shown as is."""
    return CLOSE_REASONS.get(reason, f"libvirt's close reason {reason}")


EventHandler = Callable[[Any, int, int], None]

#: libvirt's lifecycle event names, for logs
EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: (interval s, missed answers): a silent server is dropped after about 20 s
KEEPALIVE = (5, 3)
#: an attempt still waiting for libvirt after this long is logged again (seconds)
CONNECT_WARN = 30.0


class Connection:
    def __init__(self, uri: str, loop: Loop, on_event: EventHandler,
                 on_connected: Callable[[], None], on_lost: Callable[[], None],
                 on_failed: Callable[[], None] | None = None,
                 on_metadata: Callable[[Any], None] | None = None) -> None:
        self.uri = uri
        self.loop = loop
        self.on_event = on_event
        self.on_connected = on_connected
        self.on_lost = on_lost
        #: an attempt failed (the next is scheduled)
        self.on_failed = on_failed
        #: our namespace's metadata of a domain changed (``virsh metadata --set``)
        self.on_metadata = on_metadata
        self.conn: Any = None
        self._attempt = 0
        self._retry: int | None = None
        #: the attempt under way: (its thread, when it began); its result, once there
        self._pending: tuple[threading.Thread, float] | None = None
        self._result: Any = None
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watch = loop.watch_fd(self._rfd, self._finish, "libvirt connect")
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we log ourselves

    @property
    def up(self) -> bool:
        return self.conn is not None

    @property
    def connecting_for(self) -> float | None:
        """Seconds the attempt under way has waited for libvirt, None when none is."""
        return None if self._pending is None else time.monotonic() - self._pending[1]

    def open(self) -> None:
        """Begin an attempt (one at a time); the loop learns its outcome from the pipe."""
        if self._retry is not None:
            self.loop.cancel(self._retry)
            self._retry = None
        if self._pending is not None:
            log.warning("libvirt at %s has not answered the connection attempt for %.0f s; "
                        "still waiting (is libvirtd stopped or stuck?)", self.uri,
                        self.connecting_for)
            self._schedule(CONNECT_WARN)
            return
        thread = threading.Thread(target=self._connect, name="libvirt-connect", daemon=True)
        self._pending = (thread, time.monotonic())
        self._schedule(CONNECT_WARN)  # cancelled by the outcome
        thread.start()

    def _connect(self) -> None:
        """In the attempt's thread: the calls that wait for the server without a bound."""
        result: Any
        try:
            result = libvirt.open(self.uri)
            result.setKeepAlive(*KEEPALIVE)
        except libvirt.libvirtError as exc:
            result = exc
        self._result = result
        os.write(self._wfd, b"x")

    def _finish(self) -> None:
        """On the loop: take the attempt's outcome."""
        try:
            while os.read(self._rfd, 64):
                pass
        except BlockingIOError:
            pass
        if self._pending is None:
            return
        self._pending[0].join(timeout=1.0)  # it has written its result: it is ending
        self._pending = None
        result, self._result = self._result, None
        if self._retry is not None:
            self.loop.cancel(self._retry)
            self._retry = None
        try:
            if isinstance(result, libvirt.libvirtError):
                raise result
            # keepalive is on: these calls are bounded now
            result.registerCloseCallback(self._closed, None)
            result.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                          self._lifecycle, None)
            # virDomainSetMetadata (virsh metadata --set) sends this one, never DEFINED
            result.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
                                          self._metadata, None)
        except libvirt.libvirtError as exc:
            delay = _BACKOFF[min(self._attempt, len(_BACKOFF) - 1)]
            self._attempt += 1
            log.warning("cannot reach libvirt at %s (%s); retrying in %.0f s", self.uri,
                        exc.get_error_message(), delay)
            self._schedule(delay)
            if self.on_failed is not None:
                self.on_failed()
            return
        self.conn = result
        self._attempt = 0
        log.info("connected to %s", self.uri)
        self.on_connected()

    def _schedule(self, delay: float) -> None:
        def retry() -> None:
            if self._retry is not None:
                self.loop.cancel(self._retry)
                self._retry = None
            self.open()

        self._retry = self.loop.every(delay, retry, "libvirt reconnect")

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.warning("lost the connection to libvirt: %s; reconnecting", close_reason(reason))
        self.conn = None
        self.on_lost()
        self._schedule(_BACKOFF[0])

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self.on_event(dom, event, detail)

    def _metadata(self, _conn: Any, dom: Any, mtype: int, nsuri: str | None,
                  _opaque: Any) -> None:
        """Only our namespace: a <description> or another tool's element is not our input."""
        handler = self.on_metadata
        if handler is not None and mtype == libvirt.VIR_DOMAIN_METADATA_ELEMENT and \
                nsuri == NAMESPACE:
            log.debug("event metadata-change on %s in our namespace", dom.name())
            self.loop.guard("metadata change", lambda: handler(dom))

    def close(self) -> None:
        if self._retry is not None:
            self.loop.cancel(self._retry)
            self._retry = None
        self.loop.unwatch(self._watch)
        if self._pending is None:  # else its thread may still write: the process exits
            for fd in (self._rfd, self._wfd):
                os.close(fd)
        self._pending = None  # an attempt still waiting is abandoned (a daemon thread)
        if self.conn is not None:
            try:
                self.conn.unregisterCloseCallback()
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None
