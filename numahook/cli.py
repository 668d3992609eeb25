"""``numahook``: render, check, apply, node, status. Every refusal is one sentence on stderr.

Exit codes: 0 success; 1 refused (a precondition failed, the reason is on stderr);
2 bad input or usage (malformed XML, metadata or config); 3 the host or libvirt failed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from numahook import __version__
from numahook import config as configmod
from numahook.core import cpulist, explain, render
from numahook.core.plan import Inputs
from numahook.errors import (
    ConfigError,
    HostError,
    InputError,
    NumahookError,
    Refusal,
    StateError,
)
from numahook.ops import hostinputs
from numahook.ops.hostinputs import CpuSource
from numahook.xml.safe import MAX_XML_BYTES as _MAX_STDIN

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_HOST = 0, 1, 2, 3


def _read_source(path: str) -> bytes:
    """Bytes, not text: the XML parser decodes (UTF-8, UTF-16, a declared encoding)."""
    if path == "-":
        data = sys.stdin.buffer.read(_MAX_STDIN + 1)
    else:
        try:
            with open(path, "rb") as fh:
                data = fh.read(_MAX_STDIN + 1)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_STDIN:
        raise InputError(f"{path} is larger than {_MAX_STDIN} bytes")
    return data


def _config(args: argparse.Namespace) -> configmod.Config:
    cfg = configmod.load(args.config)
    overrides = {k: getattr(args, k) for k in ("sysfs_root", "cgroup_root", "proc_root",
                                                "state_dir", "libvirt_run")
                 if getattr(args, k, None)}
    if overrides:
        from numahook.records import replace
        cfg = replace(cfg, **overrides)
    return cfg


def _inputs(args: argparse.Namespace, doc: render.Parsed) -> tuple[Inputs, CpuSource]:
    cfg = _config(args)
    override = cpulist.parse(args.cpuset, "--cpuset") if args.cpuset is not None else None
    from numahook.state.statedir import StateDir
    state = StateDir(cfg.state_dir) if not args.no_state else None
    return hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid or None, override, state)


def cmd_render(args: argparse.Namespace) -> int:
    source = _read_source(args.file)
    doc = render.parse(source)
    inp, _ = _inputs(args, doc)
    result = render.render_parsed(doc, inp)
    if args.diff:
        before = source.decode("utf-8", "replace").splitlines(keepends=True)
        after = (result.xml + "\n").splitlines(keepends=True)
        sys.stdout.writelines(difflib.unified_diff(before, after, f"{args.file}",
                                                   f"{args.file} (rendered)"))
    else:
        sys.stdout.write(result.xml + "\n")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    doc = render.parse(_read_source(args.file))
    inp, view = _inputs(args, doc)
    ev = render.evaluate(doc, inp)
    if args.json:
        out = explain.evaluation_dict(doc.facts.name, ev)
        out["available_cpus"] = cpulist.format(inp.available)
        out["host"] = view.describe()
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(explain.evaluation_text(doc.facts.name, ev))
        print(f"  host: {view.describe()}")
    return EXIT_OK if ev.failed is None else EXIT_REFUSED


def cmd_node(args: argparse.Namespace) -> int:
    """Report whether this node is real-time capable and why; a report, so exit 0."""
    from numahook.node import probe, report

    cfg = _config(args)
    reachable = None if args.no_libvirt else probe.check_libvirt(cfg.libvirt_uri)
    cap = probe.probe(cfg, reachable)  # HostError (exit 3) only if the host cannot be read
    if args.json:
        json.dump(cap.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(report.text_report(cap))
    return EXIT_OK


def _libvirt(uri: str, readonly: bool = False) -> Any:
    try:
        import libvirt
    except ImportError:
        raise HostError("python3-libvirt is not installed; install it to talk to "
                        "libvirt") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostError(f"cannot connect to libvirt at {uri} ({exc.get_error_message()}); "
                        "is libvirtd (or virtqemud) running?") from None


def cmd_apply(args: argparse.Namespace) -> int:
    import libvirt

    from numahook.ops import redefine
    from numahook.state.statedir import StateDir

    cfg = _config(args)
    conn = _libvirt(args.uri or cfg.libvirt_uri)
    try:
        try:
            dom = conn.lookupByName(args.name)
        except libvirt.libvirtError:
            raise InputError(f"libvirt has no domain named {args.name!r}; check `virsh list "
                             "--all`") from None
        try:
            outcome = redefine.apply(conn, dom, cfg, StateDir(cfg.state_dir))
        except libvirt.libvirtError as exc:
            raise HostError(f"libvirt failed while redefining {args.name}: "
                            f"{exc.get_error_message()}; check that libvirtd is running and "
                            "try again") from None
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
    if outcome is None:
        raise InputError(f"{args.name} has no <numahook:domain> metadata; add it to opt in")
    if outcome.refused:
        raise Refusal(outcome.refused)
    print(f"{outcome.name}: redefined ({outcome.reason})" if outcome.changed
          else f"{outcome.name}: already rendered for this host")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from numahook.ops import status

    cfg = _config(args)
    conn = None
    try:
        conn = _libvirt(args.uri or cfg.libvirt_uri, readonly=True)
    except HostError as exc:
        print(f"numahook: {exc}; showing running domains only", file=sys.stderr)
    try:
        doc = status.collect(cfg, conn)
    finally:
        if conn is not None:
            conn.close()
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(status.text(doc))
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"config file (default {configmod.DEFAULT_PATH})")
    p.add_argument("--sysfs-root", help="directory standing for /sys")
    p.add_argument("--cgroup-root", help="directory standing for /sys/fs/cgroup")
    p.add_argument("--proc-root", help="directory standing for /proc")
    p.add_argument("--libvirt-run", help="libvirt's status directory (/run/libvirt/qemu)")
    p.add_argument("--state-dir", help="numahook's state directory (/run/numahook)")
    p.add_argument("--cpuset", help="use this CPU list instead of the partition's cpuset "
                   "(what-if and tests)")
    p.add_argument("--no-state", action="store_true",
                   help="ignore claims in the state directory")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="numahook", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"numahook {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="print the domain XML rendered for this host")
    _common(p)
    p.add_argument("--diff", action="store_true", help="print a unified diff instead")
    p.add_argument("file", help="domain XML file, or - for stdin")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("check", help="list every precondition as passed or failed")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("file", help="domain XML file, or - for stdin")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("node", help="report whether this node is real-time capable, and why")
    p.add_argument("--config", help=f"config file (default {configmod.DEFAULT_PATH})")
    p.add_argument("--sysfs-root", help="directory standing for /sys")
    p.add_argument("--cgroup-root", help="directory standing for /sys/fs/cgroup")
    p.add_argument("--proc-root", help="directory standing for /proc")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-libvirt", action="store_true",
                   help="do not try to connect to libvirt (reported as unknown)")
    p.set_defaults(func=cmd_node)
    p = sub.add_parser("apply", help="render a defined domain for this host and redefine it")
    _common(p)
    p.add_argument("--uri", help="libvirt URI (default from the config: qemu:///system)")
    p.add_argument("name", help="domain name")
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("status", help="managed domains: pinning, cells, vCPU scheduling, "
                       "hugepages held")
    _common(p)
    p.add_argument("--uri", help="libvirt URI (default from the config: qemu:///system)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="numahook: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except Refusal as exc:
        print(f"numahook: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (InputError, ConfigError) as exc:
        print(f"numahook: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (HostError, StateError) as exc:
        print(f"numahook: {exc}", file=sys.stderr)
        return EXIT_HOST
    except NumahookError as exc:
        print(f"numahook: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
