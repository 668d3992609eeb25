"""numahookd: keeps libvirt definitions NUMA-rendered and real-time vCPUs at SCHED_FIFO.

Under systemd it runs in the foreground (``Type=notify``); on hosts without systemd,
``--daemonize`` uses python-daemon with a pidfile and a log file.

Nothing on the main loop waits without a bound (docs/reliability.md lists each call and
its bound): sd_notify never blocks (notify.py), connecting to libvirt happens in a thread
(connection.py), the published files and the log lines are written by threads of their
own, and the watchdog ping is withheld when the vCPU-watch thread hangs.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import queue
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from numahook import NAMESPACE, __version__, faults
from numahook import config as configmod
from numahook.daemon.connection import EVENTS, Connection
from numahook.daemon.loop import Loop
from numahook.daemon.notify import Notifier
from numahook.daemon.reconcile import Reconciler
from numahook.daemon.vcpuwatch import VcpuWatch
from numahook.errors import ConfigError, NumahookError
from numahook.host import uevents
from numahook.node import probe as node  # node.probe(): what this host can do
from numahook.node import publish
from numahook.ops import status
from numahook.records import replace
from numahook.state.statedir import StateDir

log = logging.getLogger("numahookd")

#: how often the sysctl flip is checked: a FIFO vCPU with no budget stalls until then
RT_WATCH_INTERVAL = 0.5
#: how often the threads' health is checked where systemd sets no watchdog (seconds)
HEALTH_INTERVAL = 1.0
#: READY waits this long at most for the first connection attempt's outcome (seconds)
READY_WAIT = 5.0


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


class Daemon:
    def __init__(self, cfg: configmod.Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.loop = Loop()
        self.notifier = Notifier()
        self.state = StateDir(cfg.state_dir)
        self.reconciler = Reconciler(cfg, self.state)
        self.conn = Connection(cfg.libvirt_uri, self.loop, self.on_event, self.on_connected,
                               self.on_lost, on_failed=self.ready)
        self.capability: Any = None
        self._timers: dict[str, int] = {}
        self._uevents: Any = None
        self.vcpus = VcpuWatch(cfg, self.state)
        self.publisher = Publisher()
        #: the watchdog ping is withheld (a thread hangs): said once until it recovers
        self._withheld = False
        self.resyncs = 0
        self._ready_sent = False
        self._ready_timer: int | None = None

    # -- publishing ---------------------------------------------------------------------
    def probe_and_publish(self) -> None:
        self.capability = node.probe(self.cfg, libvirt_reachable=self.conn.up)
        self.publish()

    def counters(self) -> dict[str, int]:
        """The daemon's own health counters, for node.json and the metrics."""
        return {"sd_notify_dropped": self.notifier.dropped,
                "log_dropped": _QUEUE_HANDLER.dropped if _QUEUE_HANDLER else 0,
                "vcpu_watch_restarts": self.vcpus.restarts,
                "resyncs": self.resyncs}

    def publish(self) -> None:
        if self.capability is None:
            return
        cap, cfg = self.capability, self.cfg
        counters = self.counters()
        domains = status.collect(cfg)
        domains["inactive"] = [{"name": d.name, "uuid": d.uuid, "state": "shut off"}
                               for d in self.reconciler.inactive()]
        stats = self.reconciler.stats
        running = len(domains["running"])
        metrics = [
            publish.Metric.gauge("numahook_managed_domains_running",
                                 "Managed domains running.", running),
            publish.Metric.gauge("numahook_reconcile_seconds",
                                 "Duration of the last reconcile pass.", stats.last_pass_seconds),
            publish.Metric.counter("numahook_realtime_reapplied_total",
                                   "vCPUs whose SCHED_FIFO the daemon had to re-apply.",
                                   stats.reapplied),
            publish.Metric.counter("numahook_realtime_demoted_total",
                                   "Real-time vCPU threads demoted to avoid a stall.",
                                   stats.demoted),
            publish.Metric.counter("numahook_redefined_total",
                                   "Definitions re-rendered and redefined.", stats.redefined),
            publish.Metric.counter("numahook_orphans_released_total",
                                   "Orphaned claims released.", stats.released),
            publish.Metric.counter("numahook_sd_notify_dropped_total",
                                   "sd_notify messages dropped because the receiver's queue "
                                   "was full.", counters["sd_notify_dropped"]),
        ]
        daemon_section = {"orphan_claims": domains["orphan_claims"],
                          "reconcile_passes": stats.passes,
                          "last_pass_seconds": stats.last_pass_seconds,
                          "refused": dict(stats.refused), **counters}
        self.publisher.submit([
            ("status", lambda: publish.write_status(
                cap, cfg.state_dir, {"domains": domains["running"] + domains["inactive"],
                                     "daemon": daemon_section})),
            # labels expire if numahookd dies without removing them
            ("node-feature-discovery", lambda: publish.write_nfd(
                cap, cfg.nfd_dir, ttl=3 * cfg.probe_interval)),
            ("metrics", lambda: publish.write_metrics(cap, cfg.textfile_dir, metrics))])
        self.notifier.status(publish.status_line(
            cap, {"managed": running + len(domains["inactive"]), "running": running}))

    # -- libvirt ------------------------------------------------------------------------
    def on_connected(self) -> None:
        self.reconciler.rerender_inactive(self.conn.conn, force=True)
        self.reconciler.realtime_backstop()
        self.probe_and_publish()
        self.ready()

    def ready(self) -> None:
        """READY=1 once, when the first connection attempt settled (connected and listed,
        or failed) or READY_WAIT passed: a client that sees READY finds definitions
        rendered, and a libvirtd that does not answer does not hold the start up."""
        if self._ready_sent:
            return
        self._ready_sent = True
        if self._ready_timer is not None:
            self.loop.cancel(self._ready_timer)
            self._ready_timer = None
        self.notifier.ready(self._status_text())
        log.info("numahookd %s ready%s", __version__,
                 "" if self.conn.up else " (libvirt not connected yet)")

    def on_lost(self) -> None:
        self.probe_and_publish()

    def on_event(self, dom: Any, event: int, detail: int) -> None:
        name = dom.name()
        log.debug("event %s on %s (detail %d)", EVENTS.get(event, event), name, detail)
        import libvirt

        if event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
            if faults.hit("daemon.drop-defined"):
                log.warning("fault daemon.drop-defined: dropped the DEFINED event of %s", name)
                return
            if not dom.isActive():
                try:
                    managed = NAMESPACE in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                except libvirt.libvirtError:
                    return
                if managed:
                    self.reconciler.rerender_inactive(self.conn.conn, only=dom)
        elif event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
            self.reconciler.forget(dom.UUIDString())
            self.reconciler.realtime_backstop(only=name)
            self.publish()
        elif event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
                       libvirt.VIR_DOMAIN_EVENT_CRASHED):
            self.reconciler.orphans()
            # CPUs came free: inactive definitions may render differently now
            self.reconciler.rerender_inactive(self.conn.conn)
            self.publish()

    # -- signals --------------------------------------------------------------------
    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = configmod.load(self.config_path)
        except ConfigError as exc:
            log.error("reload: %s; keeping the configuration in force", exc)
        else:
            self.cfg = new
            self.reconciler.cfg = new
            self.vcpus.cfg = new
            self._schedule()
            log.info("reloaded %s", new.source)
        self.probe_and_publish()
        self.reconciler.rerender_inactive(self.conn.conn, force=True)
        self.notifier.ready(self._status_text())

    def shutdown(self) -> None:
        log.info("stopping")
        self.notifier.stopping()
        self.loop.stop()

    def _status_text(self) -> str:
        if self.capability is None:
            return "starting"
        return publish.status_line(self.capability, {"managed": 0, "running": 0})

    # -- CPU hotplug ------------------------------------------------------------------
    def _watch_uevents(self) -> None:
        try:
            sock = uevents.open_socket()
        except OSError as exc:
            log.warning("no kobject uevents (%s); CPU hotplug is noticed by the probe timer",
                        exc.strerror)
            return
        self._uevents = sock

        def ready() -> None:
            events, lost = uevents.drain(sock)
            changed = uevents.hotplug(events)
            for ev in changed:
                log.info("hotplug: %s %s", ev.get("ACTION"), ev.get("DEVPATH"))
            if lost:
                log.warning("kobject uevents were lost (receive buffer full); probing again")
            if changed or lost:
                self.probe_and_publish()
                self.reconciler.rerender_inactive(self.conn.conn)

        self.loop.watch_fd(sock.fileno(), ready, "uevents")

    def _watch_vcpus(self) -> None:
        try:
            self.vcpus.start()
        except OSError as exc:
            log.warning("cannot watch the cpu cgroups (%s); real-time vCPUs get FIFO from the "
                        "started hook only", exc.strerror)

    # -- health -----------------------------------------------------------------------
    def health(self) -> None:
        """The watchdog covers the threads, not only the loop: a dead vCPU watch is
        started again; a hung one withholds WATCHDOG=1, so that systemd restarts us."""
        problem = self.vcpus.health()
        if problem == "dead":
            log.error("the vcpu watch thread died; starting it again (restart %d)",
                      self.vcpus.restarts + 1)
            self.guard_restart()
        elif problem == "hung":
            if not self._withheld:
                log.error("the vcpu watch thread has made no progress for %.0f s; withholding "
                          "the watchdog ping so that systemd restarts numahookd",
                          self.vcpus.stalled_for())
                self._withheld = True
            return
        self._withheld = False
        if self.notifier.watchdog_interval():
            self.notifier.watchdog()

    def guard_restart(self) -> None:
        try:
            self.vcpus.restart()
        except OSError as exc:
            log.error("cannot watch the cpu cgroups again (%s); real-time vCPUs get FIFO from "
                      "the started hook only", exc.strerror)

    def resync(self) -> None:
        """List every definition again, whatever the cached inputs say: a DEFINED event
        libvirt never delivered (or we lost) is repaired within ``resync_interval``."""
        self.resyncs += 1
        self.reconciler.rerender_inactive(self.conn.conn, resync=True)

    def _schedule(self) -> None:
        """(Re)arm the timers from the configuration in force."""
        for timer in self._timers.values():
            self.loop.cancel(timer)
        self._timers = {
            "reconcile": self.loop.every(self.cfg.reconcile_interval, self._reconcile,
                                         "reconcile"),
            "resync": self.loop.every(self.cfg.resync_interval, self.resync, "resync"),
            "probe": self.loop.every(self.cfg.probe_interval, self.probe_and_publish,
                                     "probe"),
            "rtwatch": self.loop.every(RT_WATCH_INTERVAL, self.reconciler.rt_watch,
                                       "realtime watch"),
            "health": self.loop.every(self.notifier.watchdog_interval() or HEALTH_INTERVAL,
                                      self.health, "watchdog"),
        }

    # -- running --------------------------------------------------------------------
    def run(self) -> int:
        self.state.ensure()
        self.loop.on_signal(signal.SIGHUP, self.reload)
        self.loop.on_signal(signal.SIGTERM, self.shutdown)
        self.loop.on_signal(signal.SIGINT, self.shutdown)
        # crash recovery before anything else: what a killed hook or daemon left behind;
        # each step is guarded like a loop task, so one failing step cannot stop the rest
        for name, step in (("orphan recovery", self.reconciler.orphans),
                           ("realtime backstop", self.reconciler.realtime_backstop),
                           ("libvirt connect", self.conn.open),
                           ("probe", self.probe_and_publish),
                           ("uevents", self._watch_uevents),
                           ("vcpu watch", self._watch_vcpus)):
            self.loop.guard(name, step)
        self._schedule()
        if not self._ready_sent:
            self._ready_timer = self.loop.every(READY_WAIT, self.ready, "ready")
        try:
            self.loop.run()
        finally:
            if self._ready_timer is not None:
                self.loop.cancel(self._ready_timer)
            if not self.publisher.close():
                log.warning("a published file was still being written at exit")
            try:
                publish.remove_nfd(self.cfg.nfd_dir)
            except (NumahookError, OSError) as exc:
                log.warning("removing the node-feature-discovery file failed: %s", exc)
            self.conn.close()
            if self._uevents is not None:
                self._uevents.close()
            self.vcpus.close()
            self.loop.close()
        return 0

    def _reconcile(self) -> None:
        self.reconciler.pass_(self.conn.conn)
        self.publish()


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


