"""numahookd's exit codes and environment, for its --help and numahookd(8)
(scripts/gen-man writes the page from these and from numahook/daemon/main.py's parser)."""

from __future__ import annotations

from numahook import config as configmod

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
