"""The config file: defaults, the shipped file, and errors that name file:line and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from numahook import config, records
from numahook.config import Config
from numahook.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "numahook.conf"
SRC = "/etc/numahook/numahook.conf"


def _error(text: str, source: str = SRC) -> str:
    with pytest.raises(ConfigError) as exc:
        config.parse(text, source)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- defaults


def test_defaults_have_both_gates_on_and_safe_policies() -> None:
    cfg = Config()
    assert cfg.numa_gate is True
    assert cfg.realtime_gate is True
    assert cfg.rt_throttled == "refuse"
    assert cfg.rt_on_failure == "fail"
    assert cfg.rt_max_budget_us == 900000
    assert cfg.hugepages_compact is True
    assert cfg.lock_timeout == 10.0
    assert cfg.sysfs_root == "/sys"
    assert cfg.cgroup_root == "/sys/fs/cgroup"
    assert cfg.proc_root == "/proc"
    assert cfg.state_dir == "/run/numahook"
    assert cfg.libvirt_run == "/run/libvirt/qemu"
    assert cfg.libvirt_uri == "qemu:///system"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "; semicolon comment\n\n"])
def test_empty_file_is_the_defaults(text: str) -> None:
    cfg = config.parse(text, SRC)
    assert cfg == Config()
    assert cfg.source == SRC


def test_source_is_not_part_of_equality() -> None:
    assert config.parse("", "a") == config.parse("", "b")


def test_field_names_lists_every_setting() -> None:
    assert config.field_names() == list(records.field_names(Config))
    assert "numa_gate" in config.field_names()


# --------------------------------------------------------------------------- shipped file


def test_shipped_config_parses_with_both_gates_on() -> None:
    cfg = config.parse(SHIPPED.read_text(), str(SHIPPED))
    assert cfg.numa_gate is True
    assert cfg.realtime_gate is True
    assert cfg.rt_throttled == "refuse"
    assert cfg.rt_on_failure == "fail"
    assert cfg.hugepages_compact is True
    assert cfg.source == str(SHIPPED)


def test_shipped_config_matches_the_defaults() -> None:
    # the file documents the defaults; it must not silently change them
    assert config.parse(SHIPPED.read_text(), str(SHIPPED)) == Config()


def test_shipped_config_loads_through_load() -> None:
    cfg = config.load(SHIPPED)
    assert cfg.numa_gate and cfg.realtime_gate
    assert cfg.source == str(SHIPPED)


# --------------------------------------------------------------------------- values


def test_gates_off_are_read() -> None:
    cfg = config.parse("[features]\nNUMA = false\nRealtime = off\n", SRC)
    assert cfg.numa_gate is False
    assert cfg.realtime_gate is False


def test_one_gate_off_leaves_the_other_on() -> None:
    cfg = config.parse("[features]\nRealtime = no\n", SRC)
    assert cfg.realtime_gate is False
    assert cfg.numa_gate is True


@pytest.mark.parametrize(("word", "value"), [
    ("true", True), ("TRUE", True), ("yes", True), ("on", True), ("1", True),
    ("false", False), ("False", False), ("no", False), ("off", False), ("0", False),
])
def test_boolean_spellings(word: str, value: bool) -> None:
    assert config.parse(f"[features]\nNUMA = {word}\n", SRC).numa_gate is value


def test_keys_and_sections_are_case_insensitive() -> None:
    cfg = config.parse("[Features]\nnuma = false\n[REALTIME]\nThrottled = Delegate\n", SRC)
    assert cfg.numa_gate is False
    assert cfg.rt_throttled == "delegate"


def test_every_setting_can_be_set() -> None:
    text = """
