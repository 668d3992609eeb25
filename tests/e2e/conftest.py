"""Session fixtures for e2e tests: the lab, a libvirt connection, probe domains.

API for e2e tests (all need root; as non-root they skip and say why):

- ``lab`` (session): :class:`LabSession`, the lab brought up once (``lab.env.up``) and
  released at the end of the session; the last holder tears it down, even after failures.
- ``conn`` (session): ``libvirt.open('qemu:///system')``.
- ``domains`` (function): :class:`Domains`, a factory that defines, starts, stops and boots
  domains and always destroys and undefines every domain it made.
- ``boot_report`` (function): ``boot_report(xml, timeout=120) -> GuestReport``, the
  same as ``domains.boot``.

Guest probe domains come from ``domains.probe_xml(suffix, vcpus=, cells=, ...)``
(see :func:`lab.guest.probe_domain_xml`); they run under TCG (``type='qemu'``).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# E402: these need REPO on sys.path first.
from lab import DOMAIN_PREFIX, LabError, daemons, env, guest, probe, report  # noqa: E402
from lab.probe import Probe  # noqa: E402
from lab.report import GuestReport  # noqa: E402

NOT_ROOT = (
    "e2e tests need root: they install Debian packages, mount hugetlbfs and run libvirtd "
    "(CI runs as root; run `sudo /usr/bin/python3 -m pytest tests/e2e`)"
)


def require_root() -> None:
    """Skip the calling test (or fixture) unless we are root, saying why."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)


@dataclass
class LabSession:
    """The lab as one pytest session holds it."""

    holder: str
    probe: Probe
    state: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def lab() -> Iterator[LabSession]:
    """Bring the lab up once per session; release it (and tear it down if last) at the end."""
    require_root()
    holder = env.holder_for_this_process()
    try:
        state = env.up(holder, build_probe=False, daemon=False)
        if daemons.stop_daemon("numahookd"):
            print("\nstopped the lab's numahookd: e2e tests start their own", file=sys.stderr)
        built = probe.build()
    except LabError as exc:
        # Not a skip: as root the lab must work, and CI must not go green without it.
        env.release(holder)
        pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
    try:
        yield LabSession(holder=holder, probe=built, state=state)
    finally:
        problems = env.release(holder)
        if problems:
            print(f"\nlab teardown left: {problems}", file=sys.stderr)


@pytest.fixture
def conn(lab: LabSession) -> Iterator[Any]:
    """A connection to qemu:///system per test: a test may restart libvirtd."""
    c = daemons.connect()
    try:
        yield c
    finally:
        c.close()


_serial = itertools.count()


class Domains:
    """Defines, starts, stops and boots domains; removes every one of them at the end."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.names: list[str] = []

    def name(self, suffix: str) -> str:
        """A unique lab domain name (``nhlab-<suffix>-<pid>-<n>``)."""
        return f"{DOMAIN_PREFIX}{suffix}-{os.getpid()}-{next(_serial)}"

    def probe_xml(self, suffix: str, **kwargs: Any) -> str:
        """XML of a probe domain with a unique name; kwargs go to ``probe_domain_xml``."""
        return guest.probe_domain_xml(self.name(suffix), **kwargs)

    def define(self, xml: str) -> Any:
        """Define ``xml``; the domain is removed at the end of the test."""
        dom = guest.define(self.conn, xml)
        self.names.append(dom.name())
        return dom

    def _dom(self, dom_or_name: Any) -> Any:
        return self.conn.lookupByName(dom_or_name) if isinstance(dom_or_name, str) else dom_or_name

    def start(self, dom_or_name: Any) -> Any:
        """Start a defined domain (with a fresh serial log)."""
        dom = self._dom(dom_or_name)
        guest.start(dom)
        return dom

    def stop(self, dom_or_name: Any) -> None:
        """Destroy a running domain (it stays defined until the test ends)."""
        dom = self._dom(dom_or_name)
        if dom.isActive():
            dom.destroy()

    def boot(self, xml: str, *, timeout: float = guest.BOOT_TIMEOUT) -> GuestReport:
        """Define and start a probe domain, wait for it to power off, parse its report."""
        dom = self.define(xml)
        guest.start(dom)
        text = guest.wait_for_report(dom, until_off=True, timeout=timeout)
        return report.parse(text)

    def cleanup(self) -> list[str]:
        """Destroy and undefine every domain this factory made; returns failures."""
        failures = []
        for name in reversed(self.names):
            try:
                guest.remove(self.conn, name)
            except LabError as exc:
                failures.append(str(exc))
        self.names.clear()
        return failures


@pytest.fixture
def domains(lab: LabSession, conn: Any) -> Iterator[Domains]:
    """A :class:`Domains` factory; its domains are destroyed and undefined afterwards."""
    factory = Domains(conn)
    try:
        yield factory
    finally:
        failures = factory.cleanup()
        if failures:
            pytest.fail(f"could not remove test domains: {failures}", pytrace=False)


@pytest.fixture
def boot_report(domains: Domains) -> Callable[..., GuestReport]:
    """``boot_report(xml, timeout=120)``: boot a probe domain and return its parsed report."""
    return domains.boot
