"""Claim records: a malformed one is refused in words, never with Python's reprs."""

from __future__ import annotations

from typing import Any

import pytest

from numahook.errors import InputError
from numahook.state.claims import Claim
from tests.support import claims

#: a key removed from the record
MISSING = object()
GOOD = claims.make(uuid="c7a5fdbd-cdaf-9455-926a-d65c16db1809", name="rt1", cpus=frozenset({2}),
             hugepages_added={(0, 2048): 4}).to_json()


@pytest.mark.parametrize(("change", "why"), [
    ({"phase": MISSING}, "(it lacks phase)"),
    ({"cpus": [[1]]}, "([1] is not an integer)"),
    ({"name": 7}, "(7 is not a string)"),
    ({"tunables": {"hugepages": {"need": {}, "added": {"0-2048": 4}, "pending": {}}}},
     '("0-2048" is not a hugepage pool (NODE:SIZE_KIB))'),
    ({"tunables": {"hugepages": [1]}}, "(its hugepages entry is not a JSON object)"),
    ({"tunables": [1]}, "(its tunables are not a JSON object)"),
    ({"tunables": {"realtime": {"intent": {"vcpus": [], "priority": 1, "emulator": False},
                                "budget": []}}},
     "(its realtime vCPUs or priority are out of range)"),
    ({"tunables": {"cstates": {}}},
     "(it journals 'cstates', a tunable this numahook does not know (written by a newer "
     "version?))"),
    ({"version": "2"}, '(version "2" is not 2 or 1)'),
    ({"version": 1, "hugepages": {"0-2048": 4}, "hugepages_pending": {}, "rt_budget": []},
     '("0-2048" is not a hugepage pool (NODE:SIZE_KIB))'),
])
def test_a_malformed_record_says_what_is_wrong(change: dict[str, Any], why: str) -> None:
    """It said e.g. (ValueError("realtime {'vcpus': [], 'priority': 1, 'emulator': False}"))."""
    data = {k: v for k, v in {**GOOD, **change}.items() if v is not MISSING}
    with pytest.raises(InputError) as info:
        Claim.from_json(data)
    assert str(info.value) == f"the claim record is malformed {why}"


#: a claim as numahook 0.2 (claim version 1) wrote it, before claims journalled per
#: tunable: a domain holding pages it added, a write in flight, RT budget and its intent
V1 = {"boot": "", "cpus": [2, 3], "created": 1700000000.5, "hugepages": {"0:2048": 64},
      "hugepages_pending": {"1:2048": [10, 8]}, "name": "rt-vm", "need": {"0:2048": 64},
      "phase": "running", "qemu_pid": 1234,
      "realtime": {"emulator": True, "priority": 10, "vcpus": [0, 1]},
      "rt_budget": [["/sys/fs/cgroup/cpu/machine/cpu.rt_runtime_us", 0, 950000, True]],
      "uuid": "c7a5fdbd-cdaf-9455-926a-d65c16db1809", "verified_pid": 1234, "version": 1}


def test_a_version_1_claim_loads_into_the_tunables_entries() -> None:
    """An upgrade under running domains: what 0.2 journalled is each tunable's entry now."""
    claim = Claim.from_json(V1)
    assert claims.added(claim) == {(0, 2048): 64}
    assert claims.needed(claim) == {(0, 2048): 64}
    assert claims.pending(claim) == {(1, 2048): (10, 8)}
    assert claims.budget(claim) == (("/sys/fs/cgroup/cpu/machine/cpu.rt_runtime_us", 0,
                                      950000, True),)
    intent = claims.intent(claim)
    assert intent is not None and (intent.vcpus, intent.priority, intent.emulator) == (
        (0, 1), 10, True)
    assert (claim.phase, claim.qemu_pid, claim.verified_pid) == ("running", 1234, 1234)
    again = claim.to_json()
    assert again["version"] == 2 and Claim.from_json(again) == claim


def test_a_version_1_claim_without_pages_or_real_time_has_no_entries() -> None:
    plain = {**V1, "hugepages": {}, "hugepages_pending": {}, "need": {}, "rt_budget": [],
             "realtime": None}
    assert Claim.from_json(plain).tunables == {}
    del plain["realtime"], plain["need"]  # numahook 0.1.0 wrote neither
    assert Claim.from_json(plain).tunables == {}
