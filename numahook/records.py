"""``@record``: the part of ``@dataclass`` numahook uses, without its import-time cost.

The hook's modules define many data classes. ``import dataclasses`` (inspect, ast, dis,
tokenize) and one ``exec`` per generated method cost a managed ``prepare`` several times
its own work (bench/README.md, "What it found"). ``record`` builds the same methods from
closures instead:

* ``__init__`` taking the fields positionally or by keyword, defaults and
  ``field(default_factory=...)``, then ``__post_init__``;
* ``__repr__``, ``__eq__`` (same class only) and ``__hash__`` (frozen) over the fields,
  honouring ``field(repr=False)`` and ``field(compare=False)``; unhashable when not frozen;
* ``frozen=True``: assignment raises ``dataclasses.FrozenInstanceError``.

``field_names`` and ``replace`` stand in for ``dataclasses.fields`` and ``replace``; the
other functions of ``dataclasses`` do not know records. Not supported, and refused at
class creation: base classes, ClassVar/InitVar, and ``field`` options other than
default, default_factory, repr and compare. ``__init__`` takes ``(*args, **kwargs)``.

``NamedTuple`` is ``typing.NamedTuple`` without importing typing (only the field
annotations stay strings, where typing makes them ForwardRefs).
"""

from __future__ import annotations

import operator
import reprlib
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    _T = TypeVar("_T")

MISSING = object()

_SPECS = "__record_fields__"
_FROZEN = "__record_frozen__"


class _Field:
    __slots__ = ("compare", "default", "factory", "name", "repr")

    def __init__(self, default: object, factory: object, repr: bool, compare: bool) -> None:
        self.name = ""
        self.default, self.factory, self.repr, self.compare = default, factory, repr, compare


