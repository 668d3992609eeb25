"""The <numahook:domain> metadata element: every field, defaults, and strict refusals.

The last test fails when an element, attribute or value that core/schema.py declares was
never parsed by the tests above it, accepted and refused (as virt-manager's test suite
does for its XML properties): a new attribute comes with its parser tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree

from numahook import NAMESPACE
from numahook.core import metadata, render, request, schema
from numahook.core.request import Request
from numahook.errors import InputError

NS = f'xmlns:numahook="{NAMESPACE}"'


def domain(meta: str, vcpus: int = 4) -> str:
    return f"""<domain type='kvm'>
  <name>vm</name>
  <metadata>
    {meta}
  </metadata>
  <memory unit='MiB'>64</memory>
  <vcpu>{vcpus}</vcpu>
</domain>"""


def cpu(attrs: str = "", inner: str = "") -> str:
    return f"<numahook:domain {NS}><numahook:cpu {attrs}>{inner}</numahook:cpu></numahook:domain>"


def req(meta: str) -> Request | None:
    return render.parse(domain(meta)).request


def refused(meta: str) -> str:
    with pytest.raises(InputError) as exc:
        render.parse(domain(meta))
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


NUMA = "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"


# --------------------------------------------------------------------------- fields


def test_every_field() -> None:
    got = req(cpu('dedicatedCpuPlacement="true" isolateEmulatorThread="true" '
                  'ioThreadsPolicy="auto"',
                  NUMA + '<numahook:realtime mask="0-3,^1" priority="7"/>'))
    assert got == Request(dedicated=True, isolate_emulator=True, io_threads_policy="auto",
                          passthrough=True, realtime=True, realtime_mask="0-3,^1",
                          realtime_priority=7)
    assert got.managed


def test_defaults_of_an_empty_cpu_element() -> None:
    got = req(cpu())
    assert got == Request()
    assert got.dedicated is False
    assert got.isolate_emulator is False
    assert got.io_threads_policy is None
    assert got.passthrough is False
    assert got.realtime is False
    assert got.realtime_priority == 1
    assert not got.managed


def test_domain_without_cpu_element_is_opted_in_but_asks_nothing() -> None:
    got = req(f"<numahook:domain {NS}/>")
    assert got == Request()


def test_domain_without_our_element_is_not_opted_in() -> None:
    assert req("<app:owner xmlns:app='urn:x'>me</app:owner>") is None
    assert render.parse("<domain><name>x</name><memory>1024</memory></domain>").request is None


def test_realtime_without_mask_means_all_vcpus_and_priority_1() -> None:
    got = req(cpu('dedicatedCpuPlacement="true"', NUMA + "<numahook:realtime/>"))
    assert got is not None
    assert got.realtime is True
    assert got.realtime_mask is None
    assert got.realtime_priority == 1


def test_mask_is_kept_as_written_for_the_designer() -> None:
    got = req(cpu("", '<numahook:realtime mask="^0"/>'))
    assert got is not None and got.realtime_mask == "^0"


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False),
                                             (" TRUE ", True), ("False", False)])
def test_booleans(text: str, value: bool) -> None:
    got = req(cpu(f'dedicatedCpuPlacement="{text}" isolateEmulatorThread="{text}"'))
    assert got is not None
    assert got.dedicated is value
    assert got.isolate_emulator is value


@pytest.mark.parametrize("policy", ["shared", "auto", " auto "])
def test_io_threads_policies(policy: str) -> None:
    got = req(cpu(f'ioThreadsPolicy="{policy}"'))
    assert got is not None and got.io_threads_policy == policy.strip()


@pytest.mark.parametrize("policy", ["required", "preferred", "none", " none "])
def test_pci_numa_affinities(policy: str) -> None:
    got = req(cpu(f'dedicatedCpuPlacement="true" pciNumaAffinity="{policy}"'))
    assert got is not None and got.pci_numa_affinity == policy.strip()
    assert got.pci_affinity == policy.strip() and got.managed


def test_pci_numa_affinity_unset_is_preferred_but_asks_nothing() -> None:
    got = req(cpu())
    assert got is not None and got.pci_numa_affinity is None
    assert got.pci_affinity == "preferred" and not got.managed


@pytest.mark.parametrize("policy", ["prefer", "isolate", "require"])
def test_thread_policies(policy: str) -> None:
    got = req(cpu(f'threadPolicy="{policy}"'))
    assert got is not None and got.thread_policy == policy and got.threads == policy
    assert got.managed  # set, even to the default: the domain asked for it
    assert req(cpu()).threads == "prefer"  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", ["isolate", "share"])
def test_emulator_thread_policies(policy: str) -> None:
    got = req(cpu(f'dedicatedCpuPlacement="true" emulatorThreadPolicy="{policy}"'))
    assert got is not None and got.emulator_thread_policy == policy and got.managed
    # isolate is today's isolateEmulatorThread; the fields stay as written
    assert got.isolated_emulator is (policy == "isolate") and got.isolate_emulator is False
    assert got.shares_emulator is (policy == "share")


@pytest.mark.parametrize(("isolate", "policy", "isolated"), [
    ("true", "isolate", True), ("false", "share", False), ("false", "isolate", True)])
def test_isolate_emulator_thread_is_an_alias_of_isolate(isolate: str, policy: str,
                                                        isolated: bool) -> None:
    """Both set is read as written; "false" is the attribute's default and says nothing
    against either policy. "true" with "share" is a precondition (test_hardware_refusals)."""
    got = req(cpu(f'isolateEmulatorThread="{isolate}" emulatorThreadPolicy="{policy}"'))
    assert got is not None and got.isolated_emulator is isolated
    assert got.isolate_emulator is (isolate == "true") and got.emulator_thread_policy == policy


def test_dedicated_mask_is_kept_as_written() -> None:
    got = req(cpu('dedicatedCpuPlacement="true" dedicatedMask=" 1-3,^2"'))
    assert got is not None and got.dedicated_mask == " 1-3,^2" and got.managed


@pytest.mark.parametrize("policy", ["shared", "Share", "", "dedicated"])
def test_bad_emulator_thread_policy(policy: str) -> None:
    msg = refused(cpu(f'emulatorThreadPolicy="{policy}"'))
    assert msg == f"numahook:cpu emulatorThreadPolicy={policy!r} must be one of isolate, share"


POWER_MAX = 2147483646  # the kernel's S32_MAX - 1: S32_MAX itself means "no constraint"


@pytest.mark.parametrize(("text", "value"), [
    ("enable", "enable"), ("disable", "disable"), (" disable ", "disable"), ("1", 1),
    ("20", 20), ("007", 7), (str(POWER_MAX), POWER_MAX)])
def test_power_idle_states(text: str, value: str | int) -> None:
    got = req(cpu('dedicatedCpuPlacement="true"', f'<numahook:power idleStates="{text}"/>'))
    assert got is not None and got.idle_states == value and got.governor is None
    assert got.asks_power and got.managed


def test_power_governor_is_kept_as_written_and_checked_on_the_host() -> None:
    got = req(cpu("", '<numahook:power governor="performance"/>'))
    assert got is not None and got.governor == "performance" and got.idle_states is None
    assert got.asks_power and got.managed
    # an empty element asks nothing, and a real-time domain's default is the config's
    got = req(cpu("", "<numahook:power/>"))
    assert got is not None and not got.asks_power and not got.managed


@pytest.mark.parametrize("text", ["0", str(POWER_MAX + 1), "-1", "ENABLE", "", "1.5",
                                  "max_latency:10", "0x10", "²"])
def test_bad_idle_states(text: str) -> None:
    msg = refused(cpu("", f'<numahook:power idleStates="{text}"/>'))
    assert msg == (f"numahook:power idleStates={text!r} must be enable, disable or a whole "
                   f"number from 1 to {POWER_MAX}")


def test_power_takes_attributes_only_and_once() -> None:
    assert "<numahook:power> has unknown attribute 'cStates'; allowed: governor, idleStates" \
        in refused(cpu("", "<numahook:power cStates='disable'/>"))
    assert "<numahook:power> takes attributes only, no child elements" in refused(
        cpu("", "<numahook:power><numahook:realtime/></numahook:power>"))
    assert "<numahook:cpu> holds an unexpected or repeated <power>" in refused(
        cpu("", "<numahook:power/><numahook:power/>"))


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("99", 99), ("50", 50), (" 5 ", 5),
                                             ("07", 7)])
def test_priorities(text: str, value: int) -> None:
    got = req(cpu("", f'<numahook:realtime priority="{text}"/>'))
    assert got is not None and got.realtime_priority == value


def test_comments_and_rendered_record_are_ignored() -> None:
    got = req(f"<numahook:domain {NS}><!-- a note --><numahook:rendered digest='x' host='y'/>"
              f"<numahook:cpu dedicatedCpuPlacement='true'><!-- inner -->{NUMA}"
              "</numahook:cpu></numahook:domain>")
    assert got is not None and got.dedicated and got.passthrough


def test_namespaced_attributes_use_their_local_name() -> None:
    got = req(f"<numahook:domain {NS}><numahook:cpu numahook:dedicatedCpuPlacement='true'/>"
              "</numahook:domain>")
    assert got is not None and got.dedicated


def test_default_namespace_form_is_the_same_element() -> None:
    got = req(f"<domain xmlns='{NAMESPACE}'><cpu dedicatedCpuPlacement='true'><numa>"
              "<guestMappingPassthrough/></numa></cpu></domain>")
    assert got == Request(dedicated=True, passthrough=True)


# --------------------------------------------------------------------------- refusals


def test_unknown_attribute_on_cpu_names_it_and_the_allowed_ones() -> None:
    msg = refused(cpu('isolateEmulatorThraed="true"'))
    assert "<numahook:cpu> has unknown attribute 'isolateEmulatorThraed'" in msg
    assert ("allowed: dedicatedCpuPlacement, dedicatedMask, emulatorThreadPolicy, "
            "ioThreadsPolicy, isolateEmulatorThread") in msg


def test_unknown_attribute_on_domain_numa_realtime_and_passthrough() -> None:
    assert "<numahook:domain> has unknown attribute 'x'" in refused(
        f"<numahook:domain {NS} x='1'/>")
    assert "<numahook:numa> has unknown attribute 'policy'" in refused(
        cpu("", "<numahook:numa policy='x'><numahook:guestMappingPassthrough/></numahook:numa>"))
    assert "<numahook:guestMappingPassthrough> has unknown attribute 'a'; it takes no " \
        "attributes" in refused(cpu("", "<numahook:numa><numahook:guestMappingPassthrough "
                                        "a='1'/></numahook:numa>"))
    msg = refused(cpu("", "<numahook:realtime msk='0'/>"))
    assert "<numahook:realtime> has unknown attribute 'msk'" in msg
    assert "allowed: mask, priority" in msg


def test_unknown_element_in_domain() -> None:
    msg = refused(f"<numahook:domain {NS}><numahook:memory/></numahook:domain>")
    assert "<numahook:domain> may hold one <numahook:cpu>, not <memory>" in msg


def test_two_cpu_elements_are_refused() -> None:
    msg = refused(f"<numahook:domain {NS}><numahook:cpu/><numahook:cpu/></numahook:domain>")
    assert "may hold one <numahook:cpu>" in msg


@pytest.mark.parametrize("inner", [
    "<numahook:hugepages/>",
    NUMA + NUMA,
    "<numahook:realtime/><numahook:realtime/>",
])
def test_unknown_or_repeated_element_in_cpu(inner: str) -> None:
    msg = refused(cpu("", inner))
    assert "<numahook:cpu> holds an unexpected or repeated" in msg
    assert "allowed: one <numa>, one <realtime>" in msg


@pytest.mark.parametrize("inner", [
    "<numahook:numa/>",
    "<numahook:numa><numahook:guestMappingPassthrough/><numahook:guestMappingPassthrough/>"
    "</numahook:numa>",
    "<numahook:numa><numahook:preferred/></numahook:numa>",
])
def test_numa_must_hold_exactly_passthrough(inner: str) -> None:
    assert "<numahook:numa> must hold exactly <numahook:guestMappingPassthrough/>" in refused(
        cpu("", inner))


def test_realtime_takes_no_children() -> None:
    msg = refused(cpu("", "<numahook:realtime><numahook:mask>0</numahook:mask>"
                          "</numahook:realtime>"))
    assert "<numahook:realtime> takes attributes only" in msg


def test_guest_mapping_passthrough_takes_nothing() -> None:
    """Refused since the schema declares the element empty (earlier, its children went
    unread, so a misspelt one was silently ignored)."""
    msg = refused(cpu("", "<numahook:numa><numahook:guestMappingPassthrough><numahook:cells/>"
                          "</numahook:guestMappingPassthrough></numahook:numa>"))
    assert msg == "<numahook:guestMappingPassthrough> takes nothing, no child elements"


@pytest.mark.parametrize("meta", [
    f"<numahook:domain {NS}><cpu dedicatedCpuPlacement='true'/></numahook:domain>",
    f"<numahook:domain {NS}><kv:cpu xmlns:kv='urn:kubevirt'/></numahook:domain>",
    cpu("", "<kv:numa xmlns:kv='urn:kubevirt'/>"),
    cpu("", "<numahook:numa><guestMappingPassthrough xmlns='urn:other'/></numahook:numa>"),
])
def test_children_in_another_namespace_are_refused(meta: str) -> None:
    assert "is not in the numahook namespace" in refused(meta)


def test_our_element_in_another_namespace_version_is_not_ours() -> None:
    other = NAMESPACE.replace("/1", "/2")
    assert req(f"<numahook:domain xmlns:numahook='{other}'><numahook:cpu "
               "dedicatedCpuPlacement='true'/></numahook:domain>") is None


def test_two_domain_elements_are_refused() -> None:
    msg = refused(cpu('dedicatedCpuPlacement="true"') + cpu('dedicatedCpuPlacement="false"'))
    assert "more than one <numahook:domain> element; keep one" in msg


@pytest.mark.parametrize("value", ["yes", "1", "on", "", "truee"])
def test_bad_boolean(value: str) -> None:
    msg = refused(cpu(f'dedicatedCpuPlacement="{value}"'))
    assert f"dedicatedCpuPlacement={value!r}" in msg
    assert 'must be "true" or "false"' in msg


def test_bad_boolean_on_isolate() -> None:
    assert "isolateEmulatorThread='maybe'" in refused(cpu('isolateEmulatorThread="maybe"'))


@pytest.mark.parametrize("policy", ["dedicated", "supplementalPool", "", "AUTO"])
def test_bad_io_threads_policy(policy: str) -> None:
    msg = refused(cpu(f'ioThreadsPolicy="{policy}"'))
    assert f"ioThreadsPolicy={policy!r}" in msg
    assert "must be one of shared, auto" in msg


@pytest.mark.parametrize("policy", ["legacy", "socket", "Required", ""])
def test_bad_pci_numa_affinity(policy: str) -> None:
    msg = refused(cpu(f'pciNumaAffinity="{policy}"'))
    assert msg == (f"numahook:cpu pciNumaAffinity={policy!r} must be one of required, "
                   "preferred, none")


@pytest.mark.parametrize("policy", ["mixed", "ISOLATE", ""])
def test_bad_thread_policy(policy: str) -> None:
    msg = refused(cpu(f'threadPolicy="{policy}"'))
    assert msg == f"numahook:cpu threadPolicy={policy!r} must be one of prefer, isolate, require"


@pytest.mark.parametrize("priority", ["0", "100", "-1", "abc", "", "1.5", "999", "+5", "007"])
def test_bad_priority(priority: str) -> None:
    msg = refused(cpu("", f'<numahook:realtime priority="{priority}"/>'))
    assert f"priority={priority!r}" in msg
    assert "must be a whole number from 1 to 99" in msg


@pytest.mark.parametrize("priority", ["\u00b2", "\u0663", "\uff15"])
def test_unicode_digit_priority_is_an_input_error(priority: str) -> None:
    # regression: str.isdigit() accepted '\u00b2', which int() then rejected with ValueError
    msg = refused(cpu("", f'<numahook:realtime priority="{priority}"/>'))
    assert "must be a whole number from 1 to 99" in msg


def test_overlong_attribute_is_refused() -> None:
    msg = refused(cpu("", f'<numahook:realtime mask="{"0," * 3000}0"/>'))
    assert "<numahook:realtime> attribute mask is too long (more than 4096 characters)" in msg


def test_messages_never_echo_huge_values() -> None:
    msg = refused(cpu(f'ioThreadsPolicy="{"x" * 4000}"'))
    assert len(msg) < 300


# --------------------------------------------------------------------------- module API


def test_find_and_parse_directly() -> None:
    root = etree.fromstring(domain(cpu('dedicatedCpuPlacement="true"')))
    el = metadata.find(root)
    assert el is not None
    raw = metadata.parse(el)
    # raw text by the Request field it fills; validation is request's job
    assert raw == metadata.RawRequest(text={"dedicated": "true"})
    assert request.from_raw(raw).dedicated is True


def test_find_without_metadata_element() -> None:
    assert metadata.find(etree.fromstring("<domain><name>x</name></domain>")) is None


def test_rendered_record_round_trip() -> None:
    root = etree.fromstring(domain(cpu('dedicatedCpuPlacement="true"')))
    el = metadata.find(root)
    assert el is not None
    assert metadata.rendered(el) is None
    metadata.set_rendered(el, metadata.Rendered("sha256:abc", "f00"))
    assert metadata.rendered(el) == metadata.Rendered("sha256:abc", "f00")
    metadata.set_rendered(el, metadata.Rendered("sha256:def", "f01"))
    assert metadata.rendered(el) == metadata.Rendered("sha256:def", "f01")
    assert len(el.findall(f"{{{NAMESPACE}}}rendered")) == 1
    # held and emulator are written only when set, and removed when no longer set
    full = metadata.Rendered("sha256:0a", "f02", held="4-5", emulator="2")
    metadata.set_rendered(el, full)
    assert metadata.rendered(el) == full
    found = el.find(f"{{{NAMESPACE}}}rendered")
    assert dict(found.attrib) == {"digest": "sha256:0a", "host": "f02", "held": "4-5",
                                  "emulator": "2"}
    metadata.set_rendered(el, metadata.Rendered("sha256:0b", "f02"))
    assert dict(found.attrib) == {"digest": "sha256:0b", "host": "f02"}
    # the record never counts as a request field
    assert request.from_raw(metadata.parse(el)).dedicated is True


# --------------------------------------------------------------------------- coverage

#: (element, attribute) -> the values it converted to, and the texts it refused, above
_ACCEPTED: dict[tuple[str, str], list[Any]] = {}
_REFUSED: dict[tuple[str, str], set[str]] = {}
#: what the tests above made the parser do, per element
_READ: set[str] = set()
_UNKNOWN_ATTRIBUTE: set[str] = set()
_UNEXPECTED_CHILD: set[str] = set()
_RAN: set[str] = set()


@pytest.fixture(autouse=True)
def _record(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    """Record what the parser does in each test of this module, for the last test."""
    convert, read = schema.Attr.convert, metadata._read
    unknown, unexpected = schema.Element.unknown_attribute, schema.Element.unexpected

    def converting(self: schema.Attr, text: str, element: str) -> Any:
        try:
            value = convert(self, text, element)
        except InputError:
            _REFUSED.setdefault((element, self.name), set()).add(text.strip())
            raise
        _ACCEPTED.setdefault((element, self.name), []).append(value)
        return value

    def reading(el: Any, spec: schema.Element, *args: Any) -> None:
        _READ.add(spec.name)
        read(el, spec, *args)

    def unknown_attribute(self: schema.Element, name: str) -> str:
        _UNKNOWN_ATTRIBUTE.add(self.name)
        return unknown(self, name)

    def unexpected_child(self: schema.Element, name: str | None) -> str:
        _UNEXPECTED_CHILD.add(self.name)
        return unexpected(self, name)

    monkeypatch.setattr(schema.Attr, "convert", converting)
    monkeypatch.setattr(metadata, "_read", reading)
    monkeypatch.setattr(schema.Element, "unknown_attribute", unknown_attribute)
    monkeypatch.setattr(schema.Element, "unexpected", unexpected_child)
    yield
    _RAN.add(request.node.name)


def _gaps(el: schema.Element, attr: schema.Attr) -> list[str]:
    """What the tests above never did with ``attr``: each value it accepts, accepted once,
    and one value it refuses (for a range, both neighbours), refused once."""
    good = set(_ACCEPTED.get((el.name, attr.name), []))
    bad = _REFUSED.get((el.name, attr.name), set())
    kind, where = attr.kind, f"<numahook:{el.name} {attr.name}>"
    want: set[Any]
    if isinstance(kind, schema.Bool):
        want, refuse = {True, False}, bool(bad)
    elif isinstance(kind, schema.Choice) and kind.number is not None:
        span = kind.number[0]
        want = {*kind.values, span.lo, span.hi}
        refuse = bool(bad - {str(span.lo - 1), str(span.hi + 1)}) and \
            {str(span.lo - 1), str(span.hi + 1)} <= bad
    elif isinstance(kind, schema.Choice):
        want, refuse = set(kind.values), bool(bad)
    elif isinstance(kind, schema.Int):
        want = {kind.lo, kind.hi}
        refuse = {str(kind.lo - 1), str(kind.hi + 1)} <= bad
    else:  # text is refused only when too long, for any attribute alike
        want, refuse = ({next(iter(good))} if good else {"any value"}), True
    gaps = [f"{where} never accepted {value!r}" for value in sorted(want - good, key=str)]
    return gaps + ([] if refuse else [f"{where} never refused a bad value"])


def test_every_element_attribute_and_value_is_parsed_above(
        request: pytest.FixtureRequest) -> None:
    mine = [i for i in request.session.items
            if i.path == request.node.path and i is not request.node]
    # a selection (-k, a node id) leaves tests out: this checks only after all of them ran
    selected = {getattr(i, "originalname", i.name) for i in mine}
    if {n for n in globals() if n.startswith("test_")} - selected - {request.node.name} or (
            {i.name for i in mine} - _RAN):
        pytest.skip("checks only after every other test of this module ran")
    gaps = []
    for el in schema.ELEMENTS:
        gaps += [f"<numahook:{el.name}> {what}" for what, seen in (
            ("never read", _READ), ("never refused an unknown attribute", _UNKNOWN_ATTRIBUTE),
            ("never refused a child element", _UNEXPECTED_CHILD)) if el.name not in seen]
        for attr in el.attrs:
            gaps += _gaps(el, attr)
    assert gaps == [], "add parser tests above for: " + "; ".join(gaps)