[features]
NUMA = false
Realtime = false
[realtime]
throttled = delegate
on_failure = warn
max_budget_us = 500000
[hugepages]
compact = no
[cpus]
shared = 0-1,8
[power]
realtime_idle_states = 20
[hook]
lock_timeout = 2.5
[paths]
state_dir = /var/run/nh
sysfs_root = /srv/sys
cgroup_root = /srv/cgroup
proc_root = /srv/proc
libvirt_run = /srv/libvirt
[daemon]
probe_interval = 30
reconcile_interval = 1.5
resync_interval = 45
libvirt_uri = qemu+unix:///system
nfd_dir = /srv/nfd
textfile_dir = /srv/textfile
"""
    cfg = config.parse(text, SRC)
    assert cfg == Config(
        numa_gate=False, realtime_gate=False, rt_throttled="delegate", rt_on_failure="warn",
        rt_max_budget_us=500000, hugepages_compact=False, shared_cpus=frozenset({0, 1, 8}),
        rt_idle_states=20, lock_timeout=2.5,
        state_dir="/var/run/nh", sysfs_root="/srv/sys", cgroup_root="/srv/cgroup",
        proc_root="/srv/proc", libvirt_run="/srv/libvirt", probe_interval=30.0,
        reconcile_interval=1.5, resync_interval=45.0, libvirt_uri="qemu+unix:///system",
        nfd_dir="/srv/nfd",
        textfile_dir="/srv/textfile",
    )
    assert isinstance(cfg.rt_max_budget_us, int)


@pytest.mark.parametrize(("word", "value"), [
    ("disable", "disable"), ("Enable", "enable"), (" 7 ", 7), ("2147483646", 2147483646)])
def test_realtime_idle_states(word: str, value: str | int) -> None:
    got = config.parse(f"[power]\nrealtime_idle_states = {word}\n", SRC).rt_idle_states
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("word", ["0", "-1", "n/a", "2147483647", "max_latency:5", "0x10",
                                  "1.5", "²"])
def test_bad_realtime_idle_states_names_what_it_takes(word: str) -> None:
    """0 is no limit to the kernel, n/a its spelling of disable: neither is a limit."""
    assert _error(f"[power]\nrealtime_idle_states = {word}\n").endswith(
        f"{word!r} is not valid; set it to enable, disable, or a latency limit in "
        "microseconds from 1 to 2147483646")


# --------------------------------------------------------------------------- errors


def test_unknown_key_names_file_line_and_the_known_keys() -> None:
    msg = _error("[features]\nNUMA = true\nNUMAA = false\n")
    assert msg.startswith(f"{SRC}:3: ")
    assert "unknown setting [features] numaa" in msg
    assert msg.endswith("; correct its name or remove it")
    assert "[features] numa" in msg and "[features] realtime" in msg


def test_unknown_section_names_file_line_and_reason() -> None:
    msg = _error("[features]\nNUMA = true\n\n[featurs]\nRealtime = false\n")
    assert msg.startswith(f"{SRC}:5: ")
    assert "unknown setting [featurs] realtime" in msg
    assert "unknown section" in msg


def test_setting_outside_any_section_is_an_error_with_line() -> None:
    msg = _error("# comment\nNUMA = false\n")
    assert msg.startswith(f"{SRC}:")
    assert re.match(rf"^{re.escape(SRC)}:\d+: ", msg)
    assert "section" in msg.lower()


def test_duplicate_key_names_the_line() -> None:
    msg = _error("[features]\nNUMA = true\nNUMA = false\n")
    assert msg.startswith(f"{SRC}:3: ")
    assert "numa" in msg.lower()


def test_duplicate_section_names_the_line() -> None:
    msg = _error("[features]\nNUMA = true\n[hook]\nlock_timeout = 1\n[features]\n")
    assert msg.startswith(f"{SRC}:5: ")
    assert "features" in msg


@pytest.mark.parametrize("word", ["maybe", "enabled", "2", "tru"])
def test_bad_boolean(word: str) -> None:
    msg = _error(f"[features]\n\nRealtime = {word}\n")
    assert msg.startswith(f"{SRC}:3: [features] realtime: ")
    assert msg.endswith(f"{word!r} is not a boolean; set it to true or false "
                        "(also yes/no, on/off, 1/0)")


def test_bad_choice_lists_the_options() -> None:
    msg = _error("[realtime]\nthrottled = sometimes\n")
    assert msg.startswith(f"{SRC}:2: [realtime] throttled: ")
    assert msg.endswith("'sometimes' is not valid; set it to refuse or delegate")
    msg = _error("[realtime]\non_failure = ignore\n")
    assert msg.endswith("'ignore' is not valid; set it to fail or warn")


@pytest.mark.parametrize(("text", "words"), [
    ("[hook]\nlock_timeout = 0\n", ["0.0 is outside 0.1..120"]),
    ("[hook]\nlock_timeout = soon\n", ["'soon' is not a number"]),
    ("[realtime]\nmax_budget_us = 2000000\n", ["outside 1000..1000000"]),
    ("[realtime]\nmax_budget_us = 1.5\n", ["'1.5' is not a number"]),
    ("[daemon]\nprobe_interval = 0\n", ["outside 1..86400"]),
    ("[daemon]\nresync_interval = 0.5\n", ["[daemon] resync_interval", "outside 1..86400"]),
    ("[daemon]\nresync_interval = never\n", ["'never' is not a number"]),
])
def test_numbers_out_of_range_or_garbage(text: str, words: list[str]) -> None:
    msg = _error(text)
    assert msg.startswith(f"{SRC}:2: ")
    for w in words:
        assert w in msg


@pytest.mark.parametrize(("value", "words"), [
    ("0-x", "'0-x' is not a CPU number or a range A-B"),
    ("", "'' is not a CPU number or a range A-B"),
    ("3-1", "'3-1' is descending or beyond CPU 8191"),
    ("0,9000", "'9000' is descending or beyond CPU 8191"),
])
def test_bad_shared_cpu_list(value: str, words: str) -> None:
    msg = _error(f"[cpus]\nshared = {value}\n")
    assert msg == (f"{SRC}:2: [cpus] shared: {words}; set it to a CPU list such as 0-1,8 "
                   "(cpuset syntax)")


@pytest.mark.parametrize("value", ["run/numahook", "./state", "~/state", "/run/../etc", ""])
def test_relative_or_escaping_path_is_refused(value: str) -> None:
    msg = _error(f"[paths]\nstate_dir = {value}\n")
    assert msg.startswith(f"{SRC}:2: [paths] state_dir: ")
    assert "is not absolute or has a '..' part; set it to an absolute path without .." in msg


def test_line_number_points_at_the_key_in_its_section() -> None:
    # the same key name in another section above must not confuse the line number
    text = "[hugepages]\ncompact = yes\n\n[features]\n# compact = x\nNUMA = perhaps\n"
    msg = _error(text)
    assert msg.startswith(f"{SRC}:6: [features] numa")


def test_oversized_file_is_refused() -> None:
    msg = _error("#" * (2 << 20))
    assert msg.startswith(f"{SRC}: ")
    assert "larger than" in msg


@pytest.mark.parametrize("text", ["[DEFAULT]\nNUMA = false\n",
                                  "[features]\nRealtime = true\n[DEFAULT]\nNUMA = false\n"])
def test_default_section_is_not_silently_ignored(text: str) -> None:
    # regression: configparser never iterates [DEFAULT], so NUMA = false there left the
    # gate on without a word
    msg = _error(text)
    assert re.match(rf"^{re.escape(SRC)}:\d+: \[DEFAULT\] numa is not read by numahook", msg)
    assert "move it under its own section" in msg


# --------------------------------------------------------------------------- load / env


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("NUMAHOOK_CONFIG", raising=False)
    return monkeypatch


def test_missing_default_file_means_defaults(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_env.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    cfg = config.load()
    assert cfg == Config()
    assert cfg.numa_gate and cfg.realtime_gate


def test_default_path_is_read_when_present(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "numahook.conf"
    path.write_text("[features]\nNUMA = false\n")
    no_env.setattr(config, "DEFAULT_PATH", str(path))
    cfg = config.load()
    assert cfg.numa_gate is False
    assert cfg.source == str(path)


def test_env_points_at_another_file(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "other.conf"
    path.write_text("[features]\nRealtime = false\n")
    no_env.setenv("NUMAHOOK_CONFIG", str(path))
    no_env.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    cfg = config.load()
    assert cfg.realtime_gate is False
    assert cfg.source == str(path)


def test_env_naming_a_missing_file_is_an_error(no_env: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    no_env.setenv("NUMAHOOK_CONFIG", str(missing))
    with pytest.raises(ConfigError) as exc:
        config.load()
    msg = str(exc.value)
    assert msg.startswith(f"{missing}: no such file")
    assert "NUMAHOOK_CONFIG" in msg


def test_explicit_path_wins_over_env(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "env.conf"
    env_file.write_text("[features]\nNUMA = false\n")
    arg_file = tmp_path / "arg.conf"
    arg_file.write_text("[features]\nRealtime = false\n")
    no_env.setenv("NUMAHOOK_CONFIG", str(env_file))
    cfg = config.load(arg_file)
    assert cfg.numa_gate is True
    assert cfg.realtime_gate is False


def test_explicit_missing_path_is_an_error(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "missing.conf")


def test_errors_from_load_name_the_file_and_line(no_env: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[features]\nNUMA = true\nRealtime = sure\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:3: \[features\] realtime"):
        config.load(path)


def test_unreadable_config_is_one_line_error(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    directory = tmp_path / "dir.conf"
    directory.mkdir()
    with pytest.raises(ConfigError) as exc:
        config.load(directory)
    assert str(exc.value).startswith(f"{directory}: cannot be read")
    assert "\n" not in str(exc.value)


def test_non_utf8_config_is_one_line_error(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[features]\n# caf\xe9\nNUMA = true\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value).startswith(f"{path}: cannot be read")
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- regardless


def test_numbers_name_their_range_as_the_fix() -> None:
    msg = _error("[hook]\nlock_timeout = 0\n")
    assert msg.endswith("0.0 is outside 0.1..120; set it to a number from 0.1 to 120")


def test_a_syntax_error_names_the_line_and_where_the_syntax_is() -> None:
    msg = _error("[features]\nNUMA = true\nNUMA = false\n")
    assert msg.startswith(f"{SRC}:3: ") and msg.endswith(
        "; fix that line (numahook.conf(5) shows the syntax)")


def test_regardless_keeps_the_good_settings_and_defaults_the_bad(no_env: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """What stopped/release/reconnect read: the claim's state dir must still be found."""
    path = tmp_path / "bad.conf"
    path.write_text("[paths]\nstate_dir = /srv/state\n[realtime]\nthrottled = delgate\n"
                    "on_failure = warn\n")
    cfg, bad = config.load_regardless(path)
    assert (cfg.state_dir, cfg.rt_throttled, cfg.rt_on_failure) == ("/srv/state", "refuse",
                                                                   "warn")
    assert str(bad) == (f"{path}:4: [realtime] throttled: 'delgate' is not valid; set it to "
                        "refuse or delegate")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):
        config.load(path)


@pytest.mark.parametrize("text", ["[features]\nNUMA = true\nNUMA = false\n", "x" * (2 << 20)],
                         ids=["duplicate-key", "oversized"])
def test_regardless_gives_the_defaults_for_a_file_it_cannot_parse(
        no_env: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.conf"
    path.write_text(text)
    cfg, bad = config.load_regardless(path)
    assert cfg == Config() and str(bad).startswith(f"{path}")


def test_regardless_of_a_good_or_missing_file_reports_nothing(no_env: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    assert config.load_regardless(SHIPPED) == (config.load(SHIPPED), None)
    no_env.setattr(config, "DEFAULT_PATH", str(tmp_path / "none.conf"))
    assert config.load_regardless() == (Config(), None)
