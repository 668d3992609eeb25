"""Man pages, --help and bash completion: written from the parsers, so they cannot drift.

scripts/gen-man writes numahook(8), numahookd(8), numahook.conf(5), numahook-metadata(5)
and the bash completion of both commands from numahook/cli.py, numahook/daemon/main.py,
numahook/config.py and numahook/core/schema.py; the committed files must be exactly what
it writes now.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from numahook import NAMESPACE, cli, config
from numahook.core import schema

# numahookd's parser sits beside its libvirt imports (python3-libvirt; the Python 3.9 run of
# scripts/test has no libvirt, the Debian one has)
daemon_main = pytest.importorskip("numahook.daemon.main")

REPO = Path(__file__).resolve().parents[2]
MAN = REPO / "packaging" / "man"
COMPLETION = REPO / "packaging" / "completion"


def gen_man() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gen_man", str(REPO / "scripts" / "gen-man"))
    spec = importlib.util.spec_from_loader("gen_man", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_committed_pages_and_completion_are_what_gen_man_writes() -> None:
    gen = gen_man()
    assert set(gen.OUTPUTS) == {MAN / "numahook.8", MAN / "numahookd.8",
                                MAN / "numahook.conf.5", MAN / "numahook-metadata.5",
                                COMPLETION / "numahook", COMPLETION / "numahookd"}
    stale = [str(p.relative_to(REPO)) for p, make in gen.OUTPUTS.items()
             if not p.exists() or p.read_text() != make()]
    assert stale == [], f"run scripts/gen-man: {stale} are out of date"


def _parsers() -> dict[str, object]:
    ap = cli.parser()
    subs = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    return {"numahook": ap, **{f"numahook {n}": p for n, p in subs.choices.items()},
            "numahookd": daemon_main.parser()}


def roff(option: str) -> str:
    return option.replace("-", "\\-")


def test_every_option_and_variable_is_in_its_man_page() -> None:
    pages = {"numahook": (MAN / "numahook.8").read_text(),
             "numahookd": (MAN / "numahookd.8").read_text()}
    for name, p in _parsers().items():
        page = pages[name.split()[0]]
        for action in p._actions:  # type: ignore[attr-defined]
            for opt in action.option_strings:
                assert roff(opt) in page, f"{name} {opt} is not in its man page"
    # what the issue found missing
    for needle in ("\\-\\-uri", "\\-\\-no\\-state", "\\-\\-no\\-libvirt", "\\-\\-version",
                   "\\-\\-state\\-dir", "NUMAHOOK_CONFIG", "\\-\\-check"):
        assert needle in pages["numahook"], needle
    for needle in ("\\-\\-state\\-dir", "NOTIFY_SOCKET", "NUMAHOOK_CONFIG"):
        assert needle in pages["numahookd"], needle
    assert "\\fBnumahook config check\\fR [\\fIoptions\\fR] [\\fIFILE\\fR]" in pages["numahook"]
    assert ".SS numahook config check" in pages["numahook"]


def test_numahook_conf_5_has_every_setting_with_its_default() -> None:
    page = (MAN / "numahook.conf.5").read_text()
    defaults = config.Config()
    for (section, key), (field, _) in config._SCHEMA.items():
        assert f".SH [{section}]" in page
        entry = page.split(f"\\fB{key.replace('_', '_')}\\fR = ", 1)
        assert len(entry) == 2, f"[{section}] {key} is not in numahook.conf(5)"
        value = getattr(defaults, field)
        shown = ("true" if value else "false") if isinstance(value, bool) else (
            str(int(value)) if isinstance(value, float) and value.is_integer() else str(value))
        assert f"Default: {roff(shown)}." in entry[1].split(".TP")[0], (section, key)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed "
                    "(scripts/test installs groff-base)")
@pytest.mark.parametrize("page", ["numahook.8", "numahookd.8", "numahook.conf.5",
                                  "numahook-metadata.5"])
def test_groff_renders_the_page_without_a_warning(page: str) -> None:
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN / page)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_numahook_metadata_5_has_every_element_attribute_value_and_default() -> None:
    """Issue 31: the metadata format where the operator looks, from the parser's table."""
    page = (MAN / "numahook-metadata.5").read_text()
    plain = page.replace("\\-", "-").replace("\\fB", "").replace("\\fI", "").replace(
        "\\fR", "")
    assert NAMESPACE in plain and "dedicatedCpuPlacement" in plain
    for el in schema.DOMAIN.walk():
        section = plain.split(f".SS <numahook:{el.name}>\n", 1)
        assert len(section) == 2, f"<numahook:{el.name}> has no section"
        body = section[1].split("\n.SS ", 1)[0].split("\n.SH ", 1)[0]
        for attr in el.attrs:
            entry = body.split(f".TP\n{attr.name}=", 1)
            assert len(entry) == 2, f"{el.name} {attr.name} is not in numahook-metadata(5)"
            text = entry[1].split("\n.TP\n" + next(
                (a.name for a in el.attrs[el.attrs.index(attr) + 1:]), "\0"), 1)[0]
            if isinstance(attr.kind, schema.Choice):
                assert all(f".B {v}\n" in text for v in attr.kind.values), attr.name
            if isinstance(attr.kind, schema.Int):
                assert f'"{attr.kind.lo}-{attr.kind.hi}"' in text, attr.name
            if attr.required:
                assert "Always written." in text, attr.name
            elif attr.absent:
                assert f"Absent: {attr.absent.replace('`', '')}." in text, attr.name
            else:
                shown = str(attr.default).lower()
                assert f"Default: {shown}." in text, attr.name
    # numahook(8) sends its reader there
    numahook_8 = (MAN / "numahook.8").read_text()
    assert "numahook\\-metadata(5) lists every" in numahook_8
    assert ".BR numahook\\-metadata (5)" in numahook_8


