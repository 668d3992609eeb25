"""``/etc/numahook/numahook.conf``: feature gates and the policies the hook and daemon share.

INI, because Python 3.9's standard library reads it and operators know it. Unknown
sections or keys are errors, not silently ignored: a typo in a gate must not quietly
leave a feature on.
"""

from __future__ import annotations

import os

from numahook import ini, records
from numahook.errors import ConfigError
from numahook.records import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DEFAULT_PATH = "/etc/numahook/numahook.conf"


@record(frozen=True)
class Config:
    #: [features] NUMA: guestMappingPassthrough may be used (KubeVirt's "NUMA" gate)
    numa_gate: bool = True
    #: [features] Realtime: realtime may be used
    realtime_gate: bool = True
    #: [features] PCINUMAAwareTopology: passthrough devices go behind an expander bus on
    #: their guest cell (KubeVirt's gate of the same name, VEP 115)
    pci_numa_topology: bool = True
    #: [realtime] throttled: what a real-time domain gets on a node with
    #: kernel.sched_rt_runtime_us >= 0: "refuse" it, or "delegate" RT group budget to it
    rt_throttled: str = "refuse"
    #: [realtime] on_failure: FIFO could not be applied after start: "fail" the start or "warn"
    rt_on_failure: str = "fail"
    #: [realtime] max_budget_us: cap on the RT runtime delegated to one vCPU per period
    rt_max_budget_us: int = 900000
    #: [cpus] shared: the host's shared housekeeping CPUs (Nova's ``cpu_shared_set``): the
    #: emulator and IO threads of emulatorThreadPolicy="share" domains run there, and no
    #: dedicated vCPU is ever pinned there
    shared_cpus: frozenset[int] = frozenset()
    #: [hugepages] compact: compact memory and retry once when a node delivers too few pages
    hugepages_compact: bool = True
    #: [power] realtime_idle_states: a real-time domain's idleStates when it sets none:
    #: "enable", "disable" or a latency limit in µs (numahook/tunables/power.py)
    rt_idle_states: str | int = "disable"
    #: [hook] lock_timeout: seconds a hook call waits for the state lock
    lock_timeout: float = 10.0
    #: [paths]
    state_dir: str = "/run/numahook"
    sysfs_root: str = "/sys"
    cgroup_root: str = "/sys/fs/cgroup"
    proc_root: str = "/proc"
    libvirt_run: str = "/run/libvirt/qemu"
    #: [daemon]
    probe_interval: float = 60.0
    reconcile_interval: float = 5.0
    #: [daemon] resync_interval: every definition is listed and rendered again this often,
    #: so one whose DEFINED event was lost is rendered within this bound
    resync_interval: float = 60.0
    libvirt_uri: str = "qemu:///system"
    nfd_dir: str = "/etc/kubernetes/node-feature-discovery/features.d"
    textfile_dir: str = "/var/lib/prometheus/node-exporter"
    source: str = field(default="(defaults)", compare=False)

    @property
    def path(self) -> str:
        """The file to name in messages: the one read, or where one would be read from."""
        return DEFAULT_PATH if self.source == "(defaults)" else self.source


class _Converter:
    """A setting's parser, and the words numahook.conf(5) uses for what it accepts.

    scripts/gen-man writes the manual from ``values``, so the manual cannot promise what
    the parser refuses.
    """

    __slots__ = ("parse", "values")

    def __init__(self, parse: Callable[[str], Any], values: str) -> None:
        self.parse, self.values = parse, values

    def __call__(self, text: str) -> Any:
        return self.parse(text)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


_bool = _Converter(_parse_bool, "true or false (also yes/no, on/off, 1/0)")


def _choice(*options: str) -> _Converter:
    def conv(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"{text!r} is not valid")
        return value

    return _Converter(conv, " or ".join(options))


def _number(lo: float, hi: float, kind: type = float) -> _Converter:
    def conv(text: str) -> Any:
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside {lo}..{hi}")
        return value

    what = "an integer" if kind is int else "a number"
    span = [str(int(x)) if float(x).is_integer() else str(x) for x in (lo, hi)]
    return _Converter(conv, f"{what} from {span[0]} to {span[1]}")