def _logging(verbose: bool, log_file: str | None) -> LogWriter:
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


def _run(cfg: configmod.Config, args: argparse.Namespace, log_file: str | None) -> int:
    writer = _logging(args.verbose, log_file)
    try:
        return Daemon(cfg, args.config).run()
    finally:
        writer.stop()  # writes what is queued, within a bound


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="numahookd", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"numahookd {__version__}")
    ap.add_argument("--config", help=f"config file (default {configmod.DEFAULT_PATH})")
    ap.add_argument("--foreground", action="store_true",
                    help="run in the foreground (the default; what systemd wants)")
    ap.add_argument("--daemonize", action="store_true",
                    help="detach (hosts without systemd), with --pidfile and --log-file")
    ap.add_argument("--pidfile", default="/run/numahookd.pid")
    ap.add_argument("--log-file", default=None,
                    help="log here instead of stderr (default with --daemonize: "
                    "/var/log/numahookd.log)")
    ap.add_argument("--state-dir", help="override [paths] state_dir")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = configmod.load(args.config)
    except ConfigError as exc:
        print(f"numahookd: {exc}", file=sys.stderr)
        return 2
    if args.state_dir:
        cfg = replace(cfg, state_dir=args.state_dir)
    if args.daemonize:
        import daemon
        import daemon.pidfile

        log_file = args.log_file or "/var/log/numahookd.log"
        with daemon.DaemonContext(pidfile=daemon.pidfile.TimeoutPIDLockFile(args.pidfile, 5),
                                  umask=0o022):
            return _run(cfg, args, log_file)
    return _run(cfg, args, args.log_file)


if __name__ == "__main__":
    sys.exit(main())
