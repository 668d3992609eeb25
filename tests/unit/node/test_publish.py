"""publish: node.json, the NFD feature file, the Prometheus textfile and the STATUS= line.

The metrics file is checked by a strict line-format checker written here (no Prometheus
client is a dependency); the NFD file is read back the way nfd-worker's local source
reads it (comments, ``# +expiry-time``, ``key[=value]``).
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import stat
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import numahook
from numahook.errors import InputError
from numahook.node import metrics, model, publish
from numahook.node.metrics import Metric
from tests.support.nodes import DAEMON, DOMAIN, NOW, capability

DOCS = Path(__file__).resolve().parents[3] / "docs/status-schema.md"


@pytest.fixture(scope="module")
def rt_cap(tmp_path_factory: pytest.TempPathFactory) -> model.NodeCapability:
    return capability(tmp_path_factory.mktemp("rt"))


@pytest.fixture(scope="module")
def plain_cap(tmp_path_factory: pytest.TempPathFactory) -> model.NodeCapability:
    return capability(tmp_path_factory.mktemp("plain"), "intel-2s-ht", 950000, 1, None)


def only(directory: Path) -> list[str]:
    """Every entry of a directory: an atomic writer leaves no temporary file behind."""
    return sorted(os.listdir(directory))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- node.json


#: Objects whose keys are data (pool names, domain names), not schema.
DATA_MAPS = ("hugepages_added", "hugepages_need", "refused")


def keys(value: object, out: set[str] | None = None) -> set[str]:
    """Every object key, at any depth, except inside data maps."""
    out = set() if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(k)
            if k not in DATA_MAPS:
                keys(v, out)
    elif isinstance(value, list):
        for v in value:
            keys(v, out)
    return out


def test_write_status(tmp_path: Path, rt_cap: model.NodeCapability) -> None:
    state = tmp_path / "run"
    path = publish.write_status(rt_cap, state, {"domains": [DOMAIN], "daemon": DAEMON}, NOW)
    assert path == state / "node.json" and only(state) == ["node.json"]
    assert mode(path) == 0o644
    doc = json.loads(path.read_text())
    assert set(doc) == {"schema_version", "generated_at", "generator", "node", "domains",
                        "daemon"}
    assert doc["schema_version"] == publish.SCHEMA_VERSION == 1
    assert doc["generated_at"] == "2024-05-01T12:00:00Z"
    assert doc["generator"].startswith("numahook ")
    assert model.NodeCapability.from_json(doc["node"]) == rt_cap
    assert doc["domains"] == [DOMAIN] and doc["daemon"] == DAEMON

    publish.write_status(rt_cap, state)  # rewriting drops the daemon's sections
    doc = json.loads(path.read_text())
    assert set(doc) == {"schema_version", "generated_at", "generator", "node"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["generated_at"])
    assert only(state) == ["node.json"]


def test_write_status_refuses_bad_sections(tmp_path: Path, rt_cap: model.NodeCapability) -> None:
    with pytest.raises(InputError, match="no section 'vms'; use one of domains, daemon"):
        publish.write_status(rt_cap, tmp_path, {"vms": []})
    with pytest.raises(InputError, match="lacks uuid"):
        publish.write_status(rt_cap, tmp_path, {"domains": [{"name": "a", "state": "running"}]})
    with pytest.raises(InputError, match="not plain JSON data"):
        publish.write_status(rt_cap, tmp_path, {"daemon": {"cpus": frozenset({1})}})
    assert only(tmp_path) == []


def test_schema_doc_names_every_key(tmp_path: Path, rt_cap: model.NodeCapability) -> None:
    doc = publish.status_document(rt_cap, {"domains": [DOMAIN], "daemon": DAEMON}, NOW)
    text = DOCS.read_text()
    missing = sorted(k for k in keys(doc) if f"`{k}`" not in text)
    assert missing == [], f"docs/status-schema.md does not document {missing}"
    # the example in the doc is a valid document of this schema version
    example = json.loads(re.search(r"```json\n(.*?)\n```", text, re.DOTALL).group(1))
    assert example["schema_version"] == publish.SCHEMA_VERSION
    assert set(example) == set(doc)
    assert set(example["node"]) == set(doc["node"])
    assert keys(example["node"]) == keys(doc["node"])
    model.NodeCapability.from_json(example["node"])


# --------------------------------------------------------------------------- NFD


def nfd_read(text: str, now: datetime) -> dict[str, str]:
    """nfd-worker's local source: ``#`` comments, ``# +expiry-time``, ``key[=value]``."""
    labels: dict[str, str] = {}
    expiry = now
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("# +expiry-time="):
                stamp = line.split("=", 1)[1].strip().replace("Z", "+00:00")
                expiry = datetime.fromisoformat(stamp)
            continue
        if expiry < now:
            continue
        key, _, value = line.partition("=")
        labels[key] = value if "=" in line else "true"
    return labels


