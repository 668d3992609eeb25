"""The metrics per domain, per node and the refusals (issue 31, item 4), on fixture trees:
what numahookd exports, that promtool accepts it, and that an undefined domain's series go."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from numahook.config import Config
from numahook.daemon import domainmetrics
from numahook.daemon.publisher import daemon_metrics
from numahook.daemon.reconcile import Stats
from numahook.host import procfs
from numahook.node import metrics, probe
from numahook.ops import refusals, status
from numahook.records import replace
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import host_roots
from tests.golden.cases import DATA
from tests.support import claims
from tests.support.nodes import MOUNTS
from tests.support.promtool import lint

#: housekeeping CPUs 0, 1, 40 and 41 left out of the machine partition
CPUSETS = {"": "0-79", "machine": "2-39,42-79"}


def host(tmp_path: Path, cpusets: Mapping[str, str] = CPUSETS) -> Config:
    """The two-node intel-2s-ht-rt fixture (node 0: CPUs 0-19,40-59; node 1: 20-39,60-79)."""
    roots = host_roots(tmp_path / "host", "intel-2s-ht-rt", 1, cpusets)
    (roots["proc"] / "mounts").write_text(MOUNTS)
    (tmp_path / "run").mkdir(exist_ok=True)
    return Config(sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), libvirt_run=str(tmp_path / "run"),
                  state_dir=str(tmp_path / "state"))


def vcpu(v: int, cpu: int, realtime: bool, policy: str | None) -> dict[str, Any]:
    return {"vcpu": v, "cpus": str(cpu), "realtime": realtime, "tid": 100 + v if policy else None,
            "policy": policy, "priority": 1 if policy == "fifo" else 0}


def claim(name: str, cpus: str, need: dict[str, int]) -> dict[str, Any]:
    return {"phase": "running", "cpus": cpus, "hugepages_added": need, "hugepages_need": need,
            "rt_budget_files": 0, "name": name}


def document() -> dict[str, Any]:
    """status.collect's shape: a real-time domain whose vCPU 3 lost FIFO (vCPU 1 is not
    real-time, vCPU 4 not plugged), a plain running domain, one shut off and an orphan."""
    rt = {"name": "rt1", "uuid": "u1", "state": "running", "cpus": "2-5",
          "vcpus": [vcpu(0, 2, True, "fifo"), vcpu(1, 3, False, "other"),
                    vcpu(2, 4, True, "fifo"), vcpu(3, 5, True, "other"),
                    vcpu(4, 5, True, None)],
          "claim": claim("rt1", "2-6", {"node0:1048576kB": 4})}
    plain = {"name": "plain", "uuid": "u2", "state": "paused", "cpus": "20-21",
             "vcpus": [vcpu(0, 20, False, "other")], "claim": None}
    return {"running": [rt, plain],
            "inactive": [{"name": "off", "uuid": "u3", "state": "shut off"}],
            "orphan_claims": [{"uuid": "u4", **claim("crashed", "60", {"node1:2048kB": 512})}]}


def samples(families: list[metrics.Metric]) -> dict[str, float]:
    """``name{k="v",...}`` -> value, labels sorted, as a reader of the exposition sees them."""
    out = {}
    for m in families:
        for labels, value in m.samples:
            body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out[f"{m.name}{{{body}}}" if body else m.name] = value
    return out


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return host(tmp_path)


def test_each_fact_of_issue_31_is_one_series_per_domain_or_node(cfg: Config) -> None:
    for stage, check in (("prepare", "hugepages"), ("prepare", "hugepages"),
                         ("render", "dedicated-cpus")):
        assert refusals.count(cfg.state_dir, stage, check)
    cap = probe.probe(cfg)
    got = samples(domainmetrics.domain_metrics(cfg, cap, document(), True,
                                               {"off", "long-gone"}))
    assert got == {
        "numahook_managed_domains_defined": 3,
        "numahook_managed_domains_unrenderable": 1,  # a refusal of an undefined one is not
        'numahook_domain_running{domain="plain"}': 1,
        'numahook_domain_running{domain="rt1"}': 1,
        'numahook_domain_running{domain="off"}': 0,
        'numahook_domain_realtime_vcpus{domain="plain"}': 0,
        'numahook_domain_realtime_vcpus{domain="rt1"}': 3,
        'numahook_domain_realtime_vcpus_fifo{domain="plain"}': 0,
        'numahook_domain_realtime_vcpus_fifo{domain="rt1"}': 2,
        'numahook_domain_pinned_cpus{domain="crashed",node="1"}': 1,
        'numahook_domain_pinned_cpus{domain="plain",node="1"}': 2,
        'numahook_domain_pinned_cpus{domain="rt1",node="0"}': 5,
        'numahook_domain_hugepages{domain="crashed",node="1",size_bytes="2097152"}': 512,
        'numahook_domain_hugepages{domain="rt1",node="0",size_bytes="1073741824"}': 4,
        'numahook_dedicated_cpus{node="0"}': 36,
        'numahook_dedicated_cpus{node="1"}': 40,
        'numahook_dedicated_cpus_free{node="0"}': 31,
        'numahook_dedicated_cpus_free{node="1"}': 37,
        'numahook_refusals_total{check="dedicated-cpus",stage="render"}': 1,
        'numahook_refusals_total{check="hugepages",stage="prepare"}': 2,
    }
    assert {m.name for m in domainmetrics.domain_metrics(
        cfg, cap, document(), True)} == set(domainmetrics.NAMES)


def test_promtool_accepts_the_whole_file(cfg: Config) -> None:
    refusals.count(cfg.state_dir, "prepare", "stale-definition")
    cap = probe.probe(cfg)
    doc = document()
    doc["running"][0]["name"] = 'quote"back\\slash\nnewline'  # libvirt allows such names
    own = daemon_metrics(2, Stats(), 0) + domainmetrics.domain_metrics(cfg, cap, doc, True)
    text = metrics.metrics_text(cap, own)
    proc = lint(text)
    assert proc.returncode == 0, f"promtool: {proc.stdout}{proc.stderr}\n{text}"
    assert proc.stdout == proc.stderr == ""
    assert 'numahook_domain_running{domain="quote\\"back\\\\slash\\nnewline"} 1' in text


def test_an_undefined_domains_series_are_gone(cfg: Config) -> None:
    cap = probe.probe(cfg)
    doc = document()
    before = metrics.render_metrics(domainmetrics.domain_metrics(cfg, cap, doc, True))
    assert before.count('domain="off"') == 1 and before.count('domain="rt1"') == 5
    doc["inactive"] = []  # undefined
    doc["running"] = doc["running"][1:]  # rt1 destroyed and undefined
    after = metrics.render_metrics(domainmetrics.domain_metrics(cfg, cap, doc, True))
    assert 'domain="off"' not in after and 'domain="rt1"' not in after
    assert "numahook_managed_domains_defined 1\n" in after
    assert 'numahook_dedicated_cpus_free{node="0"} 36\n' in after  # rt1's CPUs are free


def test_before_libvirt_listed_the_definitions_no_count_is_made_up(cfg: Config) -> None:
    got = samples(domainmetrics.domain_metrics(cfg, probe.probe(cfg), document(), False,
                                               {"off"}))
    assert "numahook_managed_domains_defined" not in got
    assert "numahook_managed_domains_unrenderable" not in got
    assert got['numahook_domain_running{domain="rt1"}'] == 1


def test_an_unreadable_partition_leaves_out_only_the_dedicated_cpus(tmp_path: Path) -> None:
    cfg = host(tmp_path)
    cap = probe.probe(cfg)
    cfg = replace(cfg, cgroup_root=str(tmp_path / "no-cgroups"))
    names = {m.name for m in domainmetrics.domain_metrics(cfg, cap, document(), True)}
    assert "numahook_dedicated_cpus" not in names
    assert "numahook_domain_pinned_cpus" in names


def test_from_status_collect_on_a_running_real_time_domain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole way numahookd takes: the status file libvirt wrote, our claim, the vCPU
    threads' policies (vCPU 3's FIFO was lost), then status.collect and the metrics."""
    cfg = host(tmp_path, {"": "0-79", "machine": "2-19,42-59"})
    xml = (DATA / "intelrt-realtime-out.xml").read_text()
    tids = "".join(f"<vcpu id='{v}' pid='{4243 + v}'/>" for v in range(4))
    (Path(cfg.libvirt_run) / "fedora-realtime.xml").write_text(
        f"<domstatus state='running' reason='booted' pid='4242'><vcpus>{tids}</vcpus>"
        f"{xml}</domstatus>")
    state = StateDir(cfg.state_dir)
    state.ensure()
    state.save(claims.make(uuid="5e1b1a5e-0000-4000-8000-000000000002", name="fedora-realtime",
                     cpus=frozenset({2, 3, 4, 42, 43}), need={(0, 1048576): 4},
                     phase="running"))
    policies = {4243: ("fifo", 1), 4244: ("other", 0), 4245: ("fifo", 1), 4246: ("other", 0)}
    monkeypatch.setattr(procfs, "sched_of", lambda tid, *_: policies[tid])
    doc = status.collect(cfg)
    got = samples(domainmetrics.domain_metrics(cfg, probe.probe(cfg), doc, False))
    assert {k: v for k, v in got.items() if "fedora-realtime" in k} == {
        'numahook_domain_running{domain="fedora-realtime"}': 1,
        'numahook_domain_realtime_vcpus{domain="fedora-realtime"}': 3,
        'numahook_domain_realtime_vcpus_fifo{domain="fedora-realtime"}': 2,
        'numahook_domain_pinned_cpus{domain="fedora-realtime",node="0"}': 5,
        'numahook_domain_hugepages{domain="fedora-realtime",node="0",'
        'size_bytes="1073741824"}': 4,
    }
    assert got['numahook_dedicated_cpus_free{node="0"}'] == 36 - 5
    assert got['numahook_dedicated_cpus{node="1"}'] == 0
