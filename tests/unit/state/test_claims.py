"""Claim records: a malformed one is refused in words, never with Python's reprs."""

from __future__ import annotations

from typing import Any

import pytest

from numahook.errors import InputError
from numahook.state.claims import Claim

#: a key removed from the record
MISSING = object()
GOOD = Claim(uuid="c7a5fdbd-cdaf-9455-926a-d65c16db1809", name="rt1", cpus=frozenset({2}),
             hugepages={(0, 2048): 4}).to_json()


@pytest.mark.parametrize(("change", "why"), [
    ({"phase": MISSING}, "(it lacks phase)"),
    ({"cpus": [[1]]}, "([1] is not an integer)"),
    ({"name": 7}, "(7 is not a string)"),
    ({"hugepages": {"0-2048": 4}}, '("0-2048" is not a hugepage pool (NODE:SIZE_KIB))'),
    ({"hugepages": [1]}, "(a part of it is not a JSON object)"),
    ({"realtime": {"vcpus": [], "priority": 1, "emulator": False}},
     "(its realtime vCPUs or priority are out of range)"),
    ({"version": "2"}, '(version "2" is not 1)'),
])
def test_a_malformed_record_says_what_is_wrong(change: dict[str, Any], why: str) -> None:
    """It said e.g. (ValueError("realtime {'vcpus': [], 'priority': 1, 'emulator': False}"))."""
    data = {k: v for k, v in {**GOOD, **change}.items() if v is not MISSING}
    with pytest.raises(InputError) as info:
        Claim.from_json(data)
    assert str(info.value) == f"the claim record is malformed {why}"
