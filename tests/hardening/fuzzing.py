"""What the fuzzers share (issue 8, part 1): the harness and the hypothesis strategies.

Each fuzzer feeds hypothesis-generated input to one parser through :func:`attempt`, which
counts it (figures kind "fuzz"). Whatever the input, a parser must return a well-formed
result or raise one of numahook's own errors with a one-line message: never another
exception (a traceback in the hook or a crash of a daemon pass), never a hang (a watchdog
turns one into a failure). The strategies make hostile values, domain documents broken at
every level, and the contents of host files.

Not a test module (no test module imports another): test_fuzz_input.py and
test_fuzz_host.py import it, as they import conftest.py.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from hypothesis import strategies as st

from numahook import NAMESPACE
from numahook.errors import NumahookError

from .conftest import FIGURES, uuid_of

# --------------------------------------------------------------------------- harness

#: a message may quote a path and a clipped value, never the whole input
MAX_MESSAGE = 1500


class Hang(Exception):
    pass


@contextlib.contextmanager
def watchdog(seconds: float = 60.0) -> Iterator[None]:
    """Turn a hang into a failure. A bound on runaway work, not a performance assertion:
    every input here is parsed in milliseconds."""

    def fire(_sig: int, _frame: Any) -> None:
        raise Hang(f"no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def one_line(exc: BaseException, limit: int | None = MAX_MESSAGE) -> None:
    msg = str(exc)
    assert msg, f"{type(exc).__name__} without a message"
    assert "\n" not in msg, msg[:2000]
    assert "Traceback" not in msg
    if limit is not None:
        assert len(msg) <= limit, f"{len(msg)} chars: {msg[:300]}..."


def attempt(parser: str, fn: Callable[..., Any], *args: Any, limit: int | None = MAX_MESSAGE,
            **kwargs: Any) -> Any:
    """Run one fuzz input; return the result or numahook's error; fail on anything else."""
    FIGURES.add("fuzz", parser)
    try:
        with watchdog():
            return fn(*args, **kwargs)
    except NumahookError as exc:
        one_line(exc, limit)
        return exc


# --------------------------------------------------------------------------- strategies

#: values that broke parsers somewhere once: numbers that overflow, foreign digits,
#: separators, escapes, quotes, markup, climbing paths
SPICY = [
    "", " ", "0", "-0", "-1", "1", "2", "63", "64", "99", "100", "4095", "4096", "4097",
    "8191", "8192", "65535", "65536", "2147483647", "2147483648", "4294967296",
    "9223372036854775808", "9" * 25, "9" * 400, "1e400", "1e-400", "-1e400", "0x10", "010",
    "1.5", "+1", " 1 ", "\t1\n", "1_000", "\u0663", "\u00b2", "\uff11", "nan", "NaN", "inf",
    "-inf", "true", "TRUE", " true ", "false", "yes", "on", "auto", "shared", "fifo",
    "../..", "..", ".", "/", "//", "/machine", "/machine/../..", "/machine/rt", "machine",
    "/machine/./x", "/machine/x..y", "/\u00e9", "0-3,^1", "^0", "^0-3", "0-8191", "0-8192",
    "0-", "-", "-5", "5-3", ",", "0,,1", "0 , 1", "0-1-2", "^", "^^1", "0-3,^", "KiB", "MiB",
    "GiB", "b", "bytes", "EiB", "ZiB", "kib", "'", '"', "&", "<", ">", "]]>", "&amp;",
    "&#0;", "%p;", "\\", "\u202e", "\ufeff", "\udce9", "\x00", "\x01", "\x7f",
]


def _xml_safe(text: str) -> str:
    """Drop characters XML 1.0 cannot carry at all (so the document stays well-formed)."""
    return "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff")
                   or ("\ue000" <= c <= "\ufffd") or c > "\uffff")


def big(chars: str) -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.sampled_from(list(chars)),
                     st.sampled_from([4097, 65537, 300_000]))