#: the largest pm_qos_resume_latency_us the kernel takes (core/schema.py's PM_QOS_MAX_US;
#: the base layer may not import core)
_PM_QOS_MAX_US = 2147483646


def _parse_idle(text: str) -> str | int:
    """As ``<numahook:power idleStates>``: a word, or a latency limit from 1 µs (0 would
    be no limit at all to the kernel, the opposite of what a number asks)."""
    value = text.strip().lower()
    if value in ("enable", "disable"):
        return value
    if value.isascii() and value.isdigit() and len(value) <= 10 and \
            1 <= int(value) <= _PM_QOS_MAX_US:
        return int(value)
    raise ValueError(f"{text!r} is not valid")


_idle = _Converter(_parse_idle, "enable, disable, or a latency limit in microseconds from 1 "
                   f"to {_PM_QOS_MAX_US}")


def _parse_abspath(text: str) -> str:
    value = text.strip()
    if not value.startswith("/") or ".." in value.split("/") or "\0" in value:
        raise ValueError(f"{value!r} is not absolute or has a '..' part")
    return value


_abspath = _Converter(_parse_abspath, "an absolute path without ..")


def _parse_cpus(text: str) -> frozenset[int]:
    """A kernel cpulist, bounded as core/cpulist's is (config sits below core, so the few
    lines are repeated rather than imported)."""
    import re

    cpus: set[int] = set()
    for item in text.split(","):
        m = re.fullmatch(r"\s*([0-9]{1,4})(?:-([0-9]{1,4}))?\s*", item)
        if not m:
            raise ValueError(f"{item.strip()!r} is not a CPU number or a range A-B")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not lo <= hi <= _MAX_CPU:
            raise ValueError(f"{item.strip()!r} is descending or beyond CPU {_MAX_CPU}")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


#: core/cpulist.MAX_CPU: x86_64's largest NR_CPUS, less one
_MAX_CPU = 8191
_cpus = _Converter(_parse_cpus, "a CPU list such as 0-1,8 (cpuset syntax)")
_text = _Converter(str.strip, "text")