def test_nfd_file_for_a_real_time_host(tmp_path: Path, rt_cap: model.NodeCapability) -> None:
    path = publish.write_nfd(rt_cap, tmp_path, ttl=180, now=NOW)
    assert path == tmp_path / "numahook" and only(tmp_path) == ["numahook"]
    assert mode(path) == 0o644
    text = path.read_text()
    assert "# +expiry-time=2024-05-01T12:03:00Z\n" in text
    assert nfd_read(text, NOW) == {
        "numahook.io/realtime": "true",
        "numahook.io/realtime-start": "vcpusched",
        "numahook.io/preempt-rt": "true",
        "numahook.io/rt-group-sched": "true",
        "numahook.io/isolcpus": "true",
        "numahook.io/nohz-full": "true",
        "numahook.io/numa-nodes": "2",
        "numahook.io/cgroup-version": "1",
        "numahook.io/hugepages-2Mi": "true",
        "numahook.io/hugepages-1Gi": "true",
        "numahook.io/libvirt": "true",
    }
    # past the expiry nfd-worker drops every label
    assert nfd_read(text, NOW + timedelta(seconds=181)) == {}


def test_nfd_file_for_a_throttled_host(tmp_path: Path, plain_cap: model.NodeCapability) -> None:
    text = publish.write_nfd(plain_cap, tmp_path).read_text()  # type: ignore[union-attr]
    assert "expiry-time" not in text
    labels = nfd_read(text, NOW)
    # like kubevirt.io/realtime: absent, not false, so `-l numahook.io/realtime` is exact
    assert "numahook.io/realtime" not in labels
    assert labels["numahook.io/realtime-start"] == "refuse"
    assert labels["numahook.io/preempt-rt"] == "false"
    assert labels["numahook.io/isolcpus"] == "false"
    assert "numahook.io/libvirt" not in labels  # unknown is not published
    for key, value in labels.items():
        prefix, name = key.split("/")
        assert prefix == "numahook.io" and len(name) <= 63 and len(value) <= 63
        assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", value)
    for line in text.splitlines():
        assert line.startswith("#") or "/" in line.split("=")[0]  # never auto-prefixed by NFD


