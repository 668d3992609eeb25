"""``<numahook:domain>`` declared once: every element, its attributes and their values.

One table per element, nested as the XML nests, in the manner of ``config._SCHEMA``.
:mod:`numahook.core.metadata` walks it to read the element and to refuse whatever it does
not declare; :mod:`numahook.core.request` converts each attribute's text with it into the
:class:`~numahook.core.request.Request` field it names. ``scripts/gen-man`` writes
numahook-metadata(5) from it, and ``scripts/gen-metadata`` the README's metadata reference,
docs/json.md's table and docs/schemas/metadata.schema.json. So the parser, the manual and
the schema cannot disagree: a new attribute is one :class:`Attr` here (its Request field
and a test), and tests/unit/core/test_schema.py fails until the documents say it too.

Docs are one line each, Markdown-light: backticks mark literal values (the roff writer
turns them bold). This module is on the hook's import path, so it holds plain classes and
data only; the writers live in the scripts.
"""

from __future__ import annotations

from numahook.core.units import clip, is_decimal
from numahook.errors import InputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

#: the longest attribute value read; longer is refused before any conversion
MAX_ATTR = 4096
#: the largest latency limit ``pm_qos_resume_latency_us`` takes: the kernel reserves
#: S32_MAX (PM_QOS_RESUME_LATENCY_NO_CONSTRAINT) and refuses it, as it refuses negatives
PM_QOS_MAX_US = 2147483646


class Bool:
    """``true`` or ``false``, any case, blanks around ignored (what KubeVirt's JSON
    booleans become in XML)."""

    __slots__ = ()

    def convert(self, text: str, where: str) -> bool:
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        raise InputError(f"{where}={clip(text)} must be \"true\" or \"false\"")


class Choice:
    """One of a few words, exactly as written apart from blanks around it; with ``number``,
    a whole number in its range too, converted to an int (``idleStates``: `enable`,
    `disable` or a latency, as CRI-O's ``cpu-c-states`` annotation takes them)."""

    __slots__ = ("choices", "number")

    def __init__(self, *choices: tuple[str, str], number: tuple[Int, str] | None = None) -> None:
        #: (value, what it does), in the order the messages and documents give them
        self.choices = choices
        #: (its range, what a number means), or None: words only
        self.number = number

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(value for value, _ in self.choices)

    def convert(self, text: str, where: str) -> str | int:
        value = text.strip()
        if value in self.values:
            return value
        if self.number is None:
            raise InputError(f"{where}={clip(value)} must be one of {', '.join(self.values)}")
        span = self.number[0]
        try:
            return span.convert(value, where)
        except InputError:
            raise InputError(f"{where}={clip(value)} must be {', '.join(self.values)} or a "
                             f"whole number from {span.lo} to {span.hi}") from None


class Int:
    """A whole number in ``lo..hi``, ASCII digits only (no sign, no '²')."""

    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, text: str, where: str) -> int:
        value = text.strip()
        # the length bound first: int() of thousands of digits is slow, and never in range
        if len(value) > len(str(self.hi)) or not is_decimal(value) or not (
                self.lo <= int(value) <= self.hi):
            raise InputError(f"{where}={clip(value)} must be a whole number from {self.lo} "
                             f"to {self.hi}")
        return int(value)


class Text:
    """Kept as written: checked later against the domain (the mask against its vCPUs)."""

    __slots__ = ("syntax",)

    def __init__(self, syntax: str) -> None:
        #: the grammar, for the documents
        self.syntax = syntax

    def convert(self, text: str, where: str) -> str:
        return text


class Attr:
    """One attribute: its XML name, the record field it fills, how its text converts."""

    __slots__ = ("absent", "default", "doc", "field", "kind", "name", "required")

    def __init__(self, name: str, field: str, kind: Bool | Choice | Int | Text, doc: str, *,
                 default: object = None, absent: str = "", required: bool = False) -> None:
        self.name, self.field, self.kind, self.doc = name, field, kind, doc
        #: the field's value when the attribute is absent: the record's own default
        self.default = default
        #: what leaving it out means, when ``default`` (None) cannot say it
        self.absent = absent
        #: numahook always writes it (``rendered`` only; no user attribute is required)
        self.required = required

    def convert(self, text: str, element: str) -> Any:
        """The field's value for ``text``; InputError names the attribute and the fix."""
        return self.kind.convert(text, f"numahook:{element} {self.name}")