# (section, key) -> (field name, converter)
_SCHEMA: dict[tuple[str, str], tuple[str, _Converter]] = {
    ("features", "numa"): ("numa_gate", _bool),
    ("features", "realtime"): ("realtime_gate", _bool),
    ("features", "pcinumaawaretopology"): ("pci_numa_topology", _bool),
    ("realtime", "throttled"): ("rt_throttled", _choice("refuse", "delegate")),
    ("realtime", "on_failure"): ("rt_on_failure", _choice("fail", "warn")),
    ("realtime", "max_budget_us"): ("rt_max_budget_us", _number(1000, 1000000, int)),
    ("hugepages", "compact"): ("hugepages_compact", _bool),
    ("cpus", "shared"): ("shared_cpus", _cpus),
    ("power", "realtime_idle_states"): ("rt_idle_states", _idle),
    ("hook", "lock_timeout"): ("lock_timeout", _number(0.1, 120)),
    ("paths", "state_dir"): ("state_dir", _abspath),
    ("paths", "sysfs_root"): ("sysfs_root", _abspath),
    ("paths", "cgroup_root"): ("cgroup_root", _abspath),
    ("paths", "proc_root"): ("proc_root", _abspath),
    ("paths", "libvirt_run"): ("libvirt_run", _abspath),
    ("daemon", "probe_interval"): ("probe_interval", _number(1, 86400)),
    ("daemon", "reconcile_interval"): ("reconcile_interval", _number(0.5, 3600)),
    ("daemon", "resync_interval"): ("resync_interval", _number(1, 86400)),
    ("daemon", "libvirt_uri"): ("libvirt_uri", _text),
    ("daemon", "nfd_dir"): ("nfd_dir", _abspath),
    ("daemon", "textfile_dir"): ("textfile_dir", _abspath),
}
#: What each setting does, for numahook.conf(5) (scripts/gen-man); the same keys as _SCHEMA.
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("features", "numa"): "Feature gate for guestMappingPassthrough (KubeVirt's NUMA gate). "
    "Off: domains that ask for it are refused, with this setting named.",
    ("features", "realtime"): "Feature gate for <numahook:realtime>. Off: real-time domains "
    "are refused.",
    ("features", "pcinumaawaretopology"): "With guestMappingPassthrough on a q35 machine, put "
    "each passthrough PCI device behind a pcie-expander-bus bound to the guest cell of its "
    "host node, one per pair of cell and host root complex, so the guest sees where it is "
    "(KubeVirt's PCINUMAAwareTopology). Off: devices stay where libvirt puts them.",
    ("realtime", "throttled"): "What a real-time domain gets on a node with RT throttling on "
    "(kernel.sched_rt_runtime_us >= 0) and RT group scheduling, where libvirt's vCPU "
    "cgroups have no RT budget: refuse the start, naming the fix, or delegate RT group "
    "budget down the domain's cgroup path, split between its real-time vCPUs.",
    ("realtime", "on_failure"): "SCHED_FIFO could not be applied after the start: fail the "
    "start, or warn and let the domain run without it.",
    ("realtime", "max_budget_us"): "With throttled = delegate: the most RT runtime, in "
    "microseconds per period, delegated to one vCPU.",
    ("hugepages", "compact"): "When a node delivers fewer hugepages than a start needs, "
    "compact memory and try once more before refusing.",
    ("cpus", "shared"): "The host's shared housekeeping CPUs (Nova's cpu_shared_set). The "
    "emulator and IO threads of domains with emulatorThreadPolicy='share' run there, "
    "SCHED_OTHER, instead of on a dedicated CPU. numahook takes these CPUs out of the "
    "dedicated pool: no dedicated vCPU is pinned to them, whatever the partition's cpuset "
    "says. They must lie in the cpuset of the partition of each domain that uses them, and "
    "no dedicated domain may hold one. The vCPUs outside a domain's dedicatedMask float "
    "there too. Unset: emulatorThreadPolicy='share' and dedicatedMask are refused.",
    ("power", "realtime_idle_states"): "The idle states a real-time domain's vCPU and "
    "isolated emulator CPUs get when its <numahook:power> sets no idleStates, written to "
    "each CPU's pm_qos_resume_latency_us from prepare until the stop: disable (no idle state "
    "deeper than polling, the lowest wake-up latency and the most power drawn), a latency "
    "limit in microseconds, or enable (leave them as they are).",
    ("hook", "lock_timeout"): "Seconds a hook call waits for numahook's state lock before it "
    "refuses the start.",
    ("paths", "state_dir"): "Claims, reservations and node.json.",
    ("paths", "sysfs_root"): "Where sysfs is read (for tests and unusual hosts).",
    ("paths", "cgroup_root"): "Where cgroupfs is read and written.",
    ("paths", "proc_root"): "Where procfs is read.",
    ("paths", "libvirt_run"): "libvirt's status directory for QEMU domains.",
    ("daemon", "probe_interval"): "Seconds between numahookd's probes of the node (and its "
    "publishing); hotplug and the RT sysctl are also noticed between probes.",
    ("daemon", "reconcile_interval"): "Seconds between numahookd's reconcile passes "
    "(FIFO backstop, orphaned claims, re-rendering).",
    ("daemon", "resync_interval"): "Seconds between numahookd's full resyncs: every "
    "definition is listed and rendered again, so one whose DEFINED event was lost is "
    "rendered within this bound.",
    ("daemon", "libvirt_uri"): "The libvirt connection numahookd and numahook apply/status use.",
    ("daemon", "nfd_dir"): "node-feature-discovery's local feature directory; the label file "
    "is written only if it exists. numahookd's unit can write it only if it existed when "
    "numahookd started: after creating it, run systemctl restart numahookd (a reload is "
    "not enough); another directory must be added to the unit's ReadWritePaths= first.",
    ("daemon", "textfile_dir"): "node_exporter's textfile collector directory; numahook.prom "
    "is written only if it exists. As for nfd_dir, a directory created after numahookd "
    "started needs systemctl restart numahookd.",
}
_MAX_CONFIG = 1 << 20


def _line_of(text: str, section: str, key: str) -> int:
    """Best-effort line number of ``key`` in ``section`` for error messages."""
    import re

    current = None
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[([^\]]+)\]", s)
        if m:
            current = m.group(1).strip().lower()
        elif current == section and re.match(rf"^{re.escape(key)}\s*[=:]", s, re.IGNORECASE):
            return no
    return 0