def _field(*, default: object = MISSING, default_factory: object = MISSING, repr: bool = True,
           compare: bool = True) -> object:
    """As ``dataclasses.field``."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory, repr, compare)


def field_names(cls_or_record: object) -> tuple[str, ...]:
    """Field names in definition order (``dataclasses.fields`` without importing it)."""
    return tuple(f.name for f in getattr(cls_or_record, _SPECS))


def replace(obj: _T, **changes: object) -> _T:
    """``dataclasses.replace`` for a record: a new one with ``changes`` applied."""
    values = {f.name: getattr(obj, f.name) for f in getattr(obj, _SPECS)}
    values.update(changes)
    return obj.__class__(**values)


def _record(cls: type | None = None, *, frozen: bool = False) -> object:
    """As ``@dataclass`` or ``@dataclass(frozen=True)``."""
    if cls is None:
        return lambda c: _process(c, frozen)
    return _process(cls, frozen)


def _specs(cls: type) -> list[_Field]:
    if cls.__bases__ != (object,):
        raise TypeError(f"{cls.__qualname__}: a record has no base class")
    specs: list[_Field] = []
    # with no base, these are the class's own (and Python 3.14 evaluates them lazily)
    for name, ann in getattr(cls, "__annotations__", {}).items():
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", "")
        if "ClassVar" in text or "InitVar" in text:
            raise TypeError(f"{cls.__qualname__}.{name}: ClassVar and InitVar are not supported")
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, _Field):
            spec = value
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        else:
            spec = _Field(value, MISSING, True, True)
        spec.name = name
        default = spec.default
        if default is not MISSING and type(default).__hash__ is None:  # dataclasses' rule
            raise ValueError(f"mutable default {type(default)} for field {name} is not "
                             "allowed: use default_factory")
        if (spec.default is MISSING and spec.factory is MISSING and specs
                and (specs[-1].default is not MISSING or specs[-1].factory is not MISSING)):
            raise TypeError(f"non-default argument {name!r} follows default argument")
        specs.append(spec)
    return specs


def _process(cls: type, frozen: bool) -> type:
    specs = _specs(cls)
    qual = cls.__qualname__
    own = cls.__dict__

    def add(name: str, fn: Callable[..., object]) -> None:
        if name not in own:
            fn.__qualname__ = f"{qual}.{name}"
            setattr(cls, name, fn)

    setattr(cls, _SPECS, tuple(specs))
    setattr(cls, _FROZEN, frozen)
    add("__init__", _init(cls, specs))
    add("__repr__", _repr(specs))
    key = _key([f.name for f in specs if f.compare])

    def __eq__(self: object, other: object) -> object:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    add("__eq__", __eq__)
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    if frozen:
        if explicit_hash:
            raise TypeError(f"Cannot overwrite attribute __hash__ in class {cls.__name__}")

        def __hash__(self: object) -> int:
            return hash(key(self))

        fn = __hash__
        fn.__qualname__ = f"{qual}.__hash__"
        # mypy types __hash__ as a method of object, not a slot a class decorator fills
        cls.__hash__ = fn  # type: ignore[assignment]
        _freeze(cls, frozenset(f.name for f in specs))
    elif not explicit_hash:
        cls.__hash__ = None  # type: ignore[assignment]  # unhashable, as dataclasses does
    if sys.version_info >= (3, 10) and "__match_args__" not in own:
        setattr(cls, "__match_args__", tuple(f.name for f in specs))  # noqa: B010
    return cls


def _key(compared: list[str]) -> Callable[[object], tuple[object, ...]]:
    """The tuple dataclasses compares and hashes: ``(self.a, self.b, ...)``."""
    if not compared:
        return lambda self: ()
    if len(compared) == 1:
        one = operator.attrgetter(compared[0])
        return lambda self: (one(self),)
    return operator.attrgetter(*compared)


def _init(cls: type, specs: list[_Field]) -> Callable[..., None]:
    qual = cls.__qualname__
    order = tuple(f.name for f in specs)
    known = frozenset(order)
    count = len(order)
    fill = tuple((f.name, f.default, f.factory) for f in specs)
    post_init = hasattr(cls, "__post_init__")
    required = sum(f.default is MISSING and f.factory is MISSING for f in specs)
    # CPython's own wording, counting self
    takes = (f"from {required + 1} to {count + 1} positional arguments" if required < count
             else f"{count + 1} positional argument{'s' if count else ''}")

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        values = self.__dict__  # what object.__setattr__ writes for plain fields
        given = len(args)
        if not kwargs and given == count:
            values.update(zip(order, args))
        else:
            if given > count:
                raise TypeError(f"{qual}.__init__() takes {takes} but {given + 1} were given")
            values.update(zip(order, args))
            taken = 0
            missing = []
            for name, default, factory in fill[given:]:  # in field order, as dataclasses
                if name in kwargs:
                    values[name] = kwargs[name]
                    taken += 1
                elif default is not MISSING:
                    values[name] = default
                elif factory is not MISSING:
                    # _Field.factory is typed object so MISSING fits; here it is callable
                    values[name] = factory()  # type: ignore[operator]
                else:
                    missing.append(name)
            if taken != len(kwargs):
                for name in kwargs:  # CPython names the first offending keyword
                    if name not in known:
                        raise TypeError(f"{qual}.__init__() got an unexpected keyword argument "
                                        f"{name!r}")
                    if order.index(name) < given:
                        raise TypeError(f"{qual}.__init__() got multiple values for argument "
                                        f"{name!r}")
            if missing:
                raise TypeError(f"{qual}.__init__() missing {_count_names(missing)}")
        if post_init:
            # post_init says the class defines it; mypy sees only the generic self
            self.__post_init__()  # type: ignore[attr-defined]

    return __init__


def _count_names(missing: list[str]) -> str:
    """``1 required positional argument: 'a'``, ``... arguments: 'a', 'b', and 'c'``."""
    quoted = [repr(m) for m in missing]
    if len(quoted) <= 2:
        listed = " and ".join(quoted)
    else:
        listed = ", ".join(quoted[:-1]) + ", and " + quoted[-1]
    plural = "s" if len(quoted) > 1 else ""
    return f"{len(quoted)} required positional argument{plural}: {listed}"


def _repr(specs: list[_Field]) -> Callable[[object], str]:
    shown = tuple(f.name for f in specs if f.repr)

    @reprlib.recursive_repr()
    def __repr__(self: object) -> str:
        inner = ", ".join([f"{name}={getattr(self, name)!r}" for name in shown])
        return f"{self.__class__.__qualname__}({inner})"

    return __repr__


def _freeze(cls: type, fields: frozenset[str]) -> None:
    if "__setattr__" in cls.__dict__ or "__delattr__" in cls.__dict__:
        raise TypeError(f"Cannot overwrite attribute __setattr__ in class {cls.__name__}")

    def __setattr__(self: object, name: str, value: object) -> None:
        if type(self) is cls or name in fields:
            from dataclasses import FrozenInstanceError

            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        # a subclass may mix in its own __setattr__; mypy wants self typed as cls for super()
        super(cls, self).__setattr__(name, value)  # type: ignore[arg-type]

    def __delattr__(self: object, name: str) -> None:
        if type(self) is cls or name in fields:
            from dataclasses import FrozenInstanceError

            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)  # type: ignore[arg-type]  # as in __setattr__

    for fn in (__setattr__, __delattr__):
        fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
        setattr(cls, fn.__name__, fn)


class _NamedTupleMeta(type):
    """``class X(NamedTuple)`` as typing.NamedTuple makes it: a collections.namedtuple
    with the annotated fields, their defaults and the class body's other attributes."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
        if not bases:  # NamedTuple itself
            return super().__new__(mcls, name, bases, ns)
        if bases != (NamedTuple,):
            raise TypeError("can only inherit from a NamedTuple type and Generic")
        # a class namespace maps "__annotations__" to a dict (typed object in ns)
        annotations: dict[str, object] = ns.get("__annotations__", {})  # type: ignore[assignment]
        with_default: list[str] = []
        for field_name in annotations:
            if field_name in ns:
                with_default.append(field_name)
            elif with_default:
                raise TypeError(f"Non-default namedtuple field {field_name} cannot follow "
                                f"default field{'s' if len(with_default) > 1 else ''} "
                                f"{', '.join(with_default)}")
        # collections here, not at the top: the started hook's fast path imports the
        # tunables' records but no NamedTuple (numahook/tunables/base.py)
        import collections

        # mypy checks namedtuple() calls as class definitions (literal fields and defaults);
        # this one builds a namedtuple class at run time, as typing.NamedTuple does
        tpl = collections.namedtuple(name, list(annotations),  # type: ignore[misc]
                                     defaults=[ns[n] for n in with_default],  # type: ignore[misc]
                                     module=str(ns["__module__"]))
        tpl.__annotations__ = tpl.__new__.__annotations__ = dict(annotations)
        for key, value in ns.items():
            if key in _TUPLE_PROHIBITED:
                raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
            if key not in _TUPLE_SPECIAL and key not in tpl._fields:
                setattr(tpl, key, value)
        return tpl


_TUPLE_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})
_TUPLE_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                               "_field_defaults", "_make", "_replace", "_asdict", "_source"})


if TYPE_CHECKING:  # type checkers see the semantics records reproduce
    from dataclasses import dataclass as record
    from dataclasses import field
    from typing import NamedTuple
else:
    record, field = _record, _field
    NamedTuple = _NamedTupleMeta("NamedTuple", (), {"__module__": __name__})