class Element:
    """One element: its attributes, the elements it may hold (each at most once), and the
    Request field its mere presence sets (``flag``)."""

    __slots__ = ("attrs", "children", "doc", "exactly", "flag", "name", "written")

    def __init__(self, name: str, doc: str, attrs: tuple[Attr, ...] = (),
                 children: tuple[Element, ...] = (), *, flag: str | None = None,
                 exactly: bool = False, written: bool = False) -> None:
        self.name, self.doc, self.attrs, self.children = name, doc, attrs, children
        self.flag = flag
        #: it must hold every one of its children (``<numa>``: exactly the passthrough)
        self.exactly = exactly
        #: numahook writes it (``rendered``): the parser skips it, and users never write it
        self.written = written

    def attr(self, name: str) -> Attr | None:
        return next((a for a in self.attrs if a.name == name), None)

    def child(self, name: str) -> Element | None:
        return next((c for c in self.children if c.name == name), None)

    def walk(self) -> Iterator[Element]:
        """This element and every one below it, in document order."""
        yield self
        for c in self.children:
            yield from c.walk()

    def unknown_attribute(self, name: str) -> str:
        allowed = ", ".join(sorted(a.name for a in self.attrs))
        return (f"<numahook:{self.name}> has unknown attribute {name!r}; "
                + (f"allowed: {allowed}" if allowed else "it takes no attributes"))

    def unexpected(self, name: str | None) -> str:
        """The refusal for child ``name`` (None: one is missing), naming what may be there."""
        mine = [c.name for c in self.children if not c.written]
        if not mine:
            what = "attributes only" if self.attrs else "nothing"
            return f"<numahook:{self.name}> takes {what}, no child elements"
        if self.exactly:
            held = "".join(f"<numahook:{c}/>" for c in mine)
            return f"<numahook:{self.name}> must hold exactly {held}"
        if len(mine) == 1:
            return f"<numahook:{self.name}> may hold one <numahook:{mine[0]}>, not <{name}>"
        return (f"<numahook:{self.name}> holds an unexpected or repeated <{name}>; allowed: "
                + ", ".join(f"one <{c}>" for c in mine))


_BOOL = Bool()

