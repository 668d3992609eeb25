"""numahookd: keeps libvirt domains' NUMA pinning and real-time vCPUs right, and publishes
the node's real-time capability.

It follows libvirt's domain events and renders opted-in definitions when they are defined
and again when their inputs change (partition cpuset, topology, CPUs held by running
domains); re-applies SCHED_FIFO to masked vCPUs that lost it; watches
kernel.sched_rt_runtime_us so real-time vCPUs never stall without RT budget; releases
claims left by crashed starts; and publishes /run/numahook/node.json,
node-feature-discovery labels and Prometheus textfile metrics. SIGHUP (systemctl reload
numahookd) re-reads the configuration, keeping the old one if the new one is bad; SIGTERM
stops it. Every resync_interval it lists every definition again.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
from collections.abc import Sequence
from typing import Any

from numahook import NAMESPACE, __version__, faults
from numahook import config as configmod
from numahook.daemon import domainmetrics, logs, usage
from numahook.daemon.connection import EVENTS, Connection
from numahook.daemon.loop import Loop
from numahook.daemon.notify import Notifier
from numahook.daemon.publisher import (
    UNIT_PATHS,
    Publisher,
    daemon_metrics,
    existing,
    read_only_hint,
)
from numahook.daemon.reconcile import Reconciler
from numahook.daemon.usage import EXIT_CONFIG, EXIT_DEPENDENCY
from numahook.daemon.vcpuwatch import VcpuWatch
from numahook.errors import ConfigError, NumahookError
from numahook.host import uevents
from numahook.node import metrics, publish
from numahook.node import probe as node  # node.probe(): what this host can do
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


class Daemon:
    def __init__(self, cfg: configmod.Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.loop = Loop()
        self.notifier = Notifier()
        self.state = StateDir(cfg.state_dir)
        self.reconciler = Reconciler(cfg, self.state)
        self.conn = Connection(cfg.libvirt_uri, self.loop, self.on_event, self.on_connected,
                               self.on_lost, on_failed=self.ready,
                               on_metadata=self.on_metadata)
        self.capability: Any = None
        self._timers: dict[str, int] = {}
        self._uevents: Any = None
        self.vcpus = VcpuWatch(cfg, self.state)
        self.publisher = Publisher()
        #: the unit's consumer directories there at start: only those are writable to us
        self.unit_dirs = existing(UNIT_PATHS)
        #: the watchdog ping is withheld (a thread hangs): said once until it recovers
        self._withheld = False
        self.resyncs = 0
        self._ready_sent = False
        self._ready_timer: int | None = None
        #: the domain counts last published: READY and STATUS repeat them until newer
        #: ones are known, rather than showing 0 (None: not counted yet)
        self._counts: publish.DomainCounts | None = None

    # -- publishing ---------------------------------------------------------------------
    def probe_and_publish(self) -> None:
        self.capability = node.probe(self.cfg, libvirt_reachable=self.conn.up)
        self.publish()

    def counters(self) -> dict[str, int]:
        """The daemon's own health counters, for node.json and the metrics."""
        return {"sd_notify_dropped": self.notifier.dropped,
                "log_dropped": logs.dropped(),
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
        own = daemon_metrics(running, stats, counters["sd_notify_dropped"])
        # a snapshot for the publisher's thread, which reads the few files those need
        listed, refused = self.reconciler.listed, frozenset(stats.refused)
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
                cap, cfg.nfd_dir, ttl=3 * cfg.probe_interval,
                hint=read_only_hint(cfg.nfd_dir, self.unit_dirs))),
            ("metrics", lambda: metrics.write_metrics(
                cap, cfg.textfile_dir,
                own + domainmetrics.domain_metrics(cfg, cap, domains, listed, refused),
                hint=read_only_hint(cfg.textfile_dir, self.unit_dirs)))])
        # the inactive definitions are known once libvirt has listed them, not before
        self._counts = publish.DomainCounts(
            running + len(domains["inactive"]) if listed else None, running)
        self.notifier.status(self._status_text())

    # -- libvirt ------------------------------------------------------------------------
    def on_connected(self) -> None:
        self.reconciler.rerender_inactive(self.conn.conn, force=True)
        self.reconciler.backstop()
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
            self.on_metadata(dom)
        elif event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
            self.reconciler.forget(dom.UUIDString())
            self.reconciler.backstop(only=name)
            self.publish()
        elif event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
                       libvirt.VIR_DOMAIN_EVENT_CRASHED):
            self.reconciler.orphans()
            # CPUs came free: inactive definitions may render differently now
            self.reconciler.rerender_inactive(self.conn.conn)
            self.publish()

    def on_metadata(self, dom: Any) -> None:
        """A definition changed: DEFINED, or `virsh metadata --config --set` on our
        namespace, which sends no DEFINED. Rendered at once when inactive: our own
        defineXML sends DEFINED again, and redefine.rerender finds it up to date."""
        import libvirt

        try:
            if dom.isActive() or NAMESPACE not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE):
                return
        except libvirt.libvirtError:
            return  # undefined meanwhile
        self.reconciler.rerender_inactive(self.conn.conn, only=dom)

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
        return publish.status_line(self.capability, self._counts)

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
        def plugged() -> None:
            self.vcpus.drain()
            self.reconciler.backstop()

        try:
            if self.vcpus.start():
                self.loop.watch_fd(self.vcpus.plugged_fd, plugged, "hot-plugged vcpus")
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
            "watch": self.loop.every(RT_WATCH_INTERVAL, self.reconciler.watch,
                                     "tunables' watch"),
            "health": self.loop.every(self.notifier.watchdog_interval() or HEALTH_INTERVAL,
                                      self.health, "watchdog"),
        }

    # -- running --------------------------------------------------------------------
    def run(self) -> int:
        self.state.ensure()
        self.loop.guard("pid file", self.state.mark_daemon)  # for the hook's refusals
        self.loop.on_signal(signal.SIGHUP, self.reload)
        self.loop.on_signal(signal.SIGTERM, self.shutdown)
        self.loop.on_signal(signal.SIGINT, self.shutdown)
        # crash recovery before anything else: what a killed hook or daemon left behind;
        # each step is guarded like a loop task, so one failing step cannot stop the rest
        for name, step in (("orphan recovery", self.reconciler.orphans),
                           ("backstop", self.reconciler.backstop),
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
            # what numahookd published must not outlive it: NFD labels, scraped metrics
            for what, remove, where in (
                    ("node-feature-discovery", publish.remove_nfd, self.cfg.nfd_dir),
                    ("metrics", metrics.remove_metrics, self.cfg.textfile_dir)):
                try:
                    remove(where)
                except (NumahookError, OSError) as exc:
                    log.warning("removing the %s file failed: %s", what, exc)
            self.state.unmark_daemon()
            self.conn.close()
            if self._uevents is not None:
                self._uevents.close()
            self.vcpus.close()
            self.loop.close()
        return 0

    def _reconcile(self) -> None:
        self.reconciler.pass_(self.conn.conn)
        self.publish()


def _run(cfg: configmod.Config, args: argparse.Namespace, log_file: str | None) -> int:
    writer = logs.setup(args.verbose, log_file)
    try:
        return Daemon(cfg, args.config).run()
    finally:
        writer.stop()  # writes what is queued, within a bound


def parser() -> argparse.ArgumentParser:
    """The command line; scripts/gen-man writes numahookd(8) and its completion from it."""
    return usage.parser(__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = configmod.load(args.config)
    except ConfigError as exc:
        print(f"{'<3>' * logs.stderr_is_journal()}numahookd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.state_dir:
        cfg = replace(cfg, state_dir=args.state_dir)
    if args.daemonize:
        try:
            import daemon
            import daemon.pidfile
        except ImportError:
            # python-daemon is only suggested by the packages: systemd hosts never need it
            print("numahookd: --daemonize needs python-daemon, which is not installed; "
                  "install python3-daemon (apt or dnf), or run numahookd in the foreground "
                  "under systemd or another supervisor", file=sys.stderr)
            return EXIT_DEPENDENCY
        log_file = args.log_file or "/var/log/numahookd.log"
        with daemon.DaemonContext(pidfile=daemon.pidfile.TimeoutPIDLockFile(args.pidfile, 5),
                                  umask=0o022):
            return _run(cfg, args, log_file)
    return _run(cfg, args, args.log_file)


if __name__ == "__main__":
    sys.exit(main())
