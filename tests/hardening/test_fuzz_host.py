"""Fuzzing what numahook reads from the host and from its own state (issue 8, part 1).

libvirt's status XML and its directory, sysfs and procfs files, the kernel's uevents and
inotify records, cgroupfs, and numahook's claim records: each parser must return a
well-formed result or one of numahook's errors in one line, whatever the files hold.

CI runs the ``ci`` hypothesis profile; ``NUMAHOOK_FUZZ=long`` runs the ``long`` one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numahook import NAMESPACE
from numahook.core import cpulist
from numahook.errors import InputError
from numahook.host import cgroups, fsutil, hugepages, inotify, libvirtstatus, procfs, sysfs, uevents
from numahook.node import cmdline, probe
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import CpuSpec, HostSpec, NodeSpec, build_sysfs, host_roots
from tests.support import claims

from .conftest import FIGURES, FUZZ, uuid_of
from .fuzzing import (
    MAX_MESSAGE,
    SPICY,
    attempt,
    attr,
    file_contents,
    mangle,
    opt,
    patched,
    xml_values,
)

# --------------------------------------------------------------------------- status XML


@st.composite
def status_docs(draw: st.DrawFn) -> str:
    v = lambda: draw(opt(xml_values))  # noqa: E731
    vcpus = "".join(f"<vcpu{attr('id', v())}{attr('pid', v())}/>"
                    for _ in range(draw(st.integers(0, 4))))
    pins = "".join(draw(st.sampled_from([
        f"<vcpupin vcpu='0'{attr('cpuset', v())}/>", f"<emulatorpin{attr('cpuset', v())}/>",
        f"<iothreadpin iothread='1'{attr('cpuset', v())}/>"])) for _ in range(
        draw(st.integers(0, 3))))
    name = draw(st.one_of(st.just("d"), xml_values))
    uuid = draw(st.one_of(st.just(uuid_of(2)), xml_values))
    meta = draw(st.sampled_from(["", f"<metadata><numahook:domain xmlns:numahook='{NAMESPACE}'>"
                                     "<numahook:cpu dedicatedCpuPlacement='true'/>"
                                     "</numahook:domain></metadata>"]))
    root = draw(st.sampled_from(["domstatus", "domstatus", "domain", "x"]))
    dom = (f"<domain type='kvm'><name>{escape(name)}</name><uuid>{escape(uuid)}</uuid>{meta}"
           f"<cputune>{pins}</cputune></domain>")
    return (f"<{root}{attr('state', v())}{attr('pid', v())}><vcpus>{vcpus}</vcpus>"
            f"{draw(st.sampled_from([dom, dom, '', dom + dom]))}</{root}>")


def _check_status(got: Any) -> None:
    if isinstance(got, libvirtstatus.RunningDomain):
        assert got.name and got.uuid
        assert all(isinstance(t, int) for t in got.vcpu_tids.values())
        assert all(0 <= c <= cpulist.MAX_CPU for c in got.pinned_cpus)


@FUZZ
@given(status_docs(), st.data())
def test_fuzz_status_xml(doc: str, data: st.DataObject) -> None:
    xml = mangle(doc, data)
    _check_status(attempt("status-xml", libvirtstatus.parse_status, xml))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a.xml", "b.xml", "c", ".x.xml", "d.xml"]),
                          st.one_of(status_docs().map(lambda s: s.encode("utf-8",
                                                                          "surrogatepass")),
                                    st.binary(max_size=200))), max_size=4))
def test_fuzz_status_directory(files: list[tuple[str, bytes]]) -> None:
    """The hook and the daemon read every file in libvirt's status directory."""
    with tempfile.TemporaryDirectory() as d:
        for name, content in files:
            (Path(d) / name).write_bytes(content)
        got = attempt("status-dir", libvirtstatus.running_domains, d)
        if not isinstance(got, Exception):
            for dom in got:
                _check_status(dom)
        attempt("status-of", libvirtstatus.status_of, "a", d)


def test_status_message_quotes_a_clipped_value() -> None:
    with pytest.raises(InputError) as exc:
        libvirtstatus.parse_status("<domstatus pid='" + "9" * 65536 + "x'><domain><name>a"
                                   "</name><uuid>u</uuid></domain></domstatus>")
    assert len(str(exc.value)) <= MAX_MESSAGE


@pytest.mark.parametrize("pid", ["0", "-1", "99999999999999999999"])
def test_status_vcpu_thread_ids_must_be_real_ids(pid: str) -> None:
    FIGURES.add("fuzz", "status-vcpu-pid")
    with pytest.raises(InputError):
        libvirtstatus.parse_status(f"<domstatus state='running' pid='1'><vcpus><vcpu id='0' "
                                   f"pid='{pid}'/></vcpus><domain><name>a</name><uuid>u</uuid>"
                                   "</domain></domstatus>")