values = st.one_of(
    st.sampled_from(SPICY),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=40),
    st.text(alphabet="0123456789-,^ ", max_size=30),
    big("9a,"),
    st.builds(lambda n: "0-8191," * n, st.integers(1, 3000)),
)
#: a value for a well-formed document: only what XML can carry
xml_values = values.map(_xml_safe)


def attr(name: str, value: str | None) -> str:
    return "" if value is None else f" {name}={quoteattr(value)}"


def opt(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), strategy)


# our metadata: random trees of elements, in our namespace or not, with random attributes
_META_NAMES = ["cpu", "numa", "guestMappingPassthrough", "realtime", "rendered", "domain",
               "Cpu", "bogus", "memory"]
_META_ATTRS = ["dedicatedCpuPlacement", "isolateEmulatorThread", "ioThreadsPolicy", "mask",
               "priority", "digest", "host", "bogus", "isolateEmulatorThraed",
               "numahook:mask", "other:x"]
_PREFIXES = ["numahook:", "numahook:", "numahook:", "", "other:"]


def _element(prefix: str, name: str, attrs: dict[str, str], kids: list[str]) -> str:
    text = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())
    inner = "".join(kids)
    return f"<{prefix}{name}{text}>{inner}</{prefix}{name}>" if inner else \
        f"<{prefix}{name}{text}/>"


meta_leaf = st.one_of(
    st.builds(_element, st.sampled_from(_PREFIXES), st.sampled_from(_META_NAMES),
              st.dictionaries(st.sampled_from(_META_ATTRS), xml_values, max_size=3),
              st.just([])),
    st.sampled_from(["<!-- c -->", "<?pi x?>", "text", "<![CDATA[x]]>", ""]),
)
meta_tree = st.recursive(
    meta_leaf,
    lambda kids: st.builds(_element, st.sampled_from(_PREFIXES), st.sampled_from(_META_NAMES),
                           st.dictionaries(st.sampled_from(_META_ATTRS), xml_values,
                                           max_size=3),
                           st.lists(kids, max_size=4)),
    max_leaves=12,
)
good_meta = st.builds(
    lambda d, i, p, rt, mask, prio, aff, thr: (
        "<numahook:cpu" + attr("dedicatedCpuPlacement", d) + attr("isolateEmulatorThread", i)
        + attr("pciNumaAffinity", aff) + attr("threadPolicy", thr)
        + ">" + ("<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>" if p
                 else "")
        + (("<numahook:realtime" + attr("mask", mask) + attr("priority", prio) + "/>")
           if rt else "") + "</numahook:cpu>"),
    st.sampled_from(["true", "false", None]), st.sampled_from(["true", "false", None]),
    st.booleans(), st.booleans(), opt(xml_values), opt(xml_values),
    st.one_of(st.sampled_from([None, "required", "preferred", "none"]), xml_values),
    st.one_of(st.sampled_from([None, "prefer", "isolate", "require"]), xml_values))

#: PCI numbers as libvirt writes them, and not
pci_numbers = st.one_of(st.sampled_from(["0x0000", "0x18", "0x86", "0x00", "0x1f", "0x7",
                                         "24", "010", "0x100", "0X18", "-1"]), xml_values)


@st.composite
def pci_devices(draw: st.DrawFn) -> str:
    """Hostdevs, SR-IOV interfaces and PCI controllers with hostile addresses and targets."""
    n = lambda: draw(opt(pci_numbers))  # noqa: E731

    def address(kind: str | None = None) -> str:
        return (f"<address{attr('type', kind)}{attr('domain', n())}{attr('bus', n())}"
                f"{attr('slot', n())}{attr('function', n())}/>")

    out = []
    for _ in range(draw(st.integers(0, 4))):
        guest = draw(st.sampled_from(["", address("pci"), address("ccw"), address(None)]))
        out.append(draw(st.sampled_from([
            f"<hostdev mode='subsystem' type='pci'><source>{address()}</source>{guest}</hostdev>",
            f"<interface type='hostdev'><source>{address('pci')}</source>{guest}</interface>",
            "<hostdev mode='subsystem' type='pci'><source/></hostdev>"])))
    for _ in range(draw(st.integers(0, 3))):
        node = draw(opt(pci_numbers))
        target = f"<target{attr('busNr', n())}>" + (
            f"<node>{escape(node)}</node>" if node is not None else "") + "</target>"
        alias = draw(st.sampled_from(["", "<alias name='ua-numahook-pxb-c0-pci0000-17'/>",
                                      "<alias name='ua-numahook-rp-0000-18-00-0'/>",
                                      "<alias/>"]))
        model = draw(st.one_of(st.sampled_from(["pcie-expander-bus", "pcie-root-port",
                                                "pcie-root"]), xml_values))
        out.append(f"<controller type='pci'{attr('index', n())}{attr('model', model)}>"
                   f"{draw(st.sampled_from([target, '']))}{alias}{address('pci')}</controller>")
    return "".join(out)