#: the element in a domain's <metadata>, in the namespace numahook.NAMESPACE
DOMAIN = Element("domain", "the one element in the domain's `<metadata>`: its presence "
                 "opts the domain in, and what the domain asks for is inside", children=(
    Element("cpu", "the domain's CPUs, with the names of KubeVirt's `spec.domain.cpu` fields",
            attrs=(
        Attr("dedicatedCpuPlacement", "dedicated", _BOOL, "pin each vCPU 1:1 to a CPU the "
             "domain holds exclusively; every other setting needs it", default=False),
        Attr("isolateEmulatorThread", "isolate_emulator", _BOOL, "one more CPU for QEMU's "
             "emulator thread and IO threads (a whole core with threadPolicy `isolate` or "
             "`require`); `true` is emulatorThreadPolicy `isolate`", default=False),
        # Nova's hw:emulator_threads_policy, less its default: no policy keeps the emulator
        # on the domain's own vCPUs, as before
        Attr("emulatorThreadPolicy", "emulator_thread_policy", Choice(
            ("isolate", "one more dedicated CPU for them, as `isolateEmulatorThread=\"true\"`"),
            ("share", "on the host's shared CPUs (`[cpus] shared` in numahook.conf), "
             "SCHED_OTHER, and no dedicated CPU spent (refused where that key is unset)")),
             "where QEMU's emulator thread and IO threads run (Nova's "
             "`hw:emulator_threads_policy`); `isolateEmulatorThread=\"true\"` is `isolate`, and "
             "with `share` it is refused as a contradiction",
             absent="as `isolateEmulatorThread`"),
        Attr("ioThreadsPolicy", "io_threads_policy", Choice(
            ("shared", "every IO thread on the emulator CPUs"),
            ("auto", "one IO thread per emulator CPU, round robin")),
             "where the domain's `<iothreads>` run", absent="IO threads follow the emulator"),
        # Nova's hw:cpu_policy=mixed with hw:cpu_dedicated_mask
        Attr("dedicatedMask", "dedicated_mask", Text("`N`, `A-B`, `^N`, `^A-B`, "
                                                     "comma-separated"),
             "the vCPUs that get dedicated CPUs; the others float on the host's shared CPUs "
             "(`[cpus] shared`), as Nova's `hw:cpu_dedicated_mask`; the realtime mask must lie "
             "inside it", absent="all vCPUs"),
        # Nova's values but its legacy and socket, which numahook has not
        Attr("pciNumaAffinity", "pci_numa_affinity", Choice(
            ("required", "every vCPU on the host nodes of the passthrough devices, else "
             "refused"),
            ("preferred", "those nodes first, elsewhere with an advisory"),
            ("none", "the devices are ignored")),
             "how the host nodes of the domain's passthrough PCI devices steer its dedicated "
             "CPUs (Nova's `hw:pci_numa_affinity_policy`)", absent="as `preferred`"),
        Attr("threadPolicy", "thread_policy", Choice(
            ("prefer", "guest thread siblings on host siblings where possible, a vCPU may "
             "share a core"),
            ("isolate", "each vCPU on a core of its own, its siblings held idle for the "
             "domain (the guest gets `threads='1'`)"),
            ("require", "guest thread siblings on host thread siblings only, refused without "
             "SMT")),
             "how vCPUs use SMT siblings (Nova's `hw:cpu_thread_policy`)",
             absent="as `prefer`"),
    ), children=(
        Element("numa", "the guest's NUMA cells",
                exactly=True, children=(
            Element("guestMappingPassthrough", "guest cells mirror the host nodes of the "
                    "dedicated CPUs, memory split across them in whole hugepages, each cell "
                    "bound `strict` to its node; needs hugepages", flag="passthrough"),
        )),
        Element("realtime", "SCHED_FIFO for the masked vCPUs, with pmu off, nosharepages, "
                "locked memory and no balloon; needs guestMappingPassthrough",
                flag="realtime", attrs=(
            Attr("mask", "realtime_mask", Text("`N`, `A-B`, `^N`, `^A-B`, comma-separated"),
                 "the vCPUs that run SCHED_FIFO: exclusions win, only exclusions mean all but "
                 "those, an id beyond the last vCPU is an error", absent="all vCPUs"),
            Attr("priority", "realtime_priority", Int(1, 99), "their SCHED_FIFO priority",
                 default=1),
        )),
        Element("power", "the idle states and frequency governor of the dedicated CPUs the "
                "domain's vCPUs and isolated emulator run on, set at `prepare` and put back at "
                "stop (CRI-O's `cpu-c-states` and `cpu-freq-governor` annotations); "
                "`[cpus] shared` and threadPolicy `isolate`'s idle siblings are left alone; "
                "needs dedicatedCpuPlacement", attrs=(
            Attr("idleStates", "idle_states", Choice(
                ("enable", "leave them as they are"),
                ("disable", "no idle state deeper than polling: `n/a` in each CPU's "
                 "`pm_qos_resume_latency_us`"),
                number=(Int(1, PM_QOS_MAX_US), "the longest exit latency allowed, in "
                        "microseconds, written to each CPU's `pm_qos_resume_latency_us` (`0` is "
                        "not one: the kernel reads it as no limit)")),
                 "the idle states those CPUs may enter", absent="`disable` for a real-time "
                 "domain (`[power] realtime_idle_states`), `enable` for others"),
            Attr("governor", "governor", Text("a name `scaling_available_governors` lists"),
                 "the cpufreq governor those CPUs run (`performance`, say); a name the host "
                 "lacks is refused, a host without cpufreq gets an advisory",
                 absent="the CPUs keep their governor"),
        )),
    )),
    Element("rendered", "written by numahook when it renders the definition, so that later "
            "checks are a string compare; never write it yourself", written=True, attrs=(
        Attr("digest", "digest", Text("`sha256:` and 32 hex digits"), "what the rendering "
             "was computed from", default="", required=True),
        Attr("host", "host", Text("16 hex digits"), "the host topology it was computed on",
             default="", required=True),
        Attr("held", "held", Text("a cpulist"), "the CPUs the domain holds besides its pins "
             "(threadPolicy `isolate`'s idle siblings)", default="", absent="none"),
        Attr("emulator", "emulator", Text("a cpulist"), "the emulator's own CPUs, where the "
             "rendered `<emulatorpin>` is wider while QEMU starts", default="",
             absent="those of `<emulatorpin>`"),
    )),
))

#: the elements a user writes, in document order: what the parser and the Request read
ELEMENTS = tuple(e for e in DOMAIN.walk() if not e.written)
#: ``<numahook:rendered>``, the record of a rendering (metadata.Rendered)
RENDERED = next(e for e in DOMAIN.walk() if e.written)
