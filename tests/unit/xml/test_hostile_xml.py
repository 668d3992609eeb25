"""Hostile domain XML: entities, expansion bombs, nesting, huge values, bad bytes, DOCTYPEs.

Anyone allowed to define a domain controls the XML that root-run numahook parses. Each
case must end in exactly one ``InputError`` line (exit 2 from the CLI), never a
traceback, never an entity's content, never unbounded time or memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from numahook import NAMESPACE
from numahook.core import render
from numahook.errors import InputError, NumahookError
from numahook.xml import safe
from tests.fixtures.hosts import host_roots

REPO = Path(__file__).resolve().parents[3]
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

META = (f"<metadata><numahook:domain xmlns:numahook='{NAMESPACE}'><numahook:cpu "
        "dedicatedCpuPlacement='true'/></numahook:domain></metadata>")
OK_DOMAIN = f"<domain type='kvm'><name>ok</name>{META}<memory>1048576</memory><vcpu>2</vcpu>" \
            "</domain>"

XXE = ('<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
       f"<domain type='kvm'><name>&xxe;</name>{META}<memory>1048576</memory></domain>")
XXE_PARAM = ('<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY % p SYSTEM '
             '"file:///etc/passwd"> %p;]>\n<domain><name>x</name></domain>')
EXTERNAL_DTD = ('<?xml version="1.0"?>\n<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/evil.dtd">'
                f"\n<domain><name>x</name>{META}<memory>1</memory></domain>")
PLAIN_DOCTYPE = f"<!DOCTYPE domain>\n<domain><name>x</name>{META}<memory>1</memory></domain>"
LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
                    for i in range(1, 10))
          + f"]>\n<domain><name>&lol9;</name>{META}<memory>1</memory></domain>")
ENTITY_ONLY = f"<domain><name>x</name>{META}<memory>1</memory>" \
              "<description><![CDATA[<!ENTITY a 'b'>]]></description></domain>"


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("host")
    r = host_roots(base, "single", 1)
    (base / "libvirt-run").mkdir()
    r["run"] = base / "libvirt-run"
    return r


def cli(roots: dict[str, Path], target: str, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [PY, "-m", "numahook.cli", "check", "--cpuset", "0-3", "--no-state",
            "--config", str(REPO / "packaging/numahook.conf"),
            "--sysfs-root", str(roots["sysfs"]), "--cgroup-root", str(roots["cgroup"]),
            "--proc-root", str(roots["proc"]), "--libvirt-run", str(roots["run"]), target]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(argv, input=stdin, capture_output=True, cwd=REPO, env=full_env,
                          timeout=120, check=False)
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"))


def one_input_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[:500])
    assert proc.stdout == ""
    assert proc.stderr.endswith("\n")
    assert proc.stderr.count("\n") == 1, proc.stderr[:500]
    assert proc.stderr.startswith("numahook: ")
    assert len(proc.stderr) < 1000
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    return proc.stderr


def write(tmp_path: Path, data: str | bytes, name: str = "dom.xml") -> str:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return str(path)


def test_sanity_a_good_domain_passes_the_same_command(roots: dict[str, Path],
                                                     tmp_path: Path) -> None:
    proc = cli(roots, write(tmp_path, OK_DOMAIN))
    assert proc.returncode == 0, proc.stderr
    assert "ok   dedicated-cpus" in proc.stdout


# --------------------------------------------------------------------------- entities


@pytest.mark.parametrize("doc", [XXE, XXE_PARAM, EXTERNAL_DTD, PLAIN_DOCTYPE],
                         ids=["xxe", "parameter-entity", "external-dtd", "plain-doctype"])
def test_doctype_and_external_entities_are_refused(roots: dict[str, Path], tmp_path: Path,
                                                   doc: str) -> None:
    proc = cli(roots, write(tmp_path, doc))
    one_input_error(proc, "DOCTYPE or ENTITY declaration, which is not allowed")
    assert "root:" not in proc.stdout + proc.stderr


def test_xxe_is_not_resolved_by_the_library() -> None:
    with pytest.raises(InputError) as exc:
        safe.parse(XXE)
    assert "root:" not in str(exc.value)
    with pytest.raises(InputError):
        render.parse(XXE.encode())


def test_billion_laughs_is_refused_quickly_with_bounded_memory(roots: dict[str, Path],
                                                               tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            safe.parse(LAUGHS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # expanded, it would be 3 GB of "lol"
    one_input_error(cli(roots, write(tmp_path, LAUGHS)), "DOCTYPE or ENTITY")


def test_entity_bomb_without_the_doctype_guard_is_still_not_expanded() -> None:
    # UTF-16 hides the ASCII "<!DOCTYPE" from the byte check; libxml2 must still refuse
    # the expansion (entity reference loop / amplification) rather than build 3 GB
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as exc:
            safe.parse(LAUGHS.replace('version="1.0"', 'version="1.0" encoding="UTF-16"')
                          .encode("utf-16"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
    assert "\n" not in str(exc.value)


def test_utf16_xxe_content_is_never_resolved() -> None:
    data = XXE.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16")
    try:
        root = safe.parse(data)
    except InputError:
        return
    assert "root:" not in safe.tostring(root)
    assert (root.findtext("name") or "") == ""


def test_utf16_doctype_is_refused_too() -> None:
    data = XXE.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16")
    with pytest.raises(InputError, match="DOCTYPE"):
        safe.parse(data)


def test_entity_text_inside_cdata_is_refused_conservatively() -> None:
    # the byte check is conservative: it refuses the text even where it is only data
    with pytest.raises(InputError, match="DOCTYPE or ENTITY"):
        safe.parse(ENTITY_ONLY)


def test_xinclude_is_not_processed(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = (f"<domain><name>x</name>{META}<memory>1048576</memory><description>"
           "<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='/etc/passwd' "
           "parse='text'/></description></domain>")
    root = safe.parse(doc)
    assert "root:" not in safe.tostring(root)
    proc = cli(roots, write(tmp_path, doc))
    assert proc.returncode == 0, proc.stderr
    assert "root:" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- structure


def test_deep_nesting_is_refused(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = f"<domain><name>x</name>{META}<memory>1</memory><description>" \
          + "<a>" * 100 + "</a>" * 100 + "</description></domain>"
    one_input_error(cli(roots, write(tmp_path, doc)), "nests deeper than 64 levels")


def test_very_deep_nesting_is_refused_by_the_parser(roots: dict[str, Path],
                                                    tmp_path: Path) -> None:
    doc = "<domain>" + "<a>" * 100000 + "</a>" * 100000 + "</domain>"
    one_input_error(cli(roots, write(tmp_path, doc)), "not well-formed XML")


def test_deep_nesting_library_level() -> None:
    ok = "<a>" * 63 + "</a>" * 63
    assert safe.parse(ok).tag == "a"
    with pytest.raises(InputError, match="nests deeper than 64"):
        safe.parse("<a>" * 65 + "</a>" * 65)


def test_oversized_document_is_refused(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = OK_DOMAIN.replace("</domain>", "<!--" + "x" * (11 << 20) + "--></domain>")
    one_input_error(cli(roots, write(tmp_path, doc)), "larger than 10485760 bytes")
    with pytest.raises(InputError, match="more than the 10485760 allowed"):
        safe.parse(doc)


@pytest.mark.parametrize("doc", ["", "   \n", "not xml at all", "<domain>", "<a></b>",
                                 "\x01\x02\x03"],
                         ids=["empty", "blank", "text", "unclosed", "mismatched", "control"])
def test_malformed_documents(roots: dict[str, Path], tmp_path: Path, doc: str) -> None:
    one_input_error(cli(roots, write(tmp_path, doc)))


def test_binary_garbage(roots: dict[str, Path], tmp_path: Path) -> None:
    one_input_error(cli(roots, write(tmp_path, bytes(range(256)) * 16)))


def test_not_a_domain(roots: dict[str, Path], tmp_path: Path) -> None:
    one_input_error(cli(roots, write(tmp_path, "<network><name>n</name></network>")),
                    "expected a <domain> document, got <network>")


# --------------------------------------------------------------------------- values


def test_huge_attribute_in_our_metadata(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = OK_DOMAIN.replace("dedicatedCpuPlacement='true'",
                            f"dedicatedCpuPlacement='true' ioThreadsPolicy='{'a' * (8 << 20)}'")
    one_input_error(cli(roots, write(tmp_path, doc)), "attribute ioThreadsPolicy is too long")


def test_huge_cpuset_attribute(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = OK_DOMAIN.replace("<vcpu>", f"<cputune><vcpupin vcpu='0' cpuset='{'0,' * 400000}0'/>"
                                      "</cputune><vcpu>")
    one_input_error(cli(roots, write(tmp_path, doc)), "<vcpupin> is", "more than 65536")


def test_huge_attribute_on_an_unrelated_element(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = OK_DOMAIN.replace("</domain>", f"<description a='{'A' * (9 << 20)}'/></domain>")
    proc = cli(roots, write(tmp_path, doc))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr[:300]
    assert "ok   dedicated-cpus" in proc.stdout


@pytest.mark.parametrize("doc", [
    f"<domain><name>x</name>{META}<memory>{'9' * 200000}</memory></domain>",
    f"<domain><name>x</name>{META}<memory unit='{'k' * 200000}'>1</memory></domain>",
    f"<domain><name>x</name>{META}<memory>1</memory><memoryBacking><hugepages>"
    f"<page size='{'9' * 200000}'/></hugepages></memoryBacking></domain>",
    f"<domain><name>x</name>{META}<memory>1</memory><cputune><vcpupin vcpu='0' "
    f"cpuset='{'a' * 60000}'/></cputune></domain>",
], ids=["memory-text", "memory-unit", "page-size", "cpuset-item"])
def test_huge_values_do_not_flood_the_message(doc: str) -> None:
    with pytest.raises(InputError) as exc:
        render.parse(doc)
    assert len(str(exc.value)) < 1000


def test_huge_vcpu_text_is_truncated_in_the_message(roots: dict[str, Path],
                                                    tmp_path: Path) -> None:
    doc = OK_DOMAIN.replace("<vcpu>2</vcpu>", f"<vcpu>{'9' * 200000}</vcpu>")
    one_input_error(cli(roots, write(tmp_path, doc)), "<vcpu> '9999", "between 1 and 4096")


# --------------------------------------------------------------------------- bytes


def test_nul_byte(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = OK_DOMAIN.replace("<name>ok</name>", "<name>o\x00k</name>")
    one_input_error(cli(roots, write(tmp_path, doc)), "not well-formed XML")


def test_non_utf8_file(roots: dict[str, Path], tmp_path: Path) -> None:
    doc = OK_DOMAIN.replace("<name>ok</name>", "<name>caf\xe9</name>").encode("latin-1")
    one_input_error(cli(roots, write(tmp_path, doc)), "not proper UTF-8")


def test_utf16_file(roots: dict[str, Path], tmp_path: Path) -> None:
    one_input_error(cli(roots, write(tmp_path, XXE.encode("utf-16"))), "DOCTYPE")


def test_declared_latin1_is_decoded_as_declared(roots: dict[str, Path],
                                                tmp_path: Path) -> None:
    """Bytes go to libxml2, which honours the declaration, as libvirt's own parser does."""
    doc = ('<?xml version="1.0" encoding="ISO-8859-1"?>'
           + OK_DOMAIN.replace("<name>ok</name>", "<name>caf\xe9</name>")).encode("latin-1")
    proc = cli(roots, write(tmp_path, doc))
    assert proc.returncode == 0, proc.stderr
    assert "caf\xe9:" in proc.stdout


