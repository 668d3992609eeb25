"""The published files (node.json, NFD labels, node_exporter metrics), written off the loop."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from numahook.config import Config
from numahook.errors import NumahookError
from numahook.node import metrics

if TYPE_CHECKING:
    from numahook.daemon.reconcile import Stats

log = logging.getLogger(__name__)

#: the consumers' directories numahookd's unit binds writable (ReadWritePaths=, each with
#: "-": only if it exists when the unit starts); they are the configuration's defaults
UNIT_PATHS = frozenset({Config().nfd_dir, Config().textfile_dir})


def existing(paths: Collection[str]) -> frozenset[str]:
    """Those of ``paths`` that are directories now: call it at start, for read_only_hint."""
    return frozenset(p for p in paths if os.path.isdir(p))


def read_only_hint(directory: str, at_start: Collection[str],
                   environ: Mapping[str, str] | None = None) -> dict[int, str] | None:
    """The fix for EROFS in a consumer's directory when numahookd runs under its unit.

    ProtectSystem=strict makes every path read-only to numahookd, and ReadWritePaths=
    binds the unit's directories writable only if they exist when it starts: a reload
    makes no new bind. So EROFS there means the directory came after the start, or (for
    a directory the unit does not list) that the unit must list it; "free space" or
    "remount" would send the operator the wrong way. ``at_start``: the unit's directories
    that existed when numahookd started. Outside systemd (no INVOCATION_ID), or for a
    unit directory that was there all along, the file system itself is read-only and
    fsutil's own advice stands.
    """
    if "INVOCATION_ID" not in (os.environ if environ is None else environ):
        return None
    if directory not in UNIT_PATHS:
        return {errno.EROFS: f"numahookd's unit lets it write only where its ReadWritePaths= "
                             f"says; add {directory} there (`systemctl edit numahookd`), then "
                             "run `systemctl restart numahookd`"}
    if directory not in at_start:
        return {errno.EROFS: f"{directory} was created after numahookd started; run "
                             "`systemctl restart numahookd` so its sandbox can write there "
                             "(a reload cannot)"}
    return None


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
        #: the last failure of each file, logged once until it changes or the file is
        #: written again: the daemon publishes every reconcile pass (5 s)
        self._failing: dict[str, str] = {}
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
                    if self._failing.get(what) != str(exc):
                        self._failing[what] = str(exc)
                        log.warning("publishing the %s file failed: %s (said once until "
                                    "it changes)", what, exc)
                except Exception:  # a bug in one writer must not end the others
                    log.exception("publishing the %s file failed", what)
                else:
                    if self._failing.pop(what, None) is not None:
                        log.info("publishing the %s file works again", what)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is pending and end; False when a write is still stuck after
        ``timeout`` (the thread is then abandoned: the process is exiting)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()


def daemon_metrics(running: int, stats: Stats, sd_notify_dropped: int) -> list[metrics.Metric]:
    """numahookd's own metrics, beside the node's: ``stats`` are the reconciler's."""
    return [
        metrics.Metric.gauge("numahook_managed_domains_running",
                             "Managed domains running.", running),
        metrics.Metric.gauge("numahook_reconcile_seconds",
                             "Duration of the last reconcile pass.", stats.last_pass_seconds),
        metrics.Metric.counter("numahook_realtime_reapplied_total",
                               "vCPUs whose SCHED_FIFO the daemon had to re-apply.",
                               stats.reapplied),
        metrics.Metric.counter("numahook_realtime_demoted_total",
                               "Real-time vCPU threads demoted to avoid a stall.",
                               stats.demoted),
        metrics.Metric.counter("numahook_redefined_total",
                               "Definitions re-rendered and redefined.", stats.redefined),
        metrics.Metric.counter("numahook_orphans_released_total",
                               "Orphaned claims released.", stats.released),
        metrics.Metric.counter("numahook_sd_notify_dropped_total",
                               "sd_notify messages dropped because the receiver's queue "
                               "was full.", sd_notify_dropped),
    ]
