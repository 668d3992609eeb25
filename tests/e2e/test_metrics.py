"""numahookd's metrics per domain on a real libvirtd and QEMU (issue 31, item 4): a managed
domain running shows its series, stopping it leaves one, undefining it removes them all;
a definition the host cannot hold is counted, and its refused start too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.daemonharness import Daemon, running
from tests.e2e.helpers import HOLD, metadata, render_here, wait_until

_SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


@pytest.fixture
def numahookd(lab: Any, tmp_path: Path) -> Iterator[Daemon]:
    with running(tmp_path, "[realtime]\nthrottled = delegate\n") as d:
        yield d


def exposition(d: Daemon) -> dict[str, float]:
    """``name{labels}`` -> value, as numahookd last wrote them (empty before the first)."""
    prom = d.prom / "numahook.prom"
    text = prom.read_text() if prom.exists() else ""
    return {m.group(1) + (m.group(2) or ""): float(m.group(3))
            for m in map(_SAMPLE.match, text.splitlines()) if m}


def of(d: Daemon, name: str) -> dict[str, float]:
    return {k: v for k, v in exposition(d).items() if f'domain="{name}"' in k}


def dedicated(domains: Any, suffix: str, vcpus: int, mask: str | None = None,
              rendered: bool = True) -> Any:
    xml = domains.probe_xml(suffix, vcpus=vcpus, memory_mib=128, hugepage_kib=2048,
                            cmdline=HOLD, extra=metadata(mask=mask))
    return domains.define(render_here(xml) if rendered else xml)


def test_a_domains_series_follow_it_from_start_to_undefine(numahookd: Daemon,
                                                           domains: Any) -> None:
    from tests.support.promtool import lint

    dom = dedicated(domains, "metrics", 2, mask="0")
    name = dom.name()
    domains.start(dom)
    up = {f'numahook_domain_running{{domain="{name}"}}': 1,
          f'numahook_domain_realtime_vcpus{{domain="{name}"}}': 1,
          f'numahook_domain_realtime_vcpus_fifo{{domain="{name}"}}': 1,
          f'numahook_domain_pinned_cpus{{domain="{name}",node="0"}}': 2,
          f'numahook_domain_hugepages{{domain="{name}",node="0",size_bytes="2097152"}}': 64}
    wait_until(lambda: of(numahookd, name) == up, timeout=30,
               what=f"{name}'s series while it runs (last: {of(numahookd, name)})")
    assert exposition(numahookd)['numahook_dedicated_cpus_free{node="0"}'] == 0
    text = (numahookd.prom / "numahook.prom").read_text()
    proc = lint(text)
    assert proc.returncode == 0, f"promtool: {proc.stdout}{proc.stderr}\n{text}"

    domains.stop(dom)
    wait_until(lambda: of(numahookd, name) == {f'numahook_domain_running{{domain="{name}"}}': 0},
               timeout=30, what=f"{name} shut off: defined, holding nothing")
    assert exposition(numahookd)['numahook_dedicated_cpus_free{node="0"}'] == 2
    dom.undefine()
    wait_until(lambda: of(numahookd, name) == {}, timeout=30,
               what=f"{name}'s series to go once it is undefined")


def _refused_behind(numahookd: Daemon, domains: Any) -> Any:
    """A running domain on both CPUs, then a second one defined: it cannot be rendered
    (numahookd says so), and its start is refused at prepare."""
    import libvirt

    domains.start(dedicated(domains, "holder", 2))
    second = dedicated(domains, "refused", 1, rendered=False)  # as `virsh define` would
    wait_until(lambda: exposition(numahookd).get("numahook_managed_domains_unrenderable") == 1,
               timeout=30, what="numahookd to count the definition it cannot render")
    with pytest.raises(libvirt.libvirtError, match="numahook: "):
        second.create()
    return second


def test_a_definition_the_host_cannot_hold_is_counted(numahookd: Daemon,
                                                      domains: Any) -> None:
    second = _refused_behind(numahookd, domains)
    assert of(numahookd, second.name()) == {
        f'numahook_domain_running{{domain="{second.name()}"}}': 0}


def test_refusals_are_counted_by_stage_and_check(numahookd: Daemon, domains: Any) -> None:
    key = 'numahook_refusals_total{{check="dedicated-cpus",stage="{}"}}'
    before = {s: exposition(numahookd).get(key.format(s), 0) for s in ("prepare", "render")}
    _refused_behind(numahookd, domains)
    wait_until(lambda: exposition(numahookd).get(key.format("prepare"), 0)
               == before["prepare"] + 1, timeout=30, what="the refused start to be counted")
    assert exposition(numahookd).get(key.format("render"), 0) == before["render"] + 1