def test_status_file_with_non_utf8_bytes_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "x.xml").write_bytes(
        b"<domstatus state='running' pid='1'><domain><name>caf\xe9</name>"
        b"<uuid>" + uuid_of(7).encode() + b"</uuid></domain></domstatus>")
    assert libvirtstatus.running_domains(str(tmp_path)) == []


# --------------------------------------------------------------------------- sysfs and procfs

_SYSFS_FILES = [
    "devices/system/cpu/online", "devices/system/node/online",
    "devices/system/node/node0/cpulist", "devices/system/node/node1/cpulist",
    "devices/system/node/node0/distance", "devices/system/node/node0/meminfo",
    "devices/system/cpu/cpu0/topology/thread_siblings_list",
    "devices/system/cpu/cpu1/topology/core_id",
    "devices/system/cpu/cpu1/topology/physical_package_id",
    "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
    "devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages",
    "devices/system/node/node1/hugepages/hugepages-2048kB/surplus_hugepages",
    "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
]


@pytest.fixture(scope="module")
def sysfs_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two nodes of two CPUs: small enough to rewrite for every example."""
    spec = HostSpec("fuzz", [CpuSpec(i, i // 2, 0, 0, i) for i in range(4)],
                    [NodeSpec(0, [0, 1], 4 << 20, {2048: (8, 8, 0)}),
                     NodeSpec(1, [2, 3], 4 << 20, {2048: (0, 0, 0)})], [[10, 20], [20, 10]])
    return build_sysfs(tmp_path_factory.mktemp("sysfs") / "sys", spec)


@FUZZ
@given(st.dictionaries(st.sampled_from(_SYSFS_FILES), file_contents, min_size=1, max_size=4),
       st.lists(st.sampled_from(_SYSFS_FILES), max_size=2))
def test_fuzz_sysfs(sysfs_tree: Path, contents: dict[str, bytes], removed: list[str]) -> None:
    with patched(sysfs_tree, contents, removed):
        topo = attempt("sysfs-topology", sysfs.read_topology, str(sysfs_tree))
        if not isinstance(topo, Exception):
            assert all(0 <= c <= cpulist.MAX_CPU for c in topo.cpus)
            assert all(cpu.node in topo.nodes for cpu in topo.cpus.values())
            topo.fingerprint()
        for node_id in (0, 1):
            attempt("sysfs-hugepages", hugepages.counts, str(sysfs_tree), (node_id, 2048))
            attempt("sysfs-hugepage-sizes", hugepages.supported_sizes, str(sysfs_tree),
                    node_id)


@FUZZ
@given(file_contents, file_contents, file_contents)
def test_fuzz_procfs_files(meminfo: bytes, mounts: bytes, cgroup: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        proc = Path(d)
        (proc / "meminfo").write_bytes(b"Hugepagesize: " + meminfo)
        got = attempt("procfs-meminfo", sysfs.default_page_kib, str(proc))
        assert got is None or isinstance(got, (int, Exception))
        (proc / "1234").mkdir()
        (proc / "1234" / "cgroup").write_bytes(cgroup)
        path = attempt("procfs-cgroup", procfs.cgroup_of, 1234, "cpu", str(proc))
        if isinstance(path, str):
            # whatever the thread's cgroup claims to be, the group dir stays in the tree
            cg = Path(d) / "cg"
            (cg / "cpu").mkdir(parents=True)
            (cg / "cpu" / "cpu.shares").write_text("1024\n")
            attempt("cgroup-path", fsutil.under, str(cg / "cpu"),
                    *[p for p in path.split("/") if p] or ["."])
        # /proc/cmdline holds at most 2 KiB on x86 (COMMAND_LINE_SIZE)
        text = mounts.decode("utf-8", "replace")[:2048]
        attempt("procfs-mounts", probe.parse_mounts, f"hugetlbfs /dev/hugepages hugetlbfs "
                f"rw,pagesize={text.strip()} 0 0\n" + text, 2048)
        attempt("procfs-cmdline", cmdline.parse_cmdline, f"isolcpus={text} nohz_full={text}",
                frozenset(range(8)))


@FUZZ
@given(st.binary(max_size=600), st.binary(max_size=300))
def test_fuzz_qemu_process_files(status: bytes, cmdline: bytes) -> None:
    """numahookd reads these for any thread libvirt puts in a vcpuN cgroup."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "77").mkdir()
        (Path(d) / "77" / "status").write_bytes(b"Name:\tx\nTgid:" + status)
        (Path(d) / "77" / "cmdline").write_bytes(b"qemu\0-uuid\0" + cmdline)
        tgid = attempt("procfs-status-tgid", procfs.thread_group, 77, d)
        assert tgid is None or (isinstance(tgid, int) and 0 <= tgid < 10**10)
        uuid = attempt("procfs-qemu-uuid", procfs.qemu_uuid, 77, d)
        assert uuid is None or (isinstance(uuid, str) and len(uuid) == 36)