@st.composite
def domains(draw: st.DrawFn) -> str:
    """A domain document with hostile values in every slot numahook reads."""
    v = lambda: draw(opt(xml_values))  # noqa: E731
    pick = lambda *xs: draw(st.sampled_from(xs))  # noqa: E731
    name = draw(st.one_of(st.sampled_from(["d", "numavm"]), xml_values))
    meta_body = draw(st.one_of(good_meta, meta_tree, st.lists(meta_tree, max_size=3).map(
        "".join)))
    ours = f"<numahook:domain xmlns:numahook='{NAMESPACE}' xmlns:other='urn:x'>" \
           f"{meta_body}</numahook:domain>"
    metadata = pick(f"<metadata>{ours}</metadata>", f"<metadata>{ours}{ours}</metadata>",
                    f"<metadata><!-- {escape(ours).replace('--', '- -')} --></metadata>",
                    "", f"<metadata><other xmlns='urn:y'/>{ours}</metadata>")
    parts = [f"<name>{escape(name)}</name>"]
    if draw(st.booleans()):
        parts.append(f"<uuid>{escape(draw(st.one_of(st.just(uuid_of(1)), xml_values)))}</uuid>")
    parts.append(metadata)
    if draw(st.integers(0, 5)):
        parts.append(f"<memory{attr('unit', v())}>{escape(draw(xml_values))}</memory>")
    if draw(st.booleans()):
        pages = "".join(f"<page{attr('size', v())}{attr('unit', v())}{attr('nodeset', v())}/>"
                        for _ in range(draw(st.integers(0, 3))))
        parts.append(f"<memoryBacking><hugepages>{pages}</hugepages></memoryBacking>")
    if draw(st.integers(0, 5)):
        parts.append(f"<vcpu{attr('placement', 'static')}{attr('current', v())}>"
                     f"{escape(draw(xml_values))}</vcpu>")
    if draw(st.booleans()):
        n = draw(st.integers(0, 4))
        pins = "".join(f"<vcpupin{attr('vcpu', v())}{attr('cpuset', v())}/>" for _ in range(n))
        pins += pick("", f"<emulatorpin{attr('cpuset', v())}/>")
        pins += pick("", f"<iothreadpin{attr('iothread', v())}{attr('cpuset', v())}/>")
        pins += pick("", f"<vcpusched{attr('vcpus', v())}{attr('scheduler', v())}"
                         f"{attr('priority', v())}/>")
        parts.append(f"<cputune>{pins}</cputune>")
    if draw(st.booleans()):
        parts.append(pick(f"<iothreads>{escape(draw(xml_values))}</iothreads>",
                          f"<iothreadids><iothread{attr('id', v())}/></iothreadids>"))
    if draw(st.booleans()):
        cells = "".join(f"<cell{attr('id', v())}{attr('cpus', v())}{attr('memory', v())}"
                        f"{attr('unit', v())}/>" for _ in range(draw(st.integers(0, 3))))
        topo = (f"<topology{attr('sockets', v())}{attr('dies', v())}{attr('cores', v())}"
                f"{attr('threads', v())}/>")
        parts.append(f"<cpu{attr('mode', v())}>{pick(topo, '')}<numa>{cells}</numa></cpu>")
    if draw(st.booleans()):
        parts.append(f"<numatune><memnode{attr('cellid', v())}{attr('nodeset', v())}/>"
                     "</numatune>")
    if draw(st.booleans()):
        parts.append(f"<resource><partition>{escape(draw(xml_values))}</partition></resource>")
    if draw(st.booleans()):
        parts.append(f"<devices><memballoon{attr('model', v())}/>{draw(pci_devices())}"
                     "</devices>")
    if draw(st.booleans()):
        parts.append(f"<os><type{attr('machine', pick('q35', 'pc', None, v()))}>hvm</type></os>")
    draw(st.randoms()).shuffle(parts)
    return f"<domain{attr('type', pick('kvm', 'qemu', None))}>{''.join(parts)}</domain>"


