"""numahookd's exit codes and environment, for its --help and numahookd(8)
(scripts/gen-man writes the page from these and from the parser below)."""

from __future__ import annotations

import argparse

from numahook import __version__
from numahook import config as configmod

#: (code, meaning) for --help and numahookd(8), as numahook's (numahook/cli.py)
EXIT_STATUS = (
    ("0", "stopped cleanly (SIGTERM, SIGINT)"),
    ("3", "--daemonize without python-daemon installed"),
    ("78", "the configuration is invalid at start (EX_CONFIG); the error names the file, "
           "the line and the fix, and numahookd.service does not restart on it"),
)
ENVIRONMENT = (
    ("NUMAHOOK_CONFIG", f"the configuration file when --config is not given (default "
                        f"{configmod.DEFAULT_PATH})"),
    ("NOTIFY_SOCKET", "set by systemd (Type=notify): numahookd reports READY, RELOADING, "
                      "STOPPING, STATUS and WATCHDOG there"),
    ("WATCHDOG_USEC", "set by systemd (WatchdogSec=): numahookd pings at half that interval"),
)
EXIT_DEPENDENCY = 3
#: sysexits.h's EX_CONFIG: the unit's RestartPreventExitStatus= (restarting cannot fix a file),
#: printed with <3> under systemd so that journalctl -p err shows why numahookd is down
EXIT_CONFIG = 78


def parser(description: str | None) -> argparse.ArgumentParser:
    """The command line (``description``: numahook/daemon/main.py's docstring); scripts/gen-man
    writes numahookd(8) and its completion from it."""
    from numahook.cli import epilog

    ap = argparse.ArgumentParser(prog="numahookd", description=description,
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
