"""A dedicated domain on hugepages without passthrough (issue 25, item 2), under the
real libvirtd: the hook reserves its pages on the node of its CPUs, binds its memory
there, and gives the pages back when it is destroyed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from numahook.core import domainxml
from numahook.xml import safe
from tests.e2e.helpers import HOLD, claim_files, hugepages_2m, metadata, render_here

FREE = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages")


def test_pages_reserved_on_its_node_memory_bound_there_and_given_back(domains: Any) -> None:
    xml = render_here(domains.probe_xml("hpnode", vcpus=1, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata(passthrough=False)))
    assert "<memory mode='strict' nodeset='0'/>" in xml
    before, free = hugepages_2m(), int(FREE.read_text())
    dom = domains.define(xml)
    domains.start(dom)  # before the fix QEMU failed: nothing was reserved for it
    claim = json.loads(next(p for p in claim_files() if dom.name() in p.read_text()).read_text())
    assert claim["tunables"]["hugepages"]["need"] == {"0:2048": 64}
    added = claim["tunables"]["hugepages"]["added"].get("0:2048", 0)
    assert added == max(0, 64 - free)  # only the deficit: pages already free count
    assert hugepages_2m() == before + added
    live = domainxml.read(safe.parse(dom.XMLDesc(0)))
    assert live.numatune_memory == ("strict", frozenset({0}))
    assert live.cells == ()
    domains.stop(dom)  # libvirt runs the stopped and release hooks before destroy returns
    assert hugepages_2m() == before
    assert not [p for p in claim_files() if dom.name() in p.read_text()]