def mangle(doc: str, data: st.DataObject) -> str | bytes:
    """Break a document at the byte level: truncate, splice, re-encode, insert a DOCTYPE."""
    how = data.draw(st.sampled_from(["keep", "keep", "truncate", "splice", "bytes", "utf16",
                                     "latin1", "doctype", "nest", "nul"]))
    if how == "truncate":
        return doc[: data.draw(st.integers(0, len(doc)))]
    if how == "splice":
        at = data.draw(st.integers(0, len(doc)))
        return doc[:at] + data.draw(st.sampled_from([*SPICY, "<", "</x>", "<a", "'"])) + doc[at:]
    if how == "bytes":
        at = data.draw(st.integers(0, len(doc)))
        raw = doc.encode("utf-8", "surrogatepass")
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if how == "utf16":
        return ('<?xml version="1.0" encoding="UTF-16"?>' + doc).encode("utf-16", "surrogatepass")
    if how == "latin1":
        return ('<?xml version="1.0" encoding="ISO-8859-1"?>' + doc).encode("latin-1", "replace")
    if how == "doctype":
        decl = data.draw(st.sampled_from([
            '<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
            '<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/x.dtd">',
            '<!DOCTYPE domain [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>',
            "<!DOCTYPE domain>"]))
        return decl + doc.replace("<name>", "<name>&x;&b;", 1)
    if how == "nest":
        depth = data.draw(st.sampled_from([62, 63, 64, 65, 200, 5000]))
        return doc.replace("</domain>", "<a>" * depth + "</a>" * depth + "</domain>")
    if how == "nul":
        at = data.draw(st.integers(0, len(doc)))
        return doc[:at] + "\x00" + doc[at:]
    return doc


# --------------------------------------------------------------------------- host files

cpulist_texts = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="0123456789-,^ \t\n", max_size=60),
    st.lists(st.one_of(st.integers(0, 9000).map(str),
                       st.tuples(st.integers(0, 9000), st.integers(0, 9000)).map(
                           lambda t: f"{t[0]}-{t[1]}"),
                       st.sampled_from(SPICY)), max_size=20).map(",".join),
    big("0123456789,-"),
    st.builds(lambda n: "0-8191," * n + "0", st.integers(1, 9400)),
)


file_contents = st.one_of(
    st.sampled_from(SPICY).map(lambda s: (s + "\n").encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
    st.integers(-(2**80), 2**80).map(lambda i: f"{i}\n".encode()),
    cpulist_texts.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"\n", b"0-8191\n", b"0-3,8-11\n", b"99999999999999999\n",
                     b"Node 0 MemTotal: 99999999999999999999 kB\n", b"10 20 30 40 50\n",
                     b"\xff\xfe\x00\n", b"9" * 70000]),
)


@contextlib.contextmanager
def patched(root: Path, contents: dict[str, bytes], removed: list[str]) -> Iterator[None]:
    """Rewrite some files of a fixture tree for one example, then put them back."""
    saved = {rel: (root / rel).read_bytes() if (root / rel).is_file() else None
             for rel in {*contents, *removed}}
    try:
        for rel, data in contents.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        for rel in removed:
            with contextlib.suppress(FileNotFoundError):
                (root / rel).unlink()
        yield
    finally:
        for rel, data in saved.items():
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    (root / rel).unlink()
            else:
                (root / rel).write_bytes(data)