def _configparser_items(text: str, source: str) -> list[ini.Item]:
    """What configparser reads from a file ini.simple_items does not take; its errors."""
    import configparser

    cp = configparser.ConfigParser(interpolation=None, strict=True)
    # keys fold to lower case: configparser's documented hook, typed as a method by typeshed
    cp.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(text, source)
    except configparser.Error as exc:
        line = getattr(exc, "lineno", 0)
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{source}:{line}: {reason}; fix that line (numahook.conf(5) "
                          "shows the syntax)") from None
    for key in cp.defaults():
        line = _line_of(text, cp.default_section.lower(), key)
        raise ConfigError(f"{source}:{line}: [{cp.default_section}] {key} is not read by "
                          "numahook; move it under its own section, e.g. [features]")
    # line 0: found by _line_of, and only for a message (it compiles a pattern per key)
    return [(section, key, raw, 0) for section in cp.sections()
            for key, raw in cp.items(section)]


def parse(text: str, source: str = "<string>",
          skipped: list[ConfigError] | None = None) -> Config:
    """Parse config text; every error names the file, the line, the reason and the fix.

    With ``skipped``, a bad setting is appended there and left at its default instead of
    raised: for the calls that must give back what a claim holds whatever the file says,
    and should still honour its good settings (a ``[paths] state_dir`` above all).
    """
    if len(text) > _MAX_CONFIG:
        raise ConfigError(f"{source}: the file is larger than {_MAX_CONFIG} bytes; shorten it")
    items = ini.simple_items(text)
    if items is None:
        items = _configparser_items(text, source)
    values: dict[str, Any] = {}
    for section, key, raw, line in items:
        sec = section.strip().lower()
        entry = _SCHEMA.get((sec, key))
        try:
            if entry is None:
                known = ", ".join(sorted({f"[{s}] {k}" for s, k in _SCHEMA if s == sec}))
                hint = f"known keys there: {known}" if known else "unknown section"
                line = line or _line_of(text, sec, key)
                raise ConfigError(f"{source}:{line}: unknown setting [{section}] {key} "
                                  f"({hint}); correct its name or remove it")
            name, conv = entry
            try:
                values[name] = conv(raw)
            except ValueError as exc:
                line = line or _line_of(text, sec, key)
                raise ConfigError(f"{source}:{line}: [{section}] {key}: {exc}; set it to "
                                  f"{conv.values}") from None
        except ConfigError as exc:
            if skipped is None:
                raise
            skipped.append(exc)
    return Config(source=source, **values)


def _read(path: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """(the path, its text); None: no file at the default path, which means defaults."""
    explicit = path is not None or "NUMAHOOK_CONFIG" in os.environ
    p = os.fspath(path or os.environ.get("NUMAHOOK_CONFIG", DEFAULT_PATH))
    try:
        with open(p, encoding="utf-8") as fh:
            return p, fh.read(_MAX_CONFIG + 1)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"{p}: no such file; create it or point NUMAHOOK_CONFIG elsewhere") from None
        return p, None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot be read: {exc}; fix its permissions or "
                          "encoding (UTF-8)") from None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config; a missing file at the default path means defaults (gates on)."""
    p, text = _read(path)
    return Config() if text is None else parse(text, p)


def load_regardless(path: str | os.PathLike[str] | None = None
                    ) -> tuple[Config, ConfigError | None]:
    """The config for calls that must not fail on it, and the first error it has.

    ``stopped``, ``release`` and ``reconnect`` give back or adopt what a claim records;
    a typo in the file must not leave a domain's CPUs and hugepages held (issue 25). The
    file's good settings are kept, its bad ones are at their defaults, and a file that
    cannot be read or parsed at all gives the built-in defaults.
    """
    try:
        p, text = _read(path)
        if text is None:
            return Config(), None
        skipped: list[ConfigError] = []
        cfg = parse(text, p, skipped)
    except ConfigError as exc:
        return Config(), exc
    return cfg, (skipped[0] if skipped else None)


def field_names() -> list[str]:
    return list(records.field_names(Config))
