"""core/units.py: counts in messages, in the right number."""

from __future__ import annotations

import pytest

from numahook.core.units import counted, plural


@pytest.mark.parametrize(("n", "text"), [(0, "0 sockets"), (1, "1 socket"), (2, "2 sockets")])
def test_counted_puts_the_noun_in_the_right_number(n: int, text: str) -> None:
    assert counted(n, "socket") == text


def test_irregular_forms_are_given() -> None:
    assert counted(2, "pcie-expander-bus", "pcie-expander-buses") == "2 pcie-expander-buses"
    assert [plural(n, "is", "are") for n in (1, 2)] == ["is", "are"]
    assert plural(1, "vCPU") + " 0 " + plural(1, "is", "are") == "vCPU 0 is"