def test_the_metadata_page_example_is_the_shipped_one_and_parses() -> None:
    from numahook.core import render

    page = (MAN / "numahook-metadata.5").read_text().replace("\\-", "-")
    example = page.split(".SH EXAMPLE", 1)[1].split(".nf\n", 1)[1].split("\n.fi", 1)[0]
    assert example.replace(" ", "") in (REPO / "examples" / "fedora-realtime.xml").read_text(
        ).replace(" ", "")
    doc = render.parse(f"<domain><name>x</name><metadata>{example}</metadata>"
                       "<memory>1024</memory></domain>")
    assert doc.request is not None and doc.request.realtime and doc.request.passthrough


def test_help_is_written_for_operators() -> None:
    for name, p in _parsers().items():
        text = p.format_help()  # type: ignore[attr-defined]
        assert "``" not in text and "wires" not in text, f"{name} --help reads like a docstring"
        assert "exit status:" in text, f"{name} --help does not give its exit status"
        for action in p._actions:  # type: ignore[attr-defined]
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def complete(script: str, line: str) -> list[str]:
    """What bash offers for ``line`` (the word after its last space is being completed)."""
    words = line.split(" ")
    prog = f"""
source {COMPLETION / script}
COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE='{line}'
_{script}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True,
                          text=True, timeout=30, check=True)
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completion(tmp_path: Path) -> None:
    assert set(complete("numahook", "numahook ")) >= {"render", "check", "node", "apply",
                                                      "status", "--version"}
    assert set(complete("numahook", "numahook node --c")) == {"--check", "--cgroup-root",
                                                              "--config"}
    assert "--uri" in complete("numahook", "numahook status --")
    (tmp_path / "trees").mkdir()
    (tmp_path / "tree.xml").write_text("")
    assert complete("numahook", f"numahook check --sysfs-root {tmp_path}/tr") == [
        f"{tmp_path}/trees"]
    assert complete("numahook", f"numahook check {tmp_path}/tree.") == [f"{tmp_path}/tree.xml"]
    assert complete("numahook", "numahook render --cpuset 0") == []
    # a command with actions of its own (issue 25's config check): the action, then a file
    assert complete("numahook", "numahook config ") == ["check"]
    assert complete("numahook", f"numahook config check {tmp_path}/tree.") == [
        f"{tmp_path}/tree.xml"]
    assert "--daemonize" in complete("numahookd", "numahookd --")
    assert complete("numahookd", f"numahookd --state-dir {tmp_path}/tr") == [
        f"{tmp_path}/trees"]


def test_daemonize_without_python_daemon_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "daemon", None)  # import daemon raises ImportError
    assert daemon_main.main(["--daemonize", "--config", "/dev/null"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "install python3-daemon" in err


def test_readme_and_numahook_8_show_the_same_three_ways_to_opt_in() -> None:
    """An operator reads one or the other (issue 31): the commands must be the same."""
    gen = gen_man()
    readme = (REPO / "README.md").read_text()
    page = (MAN / "numahook.8").read_text().replace("\\-", "-").replace("\\e", "\\")
    assert [when for when, _, _ in gen.OPTING_IN] == [
        "a defined domain: virsh metadata", "a new domain: virt-install --xml",
        "any domain: virsh edit"]
    for _, command, _ in gen.OPTING_IN:
        assert f"  {command}\n" in readme, f"the README lacks {command}"
        assert f"\n{command}\n" in page, f"numahook(8) lacks {command}"
    assert "https://numahook.io/xmlns/domain/1" in page and "OPTING IN" in page
