"""Fuzzing what an operator or libvirt hands numahook about a domain (issue 8, part 1).

CPU lists and the real-time mask, numahook.conf, the domain XML through both parsers and
the whole render, and the hook's entry point on every operation. The harness and the
strategies are in fuzzing.py; what numahook reads from the host is in test_fuzz_host.py.

CI runs the ``ci`` hypothesis profile; ``NUMAHOOK_FUZZ=long`` runs the ``long`` one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numahook import config
from numahook.config import Config
from numahook.core import cpulist, hardware, render, units
from numahook.core.pci import HostPci
from numahook.core.plan import Inputs
from numahook.errors import ConfigError
from numahook.hook import main as hookmain
from numahook.host import sysfs
from tests.fixtures.hosts import host_roots

from .conftest import FIGURES, FUZZ, domain_xml, make_host, prerender, uuid_of
from .fuzzing import (
    MAX_MESSAGE,
    SPICY,
    attempt,
    cpulist_texts,
    domains,
    mangle,
    one_line,
    values,
    watchdog,
)

# --------------------------------------------------------------------------- fixture host

_TMP = tempfile.TemporaryDirectory(prefix="numahook-fuzz-")
_HOST = host_roots(Path(_TMP.name) / "quad", "quad-nosmt", 1)
TOPOLOGY = sysfs.read_topology(_HOST["sysfs"])
#: two of the fuzzed devices are on this host, on nodes 0 and 2 (so they get placed)
INPUTS = Inputs(topology=TOPOLOGY, available=frozenset(TOPOLOGY.cpus), config=Config(),
                emit_vcpusched=False, default_page_kib=2048,
                devices={"0000:18:00.0": HostPci("0000:18:00.0", True, 0, "pci0000:17"),
                         "0000:86:00.0": HostPci("0000:86:00.0", True, 2, "pci0000:85")})


def teardown_module() -> None:
    _TMP.cleanup()


# --------------------------------------------------------------------------- cpulist, mask


def reference_cpulist(text: str) -> frozenset[int] | None:
    """An independent reading of the kernel's cpulist syntax; None if invalid."""
    text = text.strip()
    if not text:
        return frozenset()
    spans: list[tuple[int, int]] = []
    for item in text.split(","):
        item = item.strip()
        lo, dash, hi = item.partition("-")
        if not (lo.isascii() and lo.isdigit() and len(lo) <= 5):
            return None
        if dash and not (hi.isascii() and hi.isdigit() and len(hi) <= 5):
            return None
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a or b > cpulist.MAX_CPU:
            return None
        spans.append((a, b))
    ids = bytearray(cpulist.MAX_CPU + 1)  # a bitmap: cost bounded by the CPU count
    for a, b in set(spans):
        ids[a:b + 1] = b"\1" * (b - a + 1)
    return frozenset(i for i, v in enumerate(ids) if v)


@FUZZ
@given(cpulist_texts)
def test_fuzz_cpulist(text: str) -> None:
    got = attempt("cpulist", cpulist.parse, text)
    if isinstance(got, Exception):
        ref = reference_cpulist(text) if len(text) <= cpulist.MAX_TEXT else None
        assert ref is None, f"{text[:80]!r} was refused but is a valid list"
        return
    assert all(0 <= c <= cpulist.MAX_CPU for c in got)
    assert got == reference_cpulist(text)
    assert cpulist.parse(cpulist.format(got)) == got


@FUZZ
@given(cpulist_texts, st.integers(1, 4096))
def test_fuzz_realtime_mask(text: str, count: int) -> None:
    # the mask only ever comes from a metadata attribute, which is at most 4096 characters
    # (parse_mask expands each item on its own: 585 items of 0-4095 are 2.4 M insertions)
    text = text[:4096]
    got = attempt("realtime-mask", cpulist.parse_mask, text, count)
    if not isinstance(got, Exception):
        assert got <= frozenset(range(count))
        if not text.strip():
            assert got == frozenset(range(count))


