"""One single-threaded main loop: libvirt's default event loop, with our timers and signals.

Everything runs here: libvirt events, timers (watchdog, reconcile, probe) and signals;
only the vCPU cgroup watch (vcpuwatch.py) has a thread of its own, because it races
libvirt and must not wait behind a pass.
Signals arrive through a wakeup pipe registered as a libvirt handle, so the loop blocks in
poll() until something happens and never spins. The watchdog is pinged from a timer of
this loop, so a hung loop stops the pings and systemd restarts us.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import libvirt

log = logging.getLogger(__name__)

_registered = False


def register_default_impl() -> None:
    """libvirt requires this before the first connection; once per process."""
    global _registered
    if not _registered:
        libvirt.virEventRegisterDefaultImpl()
        _registered = True


class Loop:
    def __init__(self) -> None:
        register_default_impl()
        self._stop = False
        self._signal_handlers: dict[int, Callable[[], None]] = {}
        self._pending: list[int] = []
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self._wfd)
        libvirt.virEventAddHandle(self._rfd, libvirt.VIR_EVENT_HANDLE_READABLE,
                                  self._on_wakeup, None)

    # -- timers and handles ---------------------------------------------------------
    def every(self, seconds: float, callback: Callable[[], None], name: str) -> int:
        """Run ``callback`` every ``seconds`` from the loop; exceptions are logged."""
        ms = max(1, int(seconds * 1000))

        def fire(_timer: int, _opaque: Any) -> None:
            self.guard(name, callback)

        return int(libvirt.virEventAddTimeout(ms, fire, None))

    def cancel(self, timer: int) -> None:
        libvirt.virEventRemoveTimeout(timer)

    def watch_fd(self, fd: int, callback: Callable[[], None], name: str) -> int:
        def ready(_watch: int, _fd: int, _events: int, _opaque: Any) -> None:
            self.guard(name, callback)

        return int(libvirt.virEventAddHandle(fd, libvirt.VIR_EVENT_HANDLE_READABLE, ready,
                                             None))

    def unwatch(self, watch: int) -> None:
        libvirt.virEventRemoveHandle(watch)

    # -- signals --------------------------------------------------------------------
    def on_signal(self, signum: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` from the loop (not from the signal handler) after ``signum``."""
        self._signal_handlers[signum] = callback
        signal.signal(signum, self._note_signal)

    def _note_signal(self, signum: int, _frame: Any) -> None:
        self._pending.append(signum)

    def _on_wakeup(self, _watch: int, _fd: int, _events: int, _opaque: Any) -> None:
        try:
            while os.read(self._rfd, 512):
                pass
        except BlockingIOError:
            pass
        pending, self._pending = self._pending, []
        for signum in pending:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                self.guard(f"signal {signal.Signals(signum).name}", handler)

    # -- running --------------------------------------------------------------------
    @staticmethod
    def guard(name: str, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # a bug in one task must not stop the service
            log.exception("%s failed; the daemon carries on", name)

    def stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        while not self._stop:
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt's event loop failed; stopping")
                break

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run the loop until ``done()`` or ``timeout`` seconds (for tools and tests that
        drive a Daemon in-process); whether ``done()`` came true."""
        import time

        deadline = time.monotonic() + timeout
        tick = self.every(0.1, lambda: None, "run_until tick")  # poll() wakes to re-check
        try:
            while not done() and time.monotonic() < deadline:
                if libvirt.virEventRunDefaultImpl() < 0:
                    break
        finally:
            self.cancel(tick)
        return done()

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