def test_invalid_utf8_bytes_give_a_one_line_message() -> None:
    doc = OK_DOMAIN.replace("<name>ok</name>", "<name>caf\xe9</name>").encode("latin-1")
    with pytest.raises(InputError) as exc:
        safe.parse(doc)
    assert "\n" not in str(exc.value)


def test_non_utf8_stdin_with_a_strict_locale(roots: dict[str, Path]) -> None:
    doc = OK_DOMAIN.replace("<name>ok</name>", "<name>caf\xe9</name>").encode("latin-1")
    one_input_error(cli(roots, "-", stdin=doc, env={"PYTHONIOENCODING": "utf-8"}))


def test_non_utf8_stdin_with_the_c_locale(roots: dict[str, Path]) -> None:
    doc = OK_DOMAIN.replace("<name>ok</name>", "<name>caf\xe9</name>").encode("latin-1")
    one_input_error(cli(roots, "-", stdin=doc, env={"LC_ALL": "C", "PYTHONIOENCODING": ""}))


def test_stdin_good_document(roots: dict[str, Path]) -> None:
    proc = cli(roots, "-", stdin=OK_DOMAIN.encode())
    assert proc.returncode == 0, proc.stderr
    assert "ok   dedicated-cpus" in proc.stdout


# --------------------------------------------------------------------------- opt-in


