"""The <numahook:domain> metadata element: every field, defaults, and strict refusals."""

from __future__ import annotations

import pytest
from lxml import etree

from numahook import NAMESPACE
from numahook.core import metadata, render, request
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
    assert "allowed: dedicatedCpuPlacement, ioThreadsPolicy, isolateEmulatorThread" in msg


def test_unknown_attribute_on_domain_numa_realtime_and_passthrough() -> None:
    assert "<numahook:domain> has unknown attribute 'x'" in refused(
        f"<numahook:domain {NS} x='1'/>")
    assert "<numahook:numa> has unknown attribute 'policy'" in refused(
        cpu("", "<numahook:numa policy='x'><numahook:guestMappingPassthrough/></numahook:numa>"))
    assert "<numahook:guestMappingPassthrough> has unknown attribute 'a'" in refused(
        cpu("", "<numahook:numa><numahook:guestMappingPassthrough a='1'/></numahook:numa>"))
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


@pytest.mark.parametrize("priority", ["0", "100", "-1", "abc", "", "1.5", "999", "+5"])
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
    assert "<numahook:realtime> attribute mask is too long" in msg


def test_messages_never_echo_huge_values() -> None:
    msg = refused(cpu(f'ioThreadsPolicy="{"x" * 4000}"'))
    assert len(msg) < 300


# --------------------------------------------------------------------------- module API


def test_find_and_parse_directly() -> None:
    root = etree.fromstring(domain(cpu('dedicatedCpuPlacement="true"')))
    el = metadata.find(root)
    assert el is not None
    raw = metadata.parse(el)
    assert raw.dedicated == "true"  # raw text; validation is request's job
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
    # the record never counts as a request field
    assert request.from_raw(metadata.parse(el)).dedicated is True
