"""The kernel cpulist syntax and KubeVirt's realtime mask grammar (numahook.core.cpulist)."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numahook.core import cpulist
from numahook.errors import InputError
from tests.fixtures import hosts

cpu_ids = st.integers(min_value=0, max_value=cpulist.MAX_CPU)
cpu_sets = st.frozensets(cpu_ids, max_size=200)


# --------------------------------------------------------------------------- parse/format


@settings(max_examples=300, deadline=None)
@given(cpu_sets)
def test_round_trip_set_format_parse(cpus: frozenset[int]) -> None:
    assert cpulist.parse(cpulist.format(cpus)) == cpus


@settings(max_examples=300, deadline=None)
@given(cpu_sets)
def test_format_matches_the_kernel_style_formatter_of_the_fixtures(cpus: frozenset[int]) -> None:
    # tests.fixtures.hosts formats cpulists independently, the way the kernel's %*pbl does
    assert cpulist.format(cpus) == hosts.cpulist(cpus)


@settings(max_examples=300, deadline=None)
@given(cpu_sets)
def test_format_is_canonical_and_shortest(cpus: frozenset[int]) -> None:
    text = cpulist.format(cpus)
    assert cpulist.format(cpulist.parse(text)) == text
    bounds: list[tuple[int, int]] = []
    for item in filter(None, text.split(",")):
        lo, _, hi = item.partition("-")
        bounds.append((int(lo), int(hi or lo)))
    for (lo1, hi1), (lo2, hi2) in zip(bounds, bounds[1:]):
        assert lo1 <= hi1 < lo2 - 1 < hi2, f"{text!r} has mergeable or unsorted items"
    for lo, hi in bounds:
        assert lo <= hi


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(cpu_ids, st.integers(0, 40)), max_size=30), st.randoms())
def test_parse_accepts_any_order_overlaps_and_spacing(items: list[tuple[int, int]],
                                                       rnd: object) -> None:
    expected: set[int] = set()
    parts = []
    for lo, width in items:
        hi = min(lo + width, cpulist.MAX_CPU)
        expected.update(range(lo, hi + 1))
        parts.append(f" {lo}-{hi} " if hi != lo else f"{lo} ")
    rnd.shuffle(parts)  # type: ignore[attr-defined]
    assert cpulist.parse(",".join(parts)) == frozenset(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("0-3,8,10-11\n", {0, 1, 2, 3, 8, 10, 11}),  # sysfs files end with a newline
    ("0\n", {0}),
    ("\n", set()),  # an empty cpulist file (e.g. cpu/offline on a healthy host)
    ("", set()),
    ("   ", set()),
    ("0-1", {0, 1}),  # the kernel prints two in a row as a range
    ("5-5", {5}),
    ("3,1,2", {1, 2, 3}),
    ("0-3,2-5", set(range(6))),
    (" 1 , 2 ", {1, 2}),
    ("8191", {8191}),
])
def test_kernel_syntax(text: str, expected: set[int]) -> None:
    assert cpulist.parse(text) == frozenset(expected)


@pytest.mark.parametrize(("cpus", "text"), [
    (set(), ""),
    ({0}, "0"),
    ({0, 1}, "0-1"),
    ({0, 1, 2, 3, 8, 10, 11}, "0-3,8,10-11"),
    ({40, 0}, "0,40"),
    (range(0, 80, 2), ",".join(str(i) for i in range(0, 80, 2))),
])
def test_format_examples(cpus: set[int], text: str) -> None:
    assert cpulist.format(cpus) == text


@pytest.mark.parametrize(("text", "words"), [
    ("a", ["'a'", "not a number or a range"]),
    ("1-", ["'1-'", "not a number or a range"]),
    ("-1", ["'-1'", "not a number or a range"]),
    ("1,,2", ["''", "not a number"]),
    ("0x3", ["'0x3'"]),
    ("1-2-3", ["'1-2-3'"]),
    ("5-3", ["descending", "3-5"]),
    ("8192", ["beyond the largest allowed id 8191"]),
    ("0-8192", ["beyond the largest allowed id 8191"]),
    ("0-99999", ["beyond the largest allowed id"]),
    ("0-999999999", ["'0-999999999'"]),
    ("ff", ["'ff'"]),  # a hex mask is not a cpulist
])
def test_garbage_is_one_line_input_error(text: str, words: list[str]) -> None:
    with pytest.raises(InputError) as exc:
        cpulist.parse(text, "cpuset.cpus")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("cpuset.cpus ")
    for w in words:
        assert w in msg


def test_what_names_the_source_in_the_message() -> None:
    with pytest.raises(InputError, match=r"^/sys/devices/system/cpu/online 'x' "):
        cpulist.parse("x", "/sys/devices/system/cpu/online")


def test_huge_range_is_refused_without_building_a_set() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            cpulist.parse("0-999999999")
        with pytest.raises(InputError):
            cpulist.parse("0-99999")
        with pytest.raises(InputError):
            cpulist.parse_mask("0-999999999", 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a set of 10**9 ints would be tens of GB; even 10**5 would be several MB
    assert peak < 1_000_000


def test_overlong_text_is_refused_before_parsing() -> None:
    text = "1," * (cpulist.MAX_TEXT // 2 + 1)
    assert len(text) > cpulist.MAX_TEXT
    with pytest.raises(InputError, match="characters long, more than 65536"):
        cpulist.parse(text)


def test_largest_legal_list_parses() -> None:
    everything = frozenset(range(cpulist.MAX_CPU + 1))
    assert cpulist.parse(f"0-{cpulist.MAX_CPU}") == everything
    singles = ",".join(str(i) for i in range(cpulist.MAX_CPU + 1))
    assert len(singles) <= cpulist.MAX_TEXT  # every CPU written out one by one still fits
    assert cpulist.parse(singles) == everything


# --------------------------------------------------------------------------- realtime mask


@pytest.mark.parametrize(("mask", "count", "expected"), [
    ("0", 4, {0}),  # the reference: only the first vCPU is real-time
    ("0-3", 4, {0, 1, 2, 3}),
    ("0-3,^1", 4, {0, 2, 3}),  # the reference: cores 0, 2 and 3
    ("^1", 4, {0, 2, 3}),  # only exclusions: all but those
    ("^0-1", 6, {2, 3, 4, 5}),
    ("^0,^3", 4, {1, 2}),
    ("1,^1", 4, set()),  # exclusions win over inclusions ...
    ("^1,1", 4, set()),  # ... whatever the order
    ("0-3,^1-2,2", 4, {0, 3}),
    ("1,3", 4, {1, 3}),
    (" 0 , ^ 1 , 2 ", 4, {0, 2}),
    ("3", 4, {3}),
])
def test_mask_grammar(mask: str, count: int, expected: set[int]) -> None:
    assert cpulist.parse_mask(mask, count) == frozenset(expected)


@pytest.mark.parametrize("mask", [None, "", "   "])
def test_empty_mask_means_every_vcpu(mask: str | None) -> None:
    assert cpulist.parse_mask(mask, 6) == frozenset(range(6))


@pytest.mark.parametrize(("mask", "bad"), [("4", 4), ("0-4", 4), ("^7", 7), ("0,2-9", 9)])
def test_mask_id_out_of_range_is_an_error_not_dropped(mask: str, bad: int) -> None:
    with pytest.raises(InputError) as exc:
        cpulist.parse_mask(mask, 4)
    msg = str(exc.value)
    assert f"names vCPU {bad}" in msg
    assert "only vCPUs 0-3" in msg
    assert "fix the mask" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("mask", ["^", "a", "1-", "2-1", "^^1", "0;1", "1,,2"])
def test_mask_syntax_errors(mask: str) -> None:
    with pytest.raises(InputError, match="realtime mask item") as exc:
        cpulist.parse_mask(mask, 4)
    assert "\n" not in str(exc.value)


def _model_mask(items: list[tuple[bool, int, int]], count: int) -> set[int]:
    include: set[int] = set()
    exclude: set[int] = set()
    for negated, lo, hi in items:
        (exclude if negated else include).update(range(lo, hi + 1))
    base = include if any(not n for n, _, _ in items) else set(range(count))
    return base - exclude


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64).flatmap(lambda count: st.tuples(
    st.just(count),
    st.lists(st.tuples(st.booleans(), st.integers(0, count - 1), st.integers(0, 8)),
             min_size=1, max_size=8))))
def test_mask_matches_a_reference_model(case: tuple[int, list[tuple[bool, int, int]]]) -> None:
    count, raw = case
    items = [(neg, lo, min(lo + w, count - 1)) for neg, lo, w in raw]
    text = ",".join(("^" if neg else "") + (f"{lo}-{hi}" if hi > lo else str(lo))
                    for neg, lo, hi in items)
    got = cpulist.parse_mask(text, count)
    assert got == frozenset(_model_mask(items, count))
    assert got <= frozenset(range(count))
