"""The published files (node.json, NFD labels, node_exporter metrics), written off the loop."""

from __future__ import annotations

import logging
import threading
from typing import Any

from numahook.errors import NumahookError

log = logging.getLogger(__name__)


class Publisher:
    """Writes the published files in a thread of its own.

    The NFD and node_exporter directories are wherever the operator points them, possibly
    on a slow or hung mount, and the loop must not wait on them. The loop hands over the
    newest set of writes; one not yet written when a newer comes is replaced by it, since
    every set is a whole snapshot.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: list[tuple[str, Any]] | None = None
        self._stopping = False
        self.superseded = 0
        self._thread = threading.Thread(target=self._serve, name="publisher", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[tuple[str, Any]]) -> None:
        with self._cond:  # held by the writer only to take a set, never while writing
            if self._jobs is not None:
                self.superseded += 1
            self._jobs = jobs
            self._cond.notify()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while self._jobs is None and not self._stopping:
                    self._cond.wait()
                if self._jobs is None:
                    return
                jobs, self._jobs = self._jobs, None
            for what, write in jobs:
                try:
                    write()
                except (NumahookError, OSError) as exc:
                    log.warning("publishing the %s file failed: %s", what, exc)
                except Exception:  # a bug in one writer must not end the others
                    log.exception("publishing the %s file failed", what)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is pending and end; False when a write is still stuck after
        ``timeout`` (the thread is then abandoned: the process is exiting)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()
