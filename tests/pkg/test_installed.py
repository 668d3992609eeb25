"""The installed .deb alone runs a managed domain end to end (issue 6's "Show" list).

Run by ``scripts/package-test`` only, after it installed the .deb (with libvirtd already
running, so that the postinst's reload is what makes libvirtd see the hook) and removed
the checkout's pip-installed copy::

    cd <empty dir> && /usr/bin/python3 -m pytest /path/to/repo/tests/pkg -p no:cacheprovider

numahook is imported from the package (/usr/lib/python3/dist-packages) and only the
package's /usr/bin/numahook, /usr/bin/numahookd and hook run. The checkout is on sys.path
only for the lab helpers (libvirtd, the probe guest), appended after site-packages, and
that it shadows nothing is asserted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import numahook  # the installed package: sys.path has no checkout yet

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # after site-packages: the lab helpers only

from lab import DOMAIN_PREFIX, daemons, env, guest  # noqa: E402

DIST_PACKAGES = "/usr/lib/python3/dist-packages/"
CONF = Path("/etc/numahook/numahook.conf")
STATE = Path("/run/numahook")
CLAIMS = STATE / "claims"
NODE_JSON = STATE / "node.json"
HOOK_LINK = Path("/etc/libvirt/hooks/qemu.d/numahook")
HOOK_TARGET = Path("/usr/libexec/numahook/qemu-hook")
HUGEPAGES = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB")
#: what an init system gives a daemon: none of the caller's PATH, PYTHONPATH or venv
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
NAMESPACE = "https://numahook.io/xmlns/domain/1"
METADATA = (
    f"<metadata><numahook:domain xmlns:numahook='{NAMESPACE}'>"
    "<numahook:cpu dedicatedCpuPlacement='true'>"
    "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
    "<numahook:realtime mask='0'/>"
    "</numahook:cpu></numahook:domain></metadata>"
)


def wait_until(pred: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def hugepages() -> tuple[int, int]:
    """(nr_hugepages, free_hugepages) of 2 MiB pages on node 0."""
    return (int((HUGEPAGES / "nr_hugepages").read_text()),
            int((HUGEPAGES / "free_hugepages").read_text()))


def claims_of(name: str) -> list[Path]:
    if not CLAIMS.is_dir():
        return []
    return [p for p in sorted(CLAIMS.glob("*.json")) if name in p.read_text()]


def policy(tid: int) -> tuple[int, int]:
    policy = os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK
    return policy, os.sched_getparam(tid).sched_priority


@pytest.fixture(scope="module")
def installed() -> None:
    """The package is installed and nothing from the checkout can stand in for it."""
    if os.environ.get("NUMAHOOK_PACKAGE_TEST") != "1":
        pytest.skip("tests the installed .deb: scripts/package-test runs it")
    if os.geteuid() != 0:
        pytest.fail("the installed-package test needs root", pytrace=False)
    status = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "numahook"],
                            capture_output=True, text=True, check=False).stdout
    if status != "installed":
        pytest.fail("the numahook package is not installed", pytrace=False)
    assert numahook.__file__ is not None
    assert numahook.__file__.startswith(DIST_PACKAGES), numahook.__file__
    # the repo appended to sys.path shadows nothing: the same module is found first
    import importlib.util
    spec = importlib.util.find_spec("numahook")
    assert spec is not None and spec.origin is not None
    assert spec.origin.startswith(DIST_PACKAGES), spec.origin
    leftovers = [str(p) for pattern in ("lib/python3*/dist-packages/numahook*", "bin/numahook*")
                 for p in Path("/usr/local").glob(pattern)]
    assert not leftovers, f"the checkout's pip-installed copy is still there: {leftovers}"


def test_the_package_owns_hook_unit_config_and_tmpfiles(installed: None) -> None:
    owned = set(subprocess.run(["dpkg", "-L", "numahook"], capture_output=True, text=True,
                               check=True).stdout.split())
    for path in (str(HOOK_LINK), str(HOOK_TARGET), "/lib/systemd/system/numahookd.service",
                 "/usr/lib/tmpfiles.d/numahook.conf", str(CONF), "/usr/bin/numahook",
                 "/usr/bin/numahookd", "/usr/share/bash-completion/completions/numahook",
                 "/usr/share/bash-completion/completions/numahookd",
                 "/usr/share/man/man8/numahook.8.gz", "/usr/share/man/man8/numahookd.8.gz",
                 "/usr/share/man/man5/numahook.conf.5.gz",
                 "/usr/share/man/man5/numahook-metadata.5.gz",
                 "/usr/share/numahook/grafana/numahook.json"):
        assert path in owned, f"{path} is not in the package"
    # python-daemon only for --daemonize: suggested, not required
    fields = subprocess.run(["dpkg-query", "-W", "-f", "${Depends}\n${Suggests}", "numahook"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    assert "python3-daemon" not in fields[0] and "python3-daemon" in fields[1], fields
    assert HOOK_LINK.is_symlink() and HOOK_LINK.resolve() == HOOK_TARGET
    assert os.access(HOOK_TARGET, os.X_OK)
    conffiles = subprocess.run(["dpkg-query", "-W", "-f", "${Conffiles}", "numahook"],
                               capture_output=True, text=True, check=True).stdout
    assert str(CONF) in conffiles
    # tmpfiles made the state directory root-only
    assert STATE.is_dir() and (STATE.stat().st_mode & 0o777) == 0o700
    for exe in ("/usr/bin/numahook", "/usr/bin/numahookd"):
        assert Path(exe).read_text().splitlines()[0] == "#!/usr/bin/python3"
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True,
                             env=CLEAN_ENV, cwd="/")
        assert numahook.__version__ in out.stdout


def test_the_schemas_and_examples_are_where_help_names_them(installed: None) -> None:
    """An operator has the package, not the source tree (issue 31): every schema a --help
    names is there, the schema directory is docs/schemas/, the examples are examples/."""
    from numahook import EXAMPLES_DIR, SCHEMA_DIR

    named = set()
    for command in ("check", "node", "status"):
        out = subprocess.run(["/usr/bin/numahook", command, "--help"], capture_output=True,
                             text=True, check=True, env={**CLEAN_ENV, "COLUMNS": "200"}).stdout
        named.update(re.findall(rf"{SCHEMA_DIR}/[a-z-]+\.schema\.json", out))
    assert len(named) == 3 and all(Path(p).is_file() for p in named), named
    for installed_dir, source in ((SCHEMA_DIR, REPO / "docs" / "schemas"),
                                  (EXAMPLES_DIR, REPO / "examples")):
        files = {p.name: p.read_bytes() for p in Path(installed_dir).iterdir()}
        assert files == {p.name: p.read_bytes() for p in source.iterdir()}, installed_dir
    example = Path(EXAMPLES_DIR) / "numavm.xml"
    proc = subprocess.run(["/usr/bin/numahook", "check", str(example)], capture_output=True,
                          text=True, check=False, env=CLEAN_ENV, cwd="/")
    assert proc.returncode in (0, 1) and proc.stdout.startswith("numavm"), proc.stderr


class Numahookd:
    """``/usr/bin/numahookd --foreground`` as systemd would run it (no systemd here)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(["/usr/bin/numahookd", "--foreground", "-v"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         env=CLEAN_ENV, cwd="/", start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def delegate_config(installed: None) -> Iterator[None]:
    """This machine throttles RT with RT_GROUP_SCHED: opt in to budget delegation."""
    original = CONF.read_bytes()
    CONF.write_text("[realtime]\nthrottled = delegate\n")
    try:
        yield
    finally:
        CONF.write_bytes(original)


def _published_connected() -> bool:
    try:
        doc = json.loads(NODE_JSON.read_text())
    except FileNotFoundError:  # not published yet (the file is replaced atomically)
        return False
    return doc["node"]["libvirt"]["reachable"] is True


@pytest.fixture(scope="module")
def numahookd(delegate_config: None) -> Iterator[Numahookd]:
    with tempfile.TemporaryDirectory(prefix="numahookd-pkg-") as tmp:
        NODE_JSON.unlink(missing_ok=True)
        d = Numahookd(Path(tmp) / "numahookd.log")
        try:
            # numahookd publishes at once, then again when its libvirt connection (opened
            # in a thread: it never blocks) comes up; libvirtd runs here, so wait for that
            wait_until(lambda: _published_connected() or d.proc.poll() is not None,
                       "numahookd to publish node.json with libvirt connected")
            assert d.proc.poll() is None, f"numahookd exited: {d.text()[-2000:]}"
            yield d
        finally:
            code = d.stop()
            print(d.text()[-3000:], file=sys.stderr)
            assert code == 0, f"numahookd exited with {code} on SIGTERM"


def test_numahookd_publishes_the_node_capability(numahookd: Numahookd) -> None:
    doc = json.loads(NODE_JSON.read_text())
    assert doc["generator"] == f"numahook {numahook.__version__}"
    node = doc["node"]
    rt = Path("/proc/sys/kernel/sched_rt_runtime_us").read_text().strip()
    assert node["realtime_capable"] is (rt == "-1")
    assert node["sched_rt"]["runtime_us"] == int(rt)
    assert node["libvirt"]["reachable"] is True
    assert node["reasons"], "the capability comes with its reasons"


def test_managed_domain_end_to_end(numahookd: Numahookd, tmp_path: Path) -> None:
    name = f"{DOMAIN_PREFIX}pkg-{os.getpid()}"
    source = tmp_path / f"{name}.xml"
    source.write_text(guest.probe_domain_xml(name, vcpus=2, memory_mib=128, hugepage_kib=2048,
                                             cmdline="numahook.hold=600", extra=METADATA))
    rendered = subprocess.run(["/usr/bin/numahook", "render", str(source)], capture_output=True,
                              text=True, env=CLEAN_ENV, cwd="/", check=False)
    assert rendered.returncode == 0, rendered.stderr
    assert "<vcpupin" in rendered.stdout and "<memnode" in rendered.stdout
    conn = daemons.connect()
    nr_before, free_before = hugepages()
    try:
        dom = guest.define(conn, rendered.stdout)
        guest.start(dom)
        # the hook fired: prepare claimed the CPUs and reserved the pages
        assert claims_of(name), f"no claim for {name} in {CLAIMS}: did libvirtd run the hook?"
        nr, _ = hugepages()
        assert nr - nr_before == max(0, 64 - free_before), (nr_before, free_before, nr)
        # started: vCPU 0 (the mask) is SCHED_FIFO 1, vCPU 1 is not real-time
        _, tids = guest.vcpu_threads(name)
        assert sorted(tids) == [0, 1], tids
        assert policy(tids[0]) == (os.SCHED_FIFO, 1)
        assert policy(tids[1]) == (os.SCHED_OTHER, 0)
        # numahookd reports the running domain
        def reported() -> bool:
            doc = json.loads(NODE_JSON.read_text())
            return any(d.get("name") == name and d.get("state") == "running"
                       for d in doc.get("domains", []))
        wait_until(reported, f"node.json to list {name} running", timeout=20)
        assert dom.isActive()
        dom.destroy()
        wait_until(lambda: not claims_of(name), "the claim to be released")
        wait_until(lambda: hugepages()[0] == nr_before, "the hugepages to be given back")
        dom.undefine()
        env.forget_domain(name)
    finally:
        guest.remove(conn, name)
        conn.close()
    assert numahookd.proc.poll() is None, "numahookd died during the domain's life"
    assert "Traceback" not in numahookd.text()
