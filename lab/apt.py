"""Debian packages for the lab: install what is missing, download .debs into the cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lab import LabError, cache_dir, log, run, say

_updated = False


def _apt_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return env


def update_once() -> None:
    """``apt-get update``, at most once per process (the lists are needed by apt-cache too)."""
    global _updated
    if _updated:
        return
    say("apt-get update")
    run(["apt-get", "update", "-q"], timeout=600, env=_apt_env())
    _updated = True


def missing(packages: list[str]) -> list[str]:
    """The packages of ``packages`` that dpkg does not report as installed."""
    out = run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *packages], check=False
    ).stdout
    installed = {
        line.split()[0].split(":")[0]
        for line in out.splitlines()
        if line.strip().endswith(" installed")
    }
    return [p for p in packages if p not in installed]


def install(packages: list[str]) -> list[str]:
    """Install the missing ones of ``packages``; returns what was installed.

    A policy-rc.d that forbids service starts is in place during the install, so that no
    package starts a daemon behind the lab's back: the lab starts (and stops) its daemons
    itself and must know which ones are its own.
    """
    todo = missing(packages)
    if not todo:
        return []
    update_once()
    say("installing Debian packages: %s", " ".join(todo))
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\n# numahook lab: no service starts during apt-get\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(
            ["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", *todo],
            timeout=1800,
            env=_apt_env(),
        )
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    still = missing(todo)
    if still:
        raise LabError(f"apt-get install did not install {' '.join(still)}")
    return todo


def candidate(package: str) -> str | None:
    """The version apt would install for ``package``, or None when apt knows none."""
    for attempt in (0, 1):
        out = run(["apt-cache", "policy", package], check=False).stdout
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("Candidate:"):
                ver = line.split(":", 1)[1].strip()
                if ver and ver != "(none)":
                    return ver
        if attempt == 0 and not _updated:
            update_once()
        else:
            break
    return None


def deb_version(deb: Path) -> str:
    """The Version field of a .deb file."""
    return run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def fetch(package: str) -> Path:
    """A .deb of ``package`` in the cache: the candidate version, downloaded once.

    Without apt lists or without a mirror, the newest cached .deb of that package is used,
    so a machine that built the probe once can build it again offline.
    """
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    cached = sorted(debs.glob(f"{package}_*.deb"))
    ver = candidate(package)
    if ver is not None:
        for deb in cached:
            if deb_version(deb) == ver:
                return deb
        say("downloading %s %s", package, ver)
        tmp = debs / ".download"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            # apt-get download as root warns that it runs unsandboxed; that is expected.
            run(["apt-get", "download", "-q", f"{package}={ver}"], cwd=tmp, timeout=900)
            got = sorted(tmp.glob(f"{package}_*.deb"))
            if not got:
                raise LabError(f"apt-get download {package}={ver} produced no .deb")
            dest = debs / got[0].name
            got[0].replace(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest
    if cached:
        log.warning("apt knows no version of %s; using the cached %s", package, cached[-1].name)
        return cached[-1]
    raise LabError(
        f"apt knows no version of {package} and none is cached in {debs}; "
        "check the Debian mirror in /etc/apt/sources.list"
    )
