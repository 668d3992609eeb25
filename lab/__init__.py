"""The numahook lab: a real libvirtd, a real QEMU and a real guest on one Debian 12 machine.

Not part of the product. ``scripts/lab up|demo|down|status`` and the e2e fixtures in
``tests/e2e/conftest.py`` both drive the code here:

- :mod:`lab.env`: packages, hugetlbfs, /dev/kvm and the hook: ``up``, ``down`` and who holds
  the lab; :mod:`lab.record` is its record under ``/run/numahook-lab`` of every change,
  :mod:`lab.daemons` the daemons it starts and stops by pid, and :mod:`lab.undo` the
  teardown's steps, which undo exactly what the record says.
- :mod:`lab.probe`: builds the guest probe (a Debian cloud kernel and a busybox initramfs).
- :mod:`lab.report`: parses what the probe prints on its serial console (pure, no I/O).
- :mod:`lab.guest`: defines, starts and waits for probe domains, and snapshots the host side.
- :mod:`lab.demo`: the README's demo (the reference's ``numavm``) and its report.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("lab")

#: The checkout this package lives in.
REPO = Path(__file__).resolve().parent.parent
#: What the lab changed (and must undo), plus its lock. Lives in /run: gone after a reboot,
#: like everything it describes.
STATE_DIR = Path(os.environ.get("NUMAHOOK_LAB_STATE", "/run/numahook-lab"))
#: Serial consoles of lab guests and logs of daemons the lab started.
LOG_DIR = Path("/var/log/numahook-lab")
#: Scratch space for rendered domains (the demo's sized copy of examples/numavm.xml).
WORK_DIR = Path("/var/lib/numahook-lab")
#: The libvirt URI every lab piece talks to.
URI = "qemu:///system"
#: Prefix of the domains the e2e fixtures create; ``down`` removes any left behind.
DOMAIN_PREFIX = "nhlab-"


def cache_dir() -> Path:
    """Where downloaded packages and built probe artefacts are kept between runs."""
    return Path(os.environ.get("NUMAHOOK_LAB_CACHE", "/var/cache/numahook-lab"))


class LabError(Exception):
    """The lab cannot do what was asked; the message says why and what to do."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 600,
    capture: bool = True,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a bounded wait; on failure raise :class:`LabError` with its stderr."""
    log.debug("running %s", " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            timeout=timeout,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise LabError(
            f"{' '.join(argv)} failed with exit code {proc.returncode}: " + " / ".join(err)
        )
    return proc


def say(msg: str, *args: object) -> None:
    """Tell the person running the lab what is happening (stdout, one line)."""
    print(("lab: " + msg) % args if args else "lab: " + msg, flush=True)


def read_value(path: Path) -> str | None:
    """A small file's stripped text (sysfs, procfs, a pidfile), or None when it cannot be
    read: the lab reads what may vanish under it, and says so rather than failing."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def write_value(path: Path, value: str) -> None:
    """Write one value to a sysfs/procfs/cgroup file, as a LabError saying which failed."""
    try:
        path.write_text(value + "\n")
    except OSError as exc:
        raise LabError(f"cannot write {value!r} to {path}: {exc.strerror}") from None
