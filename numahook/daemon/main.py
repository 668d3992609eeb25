"""numahookd: keeps libvirt domains' NUMA pinning and real-time vCPUs right, and publishes
the node's real-time capability.

It follows libvirt's domain events and renders opted-in definitions when they are defined
and again when their inputs change (partition cpuset, topology, CPUs held by running
domains); re-applies SCHED_FIFO to masked vCPUs that lost it; watches
kernel.sched_rt_runtime_us so real-time vCPUs never stall without RT budget; releases
claims left by crashed starts; and publishes /run/numahook/node.json,
node-feature-discovery labels and Prometheus textfile metrics. SIGHUP (systemctl reload
numahookd) re-reads the configuration, keeping the old one if the new one is bad; SIGTERM
stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from numahook import NAMESPACE, __version__, node, publish, status, uevents
from numahook import config as configmod
from numahook.daemon.connection import EVENTS, Connection
from numahook.daemon.loop import Loop
from numahook.daemon.notify import Notifier
from numahook.daemon.reconcile import Reconciler
from numahook.daemon.vcpuwatch import VcpuWatch
from numahook.errors import ConfigError, NumahookError
from numahook.state import StateDir

log = logging.getLogger("numahookd")

#: how often the sysctl flip is checked: a FIFO vCPU with no budget stalls until then
RT_WATCH_INTERVAL = 0.5


class Daemon:
    def __init__(self, cfg: configmod.Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.loop = Loop()
        self.notifier = Notifier()
        self.state = StateDir(cfg.state_dir)
        self.reconciler = Reconciler(cfg, self.state)
        self.conn = Connection(cfg.libvirt_uri, self.loop, self.on_event, self.on_connected,
                               self.on_lost)
        self.capability: Any = None
        self._timers: dict[str, int] = {}
        self._uevents: Any = None
        self.vcpus = VcpuWatch(cfg, self.state)

    # -- publishing ---------------------------------------------------------------------
    def probe_and_publish(self) -> None:
        self.capability = node.probe(self.cfg, libvirt_reachable=self.conn.up)
        self.publish()

    def publish(self) -> None:
        if self.capability is None:
            return
        domains = status.collect(self.cfg)
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
        ]
        for what, fn in (("status", lambda: publish.write_status(
                             self.capability, self.cfg.state_dir,
                             {"domains": domains["running"] + domains["inactive"],
                              "daemon": {"orphan_claims": domains["orphan_claims"],
                                         "reconcile_passes": stats.passes,
                                         "last_pass_seconds": stats.last_pass_seconds,
                                         "refused": dict(stats.refused)}})),
                         ("node-feature-discovery", lambda: publish.write_nfd(
                             # labels expire if numahookd dies without removing them
                             self.capability, self.cfg.nfd_dir,
                             ttl=3 * self.cfg.probe_interval)),
                         ("metrics", lambda: publish.write_metrics(
                             self.capability, self.cfg.textfile_dir, metrics))):
            try:
                fn()
            except (NumahookError, OSError) as exc:
                log.warning("publishing the %s file failed: %s", what, exc)
        self.notifier.status(publish.status_line(
            self.capability, {"managed": running + len(domains["inactive"]),
                              "running": running}))

    # -- libvirt ------------------------------------------------------------------------
    def on_connected(self) -> None:
        self.reconciler.rerender_inactive(self.conn.conn, force=True)
        self.reconciler.realtime_backstop()
        self.probe_and_publish()

    def on_lost(self) -> None:
        self.probe_and_publish()

    def on_event(self, dom: Any, event: int, detail: int) -> None:
        name = dom.name()
        log.debug("event %s on %s (detail %d)", EVENTS.get(event, event), name, detail)
        import libvirt

        if event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
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
        self._timers["reconcile"] = self.loop.every(
            self.cfg.reconcile_interval, self._reconcile, "reconcile")
        self._timers["probe"] = self.loop.every(self.cfg.probe_interval, self.probe_and_publish,
                                                "probe")
        self._timers["rtwatch"] = self.loop.every(RT_WATCH_INTERVAL, self.reconciler.rt_watch,
                                                  "realtime watch")
        interval = self.notifier.watchdog_interval()
        if interval:
            self._timers["watchdog"] = self.loop.every(interval, self.notifier.watchdog,
                                                       "watchdog")
        self.notifier.ready(self._status_text())
        log.info("numahookd %s ready", __version__)
        try:
            self.loop.run()
        finally:
            # what numahookd published must not outlive it: NFD labels, scraped metrics
            for what, remove, where in (
                    ("node-feature-discovery", publish.remove_nfd, self.cfg.nfd_dir),
                    ("metrics", publish.remove_metrics, self.cfg.textfile_dir)):
                try:
                    remove(where)
                except (NumahookError, OSError) as exc:
                    log.warning("removing the %s file failed: %s", what, exc)
            self.conn.close()
            if self._uevents is not None:
                self._uevents.close()
            self.vcpus.close()
            self.loop.close()
        return 0

    def _reconcile(self) -> None:
        self.reconciler.pass_(self.conn.conn)
        self.publish()


def _logging(verbose: bool, log_file: str | None) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s numahookd[%(process)d]: "
                                               "%(levelname)s %(message)s"))
    else:  # systemd's journal adds time and pid
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


#: (code, meaning) for --help and numahookd(8), as numahook's (numahook/cli.py)
EXIT_STATUS = (
    ("0", "stopped cleanly (SIGTERM, SIGINT)"),
    ("2", "the configuration is invalid at start; the error names the file and line"),
    ("3", "--daemonize without python-daemon installed"),
)
ENVIRONMENT = (
    ("NUMAHOOK_CONFIG", f"the configuration file when --config is not given (default "
                        f"{configmod.DEFAULT_PATH})"),
    ("NOTIFY_SOCKET", "set by systemd (Type=notify): numahookd reports READY, RELOADING, "
                      "STOPPING, STATUS and WATCHDOG there"),
    ("WATCHDOG_USEC", "set by systemd (WatchdogSec=): numahookd pings at half that interval"),
)
EXIT_DEPENDENCY = 3


def parser() -> argparse.ArgumentParser:
    """The command line; scripts/gen-man writes numahookd(8) and its completion from it."""
    from numahook.cli import epilog

    ap = argparse.ArgumentParser(prog="numahookd", description=__doc__,
                                 epilog=epilog(EXIT_STATUS, ENVIRONMENT),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"numahookd {__version__}")
    ap.add_argument("--config", metavar="FILE",
                    help=f"read this configuration file (default {configmod.DEFAULT_PATH}, "
                    "or $NUMAHOOK_CONFIG)")
    ap.add_argument("--state-dir", metavar="DIR",
                    help="keep claims and node.json here instead of [paths] state_dir "
                    "(default /run/numahook)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    g = ap.add_argument_group("running without systemd")
    g.add_argument("--foreground", action="store_true",
                   help="stay in the foreground (the default; what systemd wants)")
    g.add_argument("--daemonize", action="store_true",
                   help="detach from the terminal, for hosts without systemd; needs "
                   "python-daemon (python3-daemon)")
    g.add_argument("--pidfile", metavar="FILE", default="/run/numahookd.pid",
                   help="with --daemonize: write the pid here (default /run/numahookd.pid)")
    g.add_argument("--log-file", metavar="FILE", default=None,
                   help="log here instead of stderr (default with --daemonize: "
                   "/var/log/numahookd.log)")
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
        try:
            import daemon
            import daemon.pidfile
        except ImportError:
            # python-daemon is only recommended: systemd hosts never need it
            print("numahookd: --daemonize needs python-daemon, which is not installed; "
                  "install python3-daemon (apt or dnf), or run numahookd in the foreground "
                  "under systemd or another supervisor", file=sys.stderr)
            return EXIT_DEPENDENCY
        log_file = args.log_file or "/var/log/numahookd.log"
        with daemon.DaemonContext(pidfile=daemon.pidfile.TimeoutPIDLockFile(args.pidfile, 5),
                                  umask=0o022):
            _logging(args.verbose, log_file)
            return Daemon(cfg, args.config).run()
    _logging(args.verbose, args.log_file)
    return Daemon(cfg, args.config).run()


if __name__ == "__main__":
    sys.exit(main())
