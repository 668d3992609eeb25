"""numahookd's logging: never blocking the loop, with journal priorities.

A write to stderr blocks once journald reads slowly and the pipe is full, and a blocked
write on the loop is a hung daemon. So records go through a bounded queue to a writer
thread; a full queue drops and counts (``log_dropped`` in node.json). When stderr is the
journal, each line carries its sd-daemon(3) ``<N>`` priority, so that
``journalctl -p err -u numahookd`` shows the errors.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys
import threading
from typing import Any

#: sd-daemon(3) priority prefixes, which journald turns into the line's priority
_JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                     logging.ERROR: 3, logging.CRITICAL: 2}
#: lines waiting for the log writer at most; more are dropped and counted
LOG_QUEUE = 10000


def stderr_is_journal(environ: Any = None, fd: int = 2) -> bool:
    """``JOURNAL_STREAM`` (``DEV:INODE``) names ``fd``: systemd connected it to journald."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """Each line starts with its ``<N>`` priority, so ``journalctl -p err`` finds errors;
    the lines of a traceback carry it too (journald reads each line on its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_JOURNAL_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the log writer thread and never waits: a journald that reads
    slowly fills stderr's pipe, and a write to it would stop the loop."""

    def __init__(self, q: queue.Queue[Any]) -> None:
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


_QUEUE_HANDLER: DroppingQueueHandler | None = None


class LogWriter:
    """The thread that writes queued records to the real handler; stopping is bounded
    (logging.handlers.QueueListener.stop waits for its thread without one)."""

    def __init__(self, q: queue.Queue[Any], handler: logging.Handler) -> None:
        self.queue = q
        self.handler = handler
        self._thread = threading.Thread(target=self._serve, name="log-writer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            record = self.queue.get()
            if record is None:
                return
            self.handler.handle(record)

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return  # the writer is stuck: what is queued is lost with the process
        self._thread.join(timeout)
        self.handler.flush()


def setup(verbose: bool, log_file: str | None) -> LogWriter:
    """Log through a bounded queue to a writer thread; returns the writer, to stop at exit."""
    global _QUEUE_HANDLER
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s numahookd[%(process)d]: "
                                               "%(levelname)s %(message)s"))
    else:  # systemd's journal adds time and pid
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(JournalFormatter(fmt) if stderr_is_journal()
                             else logging.Formatter(fmt))
    q: queue.Queue[Any] = queue.Queue(LOG_QUEUE)
    _QUEUE_HANDLER = DroppingQueueHandler(q)
    root = logging.getLogger()
    root.handlers[:] = [_QUEUE_HANDLER]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return LogWriter(q, handler)


def dropped() -> int:
    """Log records dropped so far because the writer fell behind."""
    return _QUEUE_HANDLER.dropped if _QUEUE_HANDLER is not None else 0