def test_nfd_labels_do_not_change_when_hugepages_are_used(tmp_path: Path) -> None:
    """A VM start takes free pages; the Node's labels must not change with it."""
    before = capability(tmp_path / "a")
    used = replace(before, hugepages=tuple(replace(p, free=p.free // 2)
                                           for p in before.hugepages))
    assert used.free_pages(2048) != before.free_pages(2048)
    assert publish.nfd_labels(used) == publish.nfd_labels(before)
    # a page size with no hugetlbfs mount is one libvirt cannot use: a configuration fact
    unmounted = replace(before, hugetlbfs=tuple(m for m in before.hugetlbfs
                                                if m.pagesize_kib == 2048))
    assert publish.nfd_labels(unmounted)["numahook.io/hugepages-1Gi"] == "false"


def test_nfd_needs_its_directory_and_is_removed(tmp_path: Path,
                                                rt_cap: model.NodeCapability) -> None:
    missing = tmp_path / "etc/kubernetes/node-feature-discovery/features.d"
    assert publish.write_nfd(rt_cap, missing) is None
    assert not (tmp_path / "etc").exists()
    assert publish.remove_nfd(missing) is False
    publish.write_nfd(rt_cap, tmp_path)
    publish.write_nfd(rt_cap, tmp_path)
    assert only(tmp_path) == ["numahook"]
    assert publish.remove_nfd(tmp_path) is True
    assert only(tmp_path) == []


# --------------------------------------------------------------------------- Prometheus

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_PAIR = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_PAIR})(?:,{_PAIR})*)?\}})? (\S+)")
_VALUE = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf)|NaN")


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def prom_check(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of the text exposition format as the textfile collector takes it.

    One HELP and one TYPE per family, both before its samples; a family's samples are
    contiguous; names, label names and escapes are valid; no timestamps; no duplicate
    series; the file ends in a newline. Returns the series.
    """
    assert text.endswith("\n") and not text.endswith("\n\n"), "must end in one newline"
    series: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    helped: set[str] = set()
    typed: dict[str, str] = {}
    done: set[str] = set()
    current: str | None = None
    for no, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {no}: {line!r}"
        assert line and line == line.strip(), where
        if line.startswith("#"):
            m = re.fullmatch(rf"# (HELP|TYPE) ({_NAME}) (.*)", line)
            assert m, where
            kind, name, rest = m.groups()
            assert name not in done and name != current, f"{where}: after its samples"
            if kind == "HELP":
                assert name not in helped, f"{where}: second HELP"
                assert re.fullmatch(r"(?:[^\\]|\\[\\n])*", rest), f"{where}: bad escape"
                helped.add(name)
            else:
                assert name in helped, f"{where}: TYPE before HELP"
                assert name not in typed and rest in ("gauge", "counter", "untyped"), where
                typed[name] = rest
            continue
        m = _SAMPLE.fullmatch(line)
        assert m, f"{where}: not a sample (or it has a timestamp)"
        name, body, value = m.group(1), m.group(2), m.groups()[-1]
        assert name in typed, f"{where}: sample before HELP/TYPE"
        if current != name:
            assert name not in done, f"{where}: family split"
            if current:
                done.add(current)
            current = name
        assert _VALUE.fullmatch(value), f"{where}: bad value"
        labels = tuple((k, _unescape(v)) for k, v in re.findall(_PAIR, body or ""))
        assert len({k for k, _ in labels}) == len(labels), f"{where}: repeated label"
        assert all(not k.startswith("__") for k, _ in labels), where
        key = (name, tuple(sorted(labels)))
        assert key not in series, f"{where}: duplicate series"
        series[key] = float(value)
    return series


def test_metrics_file(tmp_path: Path, rt_cap: model.NodeCapability) -> None:
    extra = [
        Metric.gauge("numahook_managed_domains", "Managed domains by state.",
                     samples=[({"state": "running"}, 2), ({"state": "shut off"}, 1)]),
        Metric.gauge("numahook_reconcile_seconds", "Last reconcile pass.", 0.0042),
        Metric.counter("numahook_redefined_total", "Definitions redefined.", 7),
        Metric.gauge("numahook_odd", 'Help with \\ backslash\nand newline.',
                     samples=[({"why": 'quote " back \\ nl \n'}, math.inf),
                              ({"why": "nan"}, math.nan)]),
    ]
    path = metrics.write_metrics(rt_cap, tmp_path, extra)
    assert path == tmp_path / "numahook.prom" and only(tmp_path) == ["numahook.prom"]
    assert mode(path) == 0o644
    text = path.read_text()
    series = prom_check(text)
    g = {(n, dict(labels).get("node"), dict(labels).get("size_bytes")): v
         for (n, labels), v in series.items()}
    assert g[("numahook_node_realtime_capable", None, None)] == 1
    assert g[("numahook_sched_rt_runtime_seconds", None, None)] == -1
    assert g[("numahook_sched_rt_period_seconds", None, None)] == 1
    assert g[("numahook_rt_group_sched", None, None)] == 1
    assert g[("numahook_preempt_rt", None, None)] == 1
    assert g[("numahook_isolated_cpus", None, None)] == 36
    assert g[("numahook_libvirt_up", None, None)] == 1
    for n in ("0", "1"):
        assert g[("numahook_hugepages_free", n, "2097152")] == 512
        assert g[("numahook_hugepages_reserved", n, "1073741824")] == 4
    assert series[("numahook_managed_domains", (("state", "shut off"),))] == 1
    assert series[("numahook_reconcile_seconds", ())] == 0.0042
    assert series[("numahook_odd", (("why", 'quote " back \\ nl \n'),))] == math.inf
    assert math.isnan(series[("numahook_odd", (("why", "nan"),))])
    assert "# TYPE numahook_redefined_total counter\n" in text
    assert "# HELP numahook_odd Help with \\\\ backslash\\nand newline.\n" in text


def test_metrics_leave_out_what_is_unknown(tmp_path: Path,
                                           plain_cap: model.NodeCapability) -> None:
    series = prom_check(metrics.metrics_text(plain_cap))
    names = {n for n, _ in series}
    assert "numahook_libvirt_up" not in names  # unknown, not down
    assert series[("numahook_node_realtime_capable", ())] == 0
    assert series[("numahook_sched_rt_runtime_seconds", ())] == 0.95
    assert series[("numahook_realtime_start_allowed", ())] == 0
    assert series[("numahook_rt_budget_available_seconds", ())] == 0.95


def test_metrics_need_their_directory(tmp_path: Path, rt_cap: model.NodeCapability) -> None:
    assert metrics.write_metrics(rt_cap, tmp_path / "node-exporter") is None
    assert only(tmp_path) == []


def test_metrics_file_is_removed(tmp_path: Path, rt_cap: model.NodeCapability) -> None:
    assert metrics.remove_metrics(tmp_path) is False
    metrics.write_metrics(rt_cap, tmp_path)
    assert only(tmp_path) == ["numahook.prom"]
    assert metrics.remove_metrics(tmp_path) is True
    assert only(tmp_path) == []


def test_build_info_and_base_units(rt_cap: model.NodeCapability) -> None:
    series = prom_check(metrics.metrics_text(rt_cap))
    assert series[("numahook_build_info", (("version", numahook.__version__),))] == 1
    names = {n for n, _ in series}
    # the names before numahook followed Prometheus's rules (README lists the renames)
    assert not names & {"numahook_hugepages_total", "numahook_sched_rt_runtime_us",
                        "numahook_sched_rt_period_us", "numahook_rt_budget_available_us"}
    assert all(not n.endswith("_us") and "_kib" not in n for n in names)
    labels = {k for _, ls in series for k, _ in ls}
    assert "size_kib" not in labels and "size_bytes" in labels


def test_metric_validation(rt_cap: model.NodeCapability) -> None:
    with pytest.raises(InputError, match="not valid in Prometheus"):
        Metric.gauge("numahook-bad", "x", 1)
    with pytest.raises(InputError, match="label name '__x'"):
        Metric.gauge("numahook_x", "x", samples=[({"__x": "1"}, 1)])
    with pytest.raises(InputError, match="two samples"):
        Metric.gauge("numahook_x", "x", samples=[({"a": "1"}, 1), ({"a": "1"}, 2)])
    with pytest.raises(InputError, match="type 'summary' is unknown"):
        Metric("numahook_x", "x", "summary")
    with pytest.raises(InputError, match="metric numahook_preempt_rt is defined twice"):
        metrics.metrics_text(rt_cap, [Metric.gauge("numahook_preempt_rt", "again", 0)])
    # a family without samples is valid text and is kept
    empty = metrics.render_metrics([Metric.gauge("numahook_y", "no value yet")])
    assert prom_check(empty) == {}


def test_prom_check_catches_bad_files() -> None:
    good = "# HELP a x\n# TYPE a gauge\na 1\n"
    assert prom_check(good) == {("a", ()): 1.0}
    for bad in ("# TYPE a gauge\n# HELP a x\na 1\n",  # TYPE before HELP
                "a 1\n",  # no HELP/TYPE
                "# HELP a x\n# TYPE a gauge\na 1 1714564800000\n",  # timestamp
                '# HELP a x\n# TYPE a gauge\na{b="c\\d"} 1\n',  # bad escape
                "# HELP a x\\y\n# TYPE a gauge\na 1\n",  # bad escape in HELP
                "# HELP a x\n# TYPE a gauge\na 1\na 2\n",  # duplicate series
                "# HELP a x\n# TYPE a gauge\na 1",  # no final newline
                '# HELP a x\n# TYPE a gauge\na{b="1"} 1\n# HELP c y\n# TYPE c gauge\nc 1\n'
                'a{b="2"} 1\n'):  # family split
        with pytest.raises(AssertionError):
            prom_check(bad)


# --------------------------------------------------------------------------- STATUS=


def test_status_line(rt_cap: model.NodeCapability, plain_cap: model.NodeCapability) -> None:
    assert publish.status_line(rt_cap, {"managed": 3, "running": 2}) == (
        "realtime capable (sched_rt_runtime_us=-1); 3 managed domains, 2 running")
    assert publish.status_line(rt_cap, publish.DomainCounts(1, 1)) == (
        "realtime capable (sched_rt_runtime_us=-1); 1 managed domain, 1 running")
    assert publish.status_line(plain_cap) == (
        "not realtime capable (sched_rt_runtime_us=950000, realtime starts: refuse)")
    down = replace(rt_cap, libvirt_reachable=False)
    line = publish.status_line(down, {"managed": 0, "running": 0})
    assert line.endswith("; 0 managed domains, 0 running; libvirt unreachable")
    assert "\n" not in line


def test_status_line_before_libvirt_listed_the_definitions(rt_cap: model.NodeCapability) -> None:
    """Only the running domains are known from files: say that the rest are being counted,
    not that there are none."""
    assert publish.status_line(rt_cap, publish.DomainCounts(None, 2)) == (
        "realtime capable (sched_rt_runtime_us=-1); 2 running, still counting the managed "
        "domains")


def test_docs_list_every_metric_numahook_writes() -> None:
    """Every metric family built anywhere in numahook/ (the node's and numahookd's own) is
    named in docs/status-schema.md, read from the source with ast."""
    written = set()
    for path in (Path(numahook.__file__).parent).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("gauge", "counter") and node.args
                    and isinstance(node.args[0], ast.Constant)):
                written.add(node.args[0].value)
    assert {"numahook_build_info", "numahook_redefined_total"} <= written  # the scan works
    text = DOCS.read_text()
    missing = sorted(n for n in written if f"`{n}`" not in text)
    assert missing == [], f"docs/status-schema.md does not list the metrics {missing}"