@FUZZ
@given(st.one_of(st.binary(max_size=2000),
                 st.lists(st.binary(max_size=40), max_size=80).map(b"\0".join),
                 st.lists(st.binary(max_size=40), max_size=80).map(
                     lambda f: b"add@/devices/system/cpu/cpu1\0" + b"\0".join(f))))
def test_fuzz_kernel_messages(data: bytes) -> None:
    """A kobject uevent or an inotify read: anything the kernel could hand numahookd."""
    ev = attempt("uevent", uevents.parse, data)
    assert ev is None or (isinstance(ev, dict) and len(ev) <= 66 and "ACTION" in ev)
    got = attempt("inotify-read", inotify.parse, data)
    assert isinstance(got, list) and all(isinstance(n, str) for _, _, n in got)


# --------------------------------------------------------------------------- cgroupfs

partitions = st.one_of(
    st.sampled_from(SPICY), st.none(),
    st.lists(st.one_of(st.sampled_from(["machine", "rt", "..", ".", "", "a.b", "cpu",
                                        "machine.slice", "x-y", "_x"]),
                       st.text(max_size=10)), max_size=10).map(lambda p: "/" + "/".join(p)),
)


@pytest.fixture(scope="module")
def cgroup_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cgroup")
    return host_roots(base, "quad-nosmt", 1, cpusets={"": "0-31", "machine": "0-15",
                                                      "machine/rt.partition": "4-7"})["cgroup"]


@FUZZ
@given(partitions, st.dictionaries(st.sampled_from(
    ["cpuset/machine/cpuset.effective_cpus", "cpuset/machine/cpuset.cpus",
     "cpuset/machine/rt.partition/cpuset.effective_cpus", "cpuset/cpuset.effective_cpus"]),
    file_contents, max_size=3))
def test_fuzz_cgroupfs(cgroup_template: Path, partition: str | None,
                       contents: dict[str, bytes]) -> None:
    root = cgroup_template
    with patched(root, contents, []):
        got = attempt("cgroupfs-cpuset", cgroups.partition_cpuset, str(root), partition)
        if isinstance(got, cgroups.Cpuset):
            real = os.path.realpath(got.path)
            assert real.startswith(os.path.realpath(root) + "/") or real == os.path.realpath(
                root / "cpuset")
            assert all(0 <= c <= cpulist.MAX_CPU for c in got.cpus)
        if isinstance(partition, str):
            parts = attempt("cgroupfs-partition", cgroups.validate_partition, partition)
            if isinstance(parts, list):
                assert all(p not in ("", ".", "..") and "/" not in p for p in parts)


# --------------------------------------------------------------------------- claim records

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64),
                      st.floats(allow_nan=True), st.text(max_size=12),
                      st.sampled_from(["0:2048", "1:1048576", "x", "0:2048:1", "-1:2048"]))
json_values = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=10)


@st.composite
def claim_records(draw: st.DrawFn) -> str:
    doc = claims.make(uuid=uuid_of(3), name="d", cpus=frozenset({1, 2}),
                      hugepages_added={(0, 2048): 2}, need={(0, 2048): 2}).to_json()
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=3)):
        if draw(st.booleans()):
            doc[key] = draw(json_values)
        else:
            doc.pop(key, None)
    if draw(st.booleans()):
        doc["created"] = draw(st.one_of(st.integers(-(10**400), 10**400), json_leaf))
    text = json.dumps(doc, allow_nan=True)
    return draw(st.sampled_from([text, text, text[: len(text) // 2], text + "x",
                                 text.replace("1", "1" * 5000, 1)]))


@FUZZ
@given(claim_records())
def test_fuzz_claim_records(text: str) -> None:
    """Claim records are root's own files; a corrupt one is skipped, never fatal."""
    with tempfile.TemporaryDirectory() as d:
        sd = StateDir(d)
        sd.ensure()
        (Path(sd.claims_dir) / f"{uuid_of(3)}.json").write_text(text, encoding="utf-8")
        got = attempt("claim-record", sd.load, uuid_of(3))
        assert got is None or isinstance(got, (Claim, Exception))
        attempt("claim-scan", sd.list_claims)


def test_claim_with_overflowing_number_is_skipped_as_corrupt(tmp_path: Path) -> None:
    sd = StateDir(str(tmp_path / "state"))
    sd.ensure()
    doc = Claim(uuid=uuid_of(6), name="d").to_json()
    doc["created"] = 10**400
    (Path(sd.claims_dir) / f"{uuid_of(6)}.json").write_text(json.dumps(doc))
    assert sd.load(uuid_of(6)) is None
    assert sd.list_claims() == []
    assert sd.corrupt_records() == [uuid_of(6)]
