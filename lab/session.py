"""What benchmarks and e2e tests share around the lab: holding it, and the hook's config."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from lab import env

CONF = Path("/etc/numahook/numahook.conf")


def holder() -> str:
    """A lab holder whose liveness the lab can check (``bench:<pid>:<start>``)."""
    return "bench" + env.holder_for_this_process()[len("pytest"):]


@contextlib.contextmanager
def lab_held() -> Iterator[None]:
    """The lab up for this process (libvirtd, hook, probe; no numahookd), released after."""
    who = holder()
    with contextlib.redirect_stdout(sys.stderr):  # the lab talks on stdout; --json owns it
        env.up(who, build_probe=True, daemon=False)
    try:
        yield
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            problems = env.release(who)
        if problems:
            print(f"lab teardown left: {problems}", file=sys.stderr)


@contextlib.contextmanager
def hook_config(text: str) -> Iterator[None]:
    """/etc/numahook/numahook.conf for the hook, with what was there put back after.

    libvirtd runs the hook with its own environment, so the file is the only way to
    configure it for a test. The lab remembers the original too, so a killed test's
    config goes at the next ``lab down``.
    """
    old = CONF.read_text() if CONF.exists() else None
    env.write_file(CONF, text)
    try:
        yield
    finally:
        if old is None:
            CONF.unlink(missing_ok=True)
        else:  # the directory may have gone meanwhile (a package purge)
            CONF.parent.mkdir(parents=True, exist_ok=True)
            CONF.write_text(old)
