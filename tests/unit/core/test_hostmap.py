"""The host map's model and drawing (numahook/core/hostmap.py), on status documents built
by hand; tests/golden/test_hostmap.py holds whole maps of fixture hosts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from numahook.core import hostmap
from numahook.core.topology import Topology
from numahook.host import sysfs
from tests.fixtures.hosts import HOSTS, build_sysfs
from tests.support.schemas import validate


@pytest.fixture(scope="module")
def topos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Topology]:
    base = tmp_path_factory.mktemp("hosts")
    return {n: sysfs.read_topology(build_sysfs(base / n, HOSTS[n]))
            for n in ("single", "intel-2s-ht", "quad-nosmt")}


def vcpu(v: int, cpu: str, realtime: bool = False, policy: str | None = "other"
         ) -> dict[str, Any]:
    return {"vcpu": v, "cpus": cpu, "realtime": realtime, "tid": 100 + v, "policy": policy,
            "priority": 0}


def running(name: str, vcpus: list[dict[str, Any]], cpus: str, emulator: str = "",
            claim_cpus: str | None = None, uuid: str = "") -> dict[str, Any]:
    return {"name": name, "uuid": uuid or name, "state": "running", "vcpus": vcpus,
            "cpus": cpus, "emulator": emulator,
            "claim": None if claim_cpus is None else {"cpus": claim_cpus}}


def slots_of(doc: dict[str, Any]) -> dict[int, hostmap.Slot]:
    return hostmap.roles(doc)[0]


def test_each_cpu_gets_one_role_vcpus_first_then_emulator_then_held() -> None:
    doc = {"running": [running("rt", [vcpu(0, "0", True, "fifo"), vcpu(1, "1", True, "other"),
                                      vcpu(2, "2-3")],  # floating: holds neither alone
                               "0-5", emulator="1,4", claim_cpus="0-6")],
           "orphan_claims": [{"uuid": "u", "name": "starting", "phase": "reserved",
                              "cpus": "6-7"}]}
    slots, holders = hostmap.roles(doc)
    assert {c: (s.state, s.key, s.code()) for c, s in sorted(slots.items())} == {
        0: ("vcpu", "A", "A0*"), 1: ("vcpu", "A", "A1!"), 2: ("held", "A", "Ah"),
        3: ("held", "A", "Ah"), 4: ("emulator", "A", "Ae"), 5: ("held", "A", "Ah"),
        6: ("held", "A", "Ah"),  # its own claim's, before the other claim's
        7: ("claimed", "B", "Bc")}
    assert [(h.key, h.name, h.kind, h.note) for h in holders] == [
        ("A", "rt", "running", ""), ("B", "starting", "claim", "reserved")]


def test_a_vcpu_without_a_thread_or_not_real_time_has_no_mark() -> None:
    slots = slots_of({"running": [running("d", [vcpu(0, "0", True, None), vcpu(1, "1")],
                                          "0-1")]})
    assert [slots[0].code(), slots[1].code()] == ["A0", "A1"]
    assert (slots[0].fifo, slots[1].fifo) == (None, False)


def test_keys_run_past_z() -> None:
    doc = {"running": [running(f"d{i:02}", [vcpu(0, str(i))], str(i)) for i in range(28)]}
    _, holders = hostmap.roles(doc)
    assert [h.key for h in holders[24:]] == ["Y", "Z", "AA", "AB"]


def test_domains_are_keyed_by_name_whatever_order_libvirt_lists_them() -> None:
    doc = {"running": [running("zeta", [vcpu(0, "1")], "1"), running("alpha", [vcpu(0, "0")],
                                                                       "0")]}
    assert [(h.key, h.name) for h in hostmap.roles(doc)[1]] == [("A", "alpha"), ("B", "zeta")]


def test_a_next_start_note_goes_with_its_domain() -> None:
    doc = {"running": [running("rt", [vcpu(0, "0")], "0")]}
    (holder,) = hostmap.roles(doc, {"rt": "changes at its next start"})[1]
    assert holder.note == "changes at its next start"


def test_the_isolation_state_has_room_after_the_role() -> None:
    """No isolation state exists yet; the slot draws one after the role when it does."""
    slot = hostmap.Slot(3, "vcpu", "A", 3, True, True, isolation="i")
    assert slot.code() == "A3*i"
    assert hostmap.Slot(4, "free", isolation="i").code() == ".i"


def build(topo: Topology, doc: dict[str, Any], partition: str | None = None,
          offline: dict[int, int | None] | None = None) -> hostmap.HostMap:
    from numahook.core import cpulist

    slots, holders = hostmap.roles(doc)
    return hostmap.build(topo, offline or {}, slots, holders, "/machine",
                         None if partition is None else cpulist.parse(partition))


def test_free_is_the_partition_s_and_the_rest_is_the_host_s(topos: dict[str, Topology]) -> None:
    m = build(topos["single"], {"running": [running("d", [vcpu(0, "1")], "1")]}, "1-2")
    states = {s.cpu: s.state for n in m.nodes for s in n.slots}
    assert states == {0: "host", 1: "vcpu", 2: "free", 3: "host"}
    # an unreadable cpuset: everything no one holds is drawn free
    unknown = build(topos["single"], {"running": []})
    assert {s.state for n in unknown.nodes for s in n.slots} == {"free"}


def test_cores_are_columns_and_threads_rows(topos: dict[str, Topology]) -> None:
    m = build(topos["intel-2s-ht"], {}, "0-79")
    node0 = m.nodes[0]
    assert len(node0.columns) == 20 and {len(c) for c in node0.columns} == {2}
    assert [s.cpu for s in node0.columns[3]] == [3, 43]  # siblings N and N+40
    assert [(s.core, s.thread) for s in node0.columns[3]] == [(3, 0), (3, 1)]


def test_offline_cpus_stand_in_their_node_in_order(topos: dict[str, Topology]) -> None:
    m = build(topos["quad-nosmt"], {}, "0-31", offline={40: 0, 41: None})
    assert [col[0].cpu for col in m.nodes[0].columns][-1] == 40
    assert m.nodes[0].columns[-1][0].code() == "x"
    assert m.offline_elsewhere == frozenset({41})
    assert "offline, on no node sysfs names: 41" in hostmap.text(m)


def test_bands_are_even_and_fit_the_width(topos: dict[str, Topology]) -> None:
    m = build(topos["intel-2s-ht"], {}, "0-79")
    lines = hostmap.text(m, width=60)
    assert max(map(len, lines)) <= 60
    cpu_rows = [line for line in lines if line.startswith("  cpu")]
    # 20 cores do not fit in 60 columns of 3: two bands of 10, not 17 and 3
    assert [len(r.split()) - 1 for r in cpu_rows[:4]] == [10, 10, 10, 10]


def test_colour_only_when_asked_and_the_columns_stay_aligned(
        topos: dict[str, Topology]) -> None:
    doc = {"running": [running("rt", [vcpu(0, "0", True, "fifo"), vcpu(1, "1", True, "other")],
                               "0-1")]}
    m = build(topos["single"], doc, "0-3")
    plain = hostmap.text(m)
    assert not any("\033[" in line for line in plain)
    coloured = hostmap.text(m, colour=True)
    assert any("\033[36;1m" in line for line in coloured)  # A's colour, bold: FIFO
    assert any("\033[36;7m" in line for line in coloured)  # reverse: real-time, no FIFO
    assert [re.sub("\033\\[[0-9;]*m", "", line) for line in coloured] == plain


def test_dedicated_per_node_counts_the_partition_only(topos: dict[str, Topology]) -> None:
    doc = {"running": [running("rt", [vcpu(0, "2"), vcpu(1, "21")], "2,21,60")]}
    m = build(topos["intel-2s-ht"], doc, "2-19,21,42-59")
    (n0, mine0, free0, held0), (n1, mine1, free1, held1) = hostmap.dedicated(m)
    assert (n0, len(mine0), len(free0), held0) == (0, 36, 35, {"rt": frozenset({2})})
    # CPU 60 is held but outside the cpuset: no loss to a new dedicated domain
    assert (n1, mine1, free1, held1) == (1, frozenset({21}), frozenset(),
                                         {"rt": frozenset({21})})


def test_the_json_is_the_schema_s(topos: dict[str, Topology], tmp_path: Path) -> None:
    doc = {"running": [running("rt", [vcpu(0, "0", True, "fifo")], "0-1", "1")],
           "orphan_claims": [{"uuid": "u", "name": "s", "phase": "claimed", "cpus": "2"}]}
    out = hostmap.to_json(build(topos["single"], doc, "0-2", offline={}))
    validate("status", {"schema_version": 1, "running": [], "inactive": [],
                        "orphan_claims": [], "host": out})
    cpus = {c["cpu"]: c for c in out["nodes"][0]["cpus"]}
    assert cpus[0]["state"] == "vcpu" and cpus[0]["domain"] == "rt" and cpus[0]["fifo"] is True
    assert (cpus[1]["state"], cpus[2]["state"], cpus[3]["state"]) == ("emulator", "claimed",
                                                                      "host")
    assert out["nodes"][0]["free"] == "" and out["partition_cpus"] == "0-2"


def test_the_shared_set_is_nobody_s_whoever_floats_there(topos: dict[str, Topology]) -> None:
    """[cpus] shared: a share emulator and a floating vCPU pin to it (here one CPU, so the
    vCPU's pin is a single CPU); neither holds it, and it is not free for a dedicated one."""
    from numahook.core import cpulist

    doc = {"running": [running("mixed", [vcpu(0, "1", True, "fifo"), vcpu(1, "0")], "0-1",
                               emulator="0")]}
    slots, holders = hostmap.roles(doc)
    m = hostmap.build(topos["single"], {}, slots, holders, "/machine", cpulist.parse("0-3"),
                      frozenset({0}))
    states = {s.cpu: s.code() for n in m.nodes for s in n.slots}
    assert states == {0: "~", 1: "A0*", 2: ".", 3: "."}
    assert hostmap.dedicated(m) == [(0, frozenset({1, 2, 3}), frozenset({2, 3}),
                                     {"mixed": frozenset({1})})]
    assert "~ shared ([cpus] shared)" in " ".join(hostmap.text(m))
    assert hostmap.to_json(m)["shared"] == "0"
    # without a shared set the key does not mention one
    assert "~" not in " ".join(hostmap.text(build(topos["single"], doc, "0-3")))