# --------------------------------------------------------------------------- config

_SECTIONS = ["features", "realtime", "hugepages", "hook", "daemon", "paths", "Features",
             "DEFAULT", "bogus", "paths ", ""]
_KEYS = ["NUMA", "numa", "Realtime", "throttled", "on_failure", "max_budget_us", "compact",
         "lock_timeout", "probe_interval", "reconcile_interval", "libvirt_uri", "nfd_dir",
         "textfile_dir", "state_dir", "sysfs_root", "cgroup_root", "proc_root", "libvirt_run",
         "bogus", "numa "]


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"[{draw(st.sampled_from(_SECTIONS))}]")
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.sampled_from(_KEYS))
            sep = draw(st.sampled_from(["=", " = ", ":", " "]))
            value = draw(values).replace("\n", "\n ")
            lines.append(f"{key}{sep}{value}")
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["# c", "; c", "  indented", "[", "]", "%(x)s",
                                               "\x00", "key_without_value"])))
    return "\n".join(lines) + "\n"


@FUZZ
@given(config_texts())
def test_fuzz_config(text: str) -> None:
    # config files are root's; their messages may quote a whole value, so no length bound
    got = attempt("config", config.parse, text, "/etc/numahook/numahook.conf", limit=None)
    if isinstance(got, Exception):
        assert isinstance(got, ConfigError)
        assert str(got).startswith("/etc/numahook/numahook.conf:")
        return
    for name in ("state_dir", "sysfs_root", "cgroup_root", "proc_root", "libvirt_run",
                 "nfd_dir", "textfile_dir"):
        value = getattr(got, name)
        assert value.startswith("/") and ".." not in value.split("/") and "\0" not in value
    assert 0.1 <= got.lock_timeout <= 120
    assert got.rt_throttled in ("refuse", "delegate")


@FUZZ
@given(st.one_of(st.binary(max_size=300), config_texts().map(lambda t: t.encode(
    "utf-8", "surrogatepass"))))
def test_fuzz_config_file_bytes(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".conf") as fh:
        fh.write(data)
        fh.flush()
        got = attempt("config-file", config.load, fh.name, limit=None)
        # what stopped/release/reconnect read: never an exception, whatever the bytes
        regardless, bad = config.load_regardless(fh.name)
    assert isinstance(got, (Config, ConfigError))
    if isinstance(got, Config):
        assert (regardless, bad) == (got, None)
    else:  # the first error, and the file's good settings (or none) beside the defaults
        assert isinstance(regardless, Config) and str(bad) == str(got)


# --------------------------------------------------------------------------- domain XML


def _check_parsed(doc: render.Parsed) -> None:
    f = doc.facts
    assert 1 <= f.vcpus <= 4096 and 1 <= f.current_vcpus <= f.vcpus
    assert 0 <= f.memory_kib <= units.MAX_KIB
    for cpus in [*f.vcpupin.values(), *f.iothreadpin.values(), f.emulatorpin or frozenset()]:
        assert all(0 <= c <= cpulist.MAX_CPU for c in cpus)
    if doc.request is not None:
        assert 1 <= doc.request.realtime_priority <= 99


def _full_pipeline(xml: str | bytes, readonly: bool) -> Any:
    doc = render.parse(xml, readonly=True) if readonly else render.parse(xml)
    _check_parsed(doc)
    if doc.request is None:
        return doc
    ev = hardware.evaluate(doc.facts, doc.request, INPUTS)
    if ev.failed is not None:
        one_line(ev.refusal())
        return ev
    if readonly or ev.plan is None:
        return ev
    out = render.render(xml, INPUTS)
    again = render.render(out.xml, INPUTS)
    assert again.xml == out.xml  # idempotent, even for strange but valid input
    return out