COMMENTED = ("<domain type='kvm'><name>sneaky</name><metadata><!-- "
             f"<numahook:domain xmlns:numahook='{NAMESPACE}'><numahook:cpu "
             "dedicatedCpuPlacement='true'/></numahook:domain> --></metadata>"
             "<memory>1048576</memory></domain>")
IN_TEXT = (f"<domain type='kvm'><name>sneaky</name><description>{NAMESPACE} "
           "&lt;numahook:domain&gt;</description><metadata><![CDATA[<numahook:domain/>]]>"
           "</metadata><memory>1048576</memory></domain>")
ELSEWHERE = (f"<domain type='kvm'><name>sneaky</name><memory>1048576</memory><devices>"
             f"<numahook:domain xmlns:numahook='{NAMESPACE}'><numahook:cpu "
             "dedicatedCpuPlacement='true'/></numahook:domain></devices></domain>")


@pytest.mark.parametrize("doc", [COMMENTED, IN_TEXT, ELSEWHERE],
                         ids=["comment", "text-and-cdata", "outside-metadata"])
def test_our_element_outside_metadata_is_not_an_opt_in(roots: dict[str, Path], tmp_path: Path,
                                                       doc: str) -> None:
    assert render.parse(doc).request is None
    proc = cli(roots, write(tmp_path, doc))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == ("numahook: sneaky has no <numahook:domain> metadata, so numahook "
                           "leaves it alone; add the metadata element to opt in (numahook(8), "
                           "OPTING IN)\n")


def test_every_library_error_is_a_numahook_error() -> None:
    # whatever the input, parse raises only our errors (the CLI maps them to one line)
    for doc in (XXE, LAUGHS, PLAIN_DOCTYPE, "", "<a>" * 70, "\x00", COMMENTED + "<x/>",
                "<domain/>", "<domain><name>x</name><memory unit='x'>1</memory></domain>"):
        try:
            render.parse(doc)
        except NumahookError as exc:
            assert str(exc)
