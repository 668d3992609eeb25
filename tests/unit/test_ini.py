"""numahook/ini.py against configparser, which stays the reference for every shape.

Where ini.simple_items returns items, configparser (as numahook.config sets it up) must
read the same text without an error and give the same settings in the same order; where
it declines, numahook.config asks configparser, so a decline is never wrong, only slower.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from numahook import config, ini

REPO = Path(__file__).resolve().parents[2]

_WORD = st.text(alphabet="abcXYZ_ -.#;:=[]\t", min_size=0, max_size=8)
_LINE = st.one_of(
    st.builds(lambda w: f"[{w}]", _WORD),
    st.builds(lambda k, d, v: f"{k}{d}{v}", _WORD, st.sampled_from(["=", " = ", ":", ": "]),
              _WORD),
    st.builds(lambda c, w: f"{c}{w}", st.sampled_from(["#", ";", "  #", "\t;"]), _WORD),
    st.sampled_from(["", "  ", "[DEFAULT]", "[features]", "[Features]", "numa = true",
                     "  continued", "\tkey = v", "novalue", "= x", "[a]]", "[a] x"]),
)


def reference(text: str) -> list[tuple[str, str, str]] | None:
    """configparser's reading, or None where it refuses the text or has [DEFAULT] keys."""
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(text, "t")
    except configparser.Error:
        return None
    if cp.defaults():
        return None
    return [(s, k, v) for s in cp.sections() for k, v in cp.items(s)]


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_what_the_simple_reader_takes_configparser_reads_the_same(lines: list[str],
                                                                  eol: str) -> None:
    text = eol.join(lines)
    got = ini.simple_items(text)
    if got is None:
        return
    assert reference(text) == [(s, k, v) for s, k, v, _ in got]
    for section, key, _value, no in got:
        line = text.split("\n")[no - 1].strip()
        assert line.lower().startswith(key) and section is not None


def test_the_shipped_file_and_the_usual_shapes_take_the_simple_path() -> None:
    shipped = (REPO / "packaging" / "numahook.conf").read_text()
    assert ini.simple_items(shipped) is not None
    text = "# gates\n[features]\nnuma = true\n; off for now\nrealtime: false\n\n[paths]\n" \
           "state_dir=/run/x\n"
    assert ini.simple_items(text) == [("features", "numa", "true", 3),
                                      ("features", "realtime", "false", 5),
                                      ("paths", "state_dir", "/run/x", 8)]


def test_shapes_only_configparser_reads_are_declined() -> None:
    for text in ("[features]\nnuma = true\n  continued\n", "[DEFAULT]\nnuma = true\n",
                 "numa = true\n", "[features]\nnuma\n", "[features]\nnuma = 1\nNUMA = 0\n",
                 "[features]\n[features]\n", "[features]\n= true\n", "[a] x\n"):
        assert ini.simple_items(text) is None, text


def test_config_gives_configparsers_errors_for_what_the_simple_reader_declines() -> None:
    for text, message in (
            ("[features]\nnuma = true\nnuma = false\n", "option 'numa' in section 'features'"
                                                       " already exists"),
            ("numa = true\n", "File contains no section headers"),
            ("[features]\nnuma = true\n  off\n", "[features] numa: 'true\\noff' is not a "
                                                 "boolean")):
        try:
            config.parse(text, "t.conf")
        except config.ConfigError as exc:
            assert message in str(exc), (text, str(exc))
        else:
            raise AssertionError(f"accepted: {text!r}")
    # the simple path names the line itself
    try:
        config.parse("[features]\n\nnuma = maybe\n", "t.conf")
    except config.ConfigError as exc:
        assert str(exc).startswith("t.conf:3: [features] numa: 'maybe' is not a boolean")
    else:
        raise AssertionError("accepted numa = maybe")
