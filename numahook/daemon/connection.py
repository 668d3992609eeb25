"""The daemon's libvirt connection: keepalive, close callback, reconnect with backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import libvirt

from numahook.daemon.loop import Loop

log = logging.getLogger(__name__)

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


class Connection:
    def __init__(self, uri: str, loop: Loop, on_event: EventHandler,
                 on_connected: Callable[[], None], on_lost: Callable[[], None]) -> None:
        self.uri = uri
        self.loop = loop
        self.on_event = on_event
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.conn: Any = None
        self._attempt = 0
        self._retry: int | None = None
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we log ourselves

    @property
    def up(self) -> bool:
        return self.conn is not None

    def open(self) -> None:
        if self._retry is not None:
            self.loop.cancel(self._retry)
            self._retry = None
        try:
            conn = libvirt.open(self.uri)
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(self._closed, None)
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        self._lifecycle, None)
        except libvirt.libvirtError as exc:
            delay = _BACKOFF[min(self._attempt, len(_BACKOFF) - 1)]
            self._attempt += 1
            log.warning("cannot reach libvirt at %s (%s); retrying in %.0f s", self.uri,
                        exc.get_error_message(), delay)
            self._schedule(delay)
            return
        self.conn = conn
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
        log.warning("lost the connection to libvirt (reason %d); reconnecting", reason)
        self.conn = None
        self.on_lost()
        self._schedule(_BACKOFF[0])

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self.on_event(dom, event, detail)

    def close(self) -> None:
        if self._retry is not None:
            self.loop.cancel(self._retry)
            self._retry = None
        if self.conn is not None:
            try:
                self.conn.unregisterCloseCallback()
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None
