"""numahookd's exit codes and environment, for its --help and numahookd(8)
(scripts/gen-man writes the page from these and from numahook/daemon/main.py's parser)."""

from __future__ import annotations

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