@FUZZ
@given(domains(), st.data())
def test_fuzz_domain_xml(doc: str, data: st.DataObject) -> None:
    xml = mangle(doc, data)
    got = attempt("domain-xml", _full_pipeline, xml, False)
    if isinstance(xml, (bytes, str)):
        ro = attempt("domain-xml-readonly", _full_pipeline, xml, True)
        if isinstance(got, Exception) or isinstance(ro, Exception):
            return
        # both parsers must read the same facts and request out of the same document
        a = render.parse(xml)
        b = render.parse(xml, readonly=True)
        assert (a.facts, a.request) == (b.facts, b.request)


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_fuzz_domain_xml_raw(data: bytes | str) -> None:
    attempt("domain-xml-raw", render.parse, data)
    attempt("domain-xml-raw-readonly", render.parse, data, readonly=True)


# --------------------------------------------------------------------------- the hook itself


@pytest.fixture(scope="module")
def hook_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    host = make_host(tmp_path_factory.mktemp("hookfuzz"), admin_pages=0)
    old = os.environ.get("NUMAHOOK_CONFIG")
    os.environ["NUMAHOOK_CONFIG"] = str(host.config)
    host.good = prerender(host.cfg(), domain_xml("good", uuid_of(9), pages=2), {1})  # type: ignore[attr-defined]
    # the hook's main() logs to syslog or a file; run() alone must not fall back to stderr
    sink = logging.StreamHandler(io.StringIO())
    logging.getLogger("numahook").addHandler(sink)
    try:
        yield host
    finally:
        logging.getLogger("numahook").removeHandler(sink)
        if old is None:
            os.environ.pop("NUMAHOOK_CONFIG", None)
        else:
            os.environ["NUMAHOOK_CONFIG"] = old


_OPS = [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end"),
        ("release", "end"), ("migrate", "begin"), ("restore", "begin"), ("reconnect", "begin"),
        ("attach", "begin")]


@FUZZ
@given(st.one_of(domains(), st.text(max_size=200)), st.sampled_from(_OPS), st.data())
def test_fuzz_hook_entry(hook_host: Any, doc: str, op: tuple[str, str],
                         data: st.DataObject) -> None:
    """hook.main.run on every operation: an exit code and at most one line, never more."""
    xml = mangle(doc, data)
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8", "surrogateescape")
    if data.draw(st.booleans()):  # a near-valid one: the rendered domain with one change
        at = data.draw(st.integers(0, len(hook_host.good)))
        xml = hook_host.good[:at] + data.draw(st.sampled_from(SPICY)) + hook_host.good[at:]
    err = io.StringIO()
    out = io.StringIO()
    FIGURES.add("fuzz", "hook-entry")
    # an exception here is a bug even though main() would turn it into "internal error"
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), watchdog():
        rc = hookmain.run(["d", op[0], op[1], "-"], xml)
    assert rc in (0, 1)
    if op[0] in ("stopped", "release", "reconnect", "attach"):
        assert rc == 0, err.getvalue()
    message = err.getvalue()
    assert message.count("\n") <= 1 and "Traceback" not in message, message[:2000]
    assert len(message) <= MAX_MESSAGE + 20, message[:300]
    if rc == 1:
        assert message.startswith("numahook: ")
    # whatever happened, release gives everything back
    with contextlib.redirect_stderr(io.StringIO()):
        hookmain.run(["good", "release", "end", "-"], hook_host.good)
    assert hook_host.claims() == [] or all(c.uuid != uuid_of(9) for c in hook_host.claims())


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_relocating_a_domain_with_a_cpuless_cell_is_refused_in_one_sentence(
        tmp_path: Path, op: str) -> None:
    FIGURES.add("fuzz", "relocate-cpuless-cell")
    host = make_host(tmp_path / "host")
    good = prerender(host.cfg(), domain_xml("good", uuid_of(9), pages=2), {1})
    bad = good.replace("<cell id='0' cpus='0' ", "<cell id='0' ")
    assert bad != good
    proc = host.hook(bad, "good", op, "begin")
    assert proc.returncode in (0, 1) and "internal error" not in proc.stderr, proc.stderr
