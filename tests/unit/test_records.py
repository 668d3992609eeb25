"""numahook.records: a record behaves as the same class under @dataclass would.

Each toy class is built twice from one body, once with ``records.record`` and once with
``dataclasses.dataclass``, and both are driven the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pickle
import pkgutil
import re
import sys
import typing
from collections.abc import Callable
from typing import Any

import pytest

import numahook
from numahook import records

Maker = Callable[[bool], Any]


def point(frozen: bool, dc: bool) -> Any:
    decorate = dataclasses.dataclass if dc else records._record
    field: Any = dataclasses.field if dc else records._field

    class Point:
        """A point."""

        x: int
        y: int = 0
        tags: frozenset[int] = frozenset()
        extra: dict[str, int] = field(default_factory=dict)
        note: str = field(default="n", compare=False)
        secret: str = field(default="s", repr=False)

        @property
        def total(self) -> int:
            return self.x + self.y

    return decorate(frozen=frozen)(Point)


def counted(dc: bool) -> Any:
    decorate = dataclasses.dataclass if dc else records._record

    class Counted:
        a: int
        b: str
        c: float

        def __post_init__(self) -> None:
            object.__setattr__(self, "b", self.b.upper())

    return decorate(frozen=True)(Counted)


@pytest.fixture(params=[True, False], ids=["frozen", "mutable"])
def pair(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    return point(request.param, dc=False), point(request.param, dc=True)


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        # Python 3.9 words a call error without the class name: compare from __init__ on
        return (type(exc).__name__, re.sub(r"^\S*__init__\(\) ", "", str(exc)))


def test_init_repr_and_defaults(pair: tuple[Any, Any]) -> None:
    rec, dc = pair
    for args, kwargs in [((1,), {}), ((1, 2), {"note": "x"}), ((), {"x": 3, "secret": "t"}),
                         ((1, 2, frozenset({3}), {"k": 1}, "m", "q"), {})]:
        r, d = rec(*args, **kwargs), dc(*args, **kwargs)
        assert repr(r) == repr(d)
        assert vars(r) == vars(d) and list(vars(r)) == list(vars(d))
        assert r.total == d.total
    assert rec(1).extra is not rec(1).extra, "default_factory runs per instance"


@pytest.mark.parametrize(("args", "kwargs"), [
    ((), {}), ((1, 2, 3, 4, 5, 6, 7), {}), ((1,), {"zz": 1}), ((1,), {"x": 2}),
])
def test_init_errors_read_the_same(pair: tuple[Any, Any], args: tuple[Any, ...],
                                   kwargs: dict[str, Any]) -> None:
    rec, dc = pair
    assert outcome(lambda: rec(*args, **kwargs)) == outcome(lambda: dc(*args, **kwargs))


def test_missing_several_arguments_reads_the_same() -> None:
    rec, dc = counted(dc=False), counted(dc=True)
    for args in [(), (1,), (1, "b")]:
        assert outcome(lambda: rec(*args)) == outcome(lambda: dc(*args))  # noqa: B023
    assert outcome(lambda: rec(1, "b", 2.0, 4)) == outcome(lambda: dc(1, "b", 2.0, 4))
    assert repr(rec(1, "b", 2.0)) == repr(dc(1, "b", 2.0)), "__post_init__ ran"


def test_eq_and_hash(pair: tuple[Any, Any]) -> None:
    rec, dc = pair
    assert rec(1) == rec(1, note="other"), "compare=False fields do not count"
    assert rec(1) != rec(2) and rec(1) != rec(1, extra={"a": 1})
    assert (rec(1) == dc(1)) is False and (dc(1) == rec(1)) is False
    assert rec(1).__eq__(dc(1)) is NotImplemented
    frozen = dc.__dataclass_params__.frozen
    if frozen:
        assert outcome(lambda: hash(rec(1))) == outcome(lambda: hash(dc(1)))  # dict field
        a, b = counted(dc=False), counted(dc=True)
        assert hash(a(1, "x", 2.5)) == hash(b(1, "x", 2.5))
        assert len({a(1, "x", 2.5), a(1, "X", 2.5), a(2, "x", 2.5)}) == 2
    else:
        assert rec.__hash__ is None and dc.__hash__ is None


def test_frozen_assignment(pair: tuple[Any, Any]) -> None:
    rec, dc = pair
    r, d = rec(1), dc(1)

    def assign(o: Any) -> Any:
        o.x = 5
        return o.x

    def delete(o: Any) -> Any:
        del o.y
        return "y" in vars(o)

    def new(o: Any) -> Any:
        o.other = 1
        return o.other

    for act in (assign, delete, new):
        got, want = outcome(lambda: act(r)), outcome(lambda: act(d))  # noqa: B023
        assert got == want
    if dc.__dataclass_params__.frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            rec(1).x = 2


def test_field_names_and_replace_match_dataclasses(pair: tuple[Any, Any]) -> None:
    rec, dc = pair
    assert records.field_names(rec) == tuple(f.name for f in dataclasses.fields(dc))
    assert records.field_names(rec(1)) == records.field_names(rec)
    r = records.replace(rec(1, note="kept"), y=7)
    assert type(r) is rec and repr(r) == repr(dataclasses.replace(dc(1, note="kept"), y=7))
    with pytest.raises(TypeError):
        records.replace(rec(1), nonsense=1)
    if sys.version_info >= (3, 10):
        assert rec.__match_args__ == dc.__match_args__


def test_copy_and_pickle(pair: tuple[Any, Any]) -> None:
    rec, _ = pair
    globals()["Point"] = rec  # pickle finds classes by qualified name
    rec.__qualname__ = "Point"
    try:
        r = rec(1, 2, frozenset({3}), {"k": 1})
        for clone in (copy.copy(r), copy.deepcopy(r), pickle.loads(pickle.dumps(r))):
            assert clone == r and clone is not r
    finally:
        del globals()["Point"]


def test_class_definition_errors_match_dataclasses() -> None:
    def build(decorate: Any, field: Any, body: str) -> Any:
        ns: dict[str, Any] = {}
        exec(f"class C:\n{body}", {"field": field}, ns)
        return decorate(ns["C"])

    for body in ["    a: int = 0\n    b: int\n",  # non-default after default
                 "    a: list = []\n",  # mutable default
                 "    a: int = field(default=1, default_factory=int)\n"]:
        got = outcome(lambda: build(records._record, records._field, body))  # noqa: B023
        want = outcome(lambda: build(dataclasses.dataclass, dataclasses.field, body))  # noqa: B023
        assert got[0] == want[0] and got[0] != "ok", body


def test_unsupported_features_are_refused() -> None:
    class Base:
        pass

    with pytest.raises(TypeError, match="no base class"):
        records._record(type("Sub", (Base,), {"__annotations__": {"a": "int"}}))
    with pytest.raises(TypeError, match="ClassVar"):
        records._record(type("C", (), {"__annotations__": {"a": "ClassVar[int]"}}))
    with pytest.raises(TypeError):
        records._field(default=1, hash=False)  # type: ignore[call-arg]


def all_records() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(numahook.__path__, "numahook."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # the daemon without libvirt-python: it defines no records
            continue
        found += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and obj.__module__ == info.name
                  and "__record_fields__" in vars(obj)]
    return found


def test_every_numahook_record_replaces_by_its_field_names() -> None:
    """records.replace is how numahook copies a record; it must know every record's fields
    in the order their annotations give them."""
    found = all_records()
    assert len(found) >= 20
    for cls in found:
        assert records.field_names(cls) == tuple(cls.__annotations__), cls
        assert not dataclasses.is_dataclass(cls), cls


def budget(typed: bool) -> Any:
    base: Any = typing.NamedTuple if typed else records.NamedTuple

    class Budget(base):  # type: ignore[misc,valid-type]
        """A budget."""

        path: str
        previous: int
        applied: bool = False

        def label(self) -> str:
            return f"{self.path}:{self.previous}"

    return Budget


def test_named_tuples_match_typing() -> None:
    ours, theirs = budget(typed=False), budget(typed=True)
    a, b = ours("p", 1), theirs("p", 1)
    assert repr(a) == repr(b) and tuple(a) == tuple(b) == ("p", 1, False)
    assert a == b and hash(a) == hash(b) and isinstance(a, tuple)
    assert ours._fields == theirs._fields and ours._field_defaults == theirs._field_defaults
    assert a._replace(applied=True) == b._replace(applied=True)
    assert a._asdict() == b._asdict() and a.label() == b.label() == "p:1"
    assert ours.__doc__ == theirs.__doc__ == "A budget."
    assert ours.__qualname__ == theirs.__qualname__ and ours.__module__ == theirs.__module__
    assert ours.__bases__ == theirs.__bases__ == (tuple,)
    assert list(ours.__annotations__) == list(theirs.__annotations__)
    assert outcome(lambda: ours("p")) == outcome(lambda: theirs("p"))


def test_named_tuple_definition_errors_match_typing() -> None:
    for body in ["    a: int = 0\n    b: int\n", "    a: int\n    _fields = ()\n"]:
        got, want = [outcome(lambda: exec(f"class C(NT):\n{body}", {"NT": nt}))  # noqa: B023
                     for nt in (records.NamedTuple, typing.NamedTuple)]
        assert got == want and got[0] != "ok", body
