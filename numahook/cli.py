"""numahook: NUMA passthrough and real-time tuning for libvirt domains, KubeVirt style.

Ask what a domain would get on this host (render, check), make a defined domain match
it (apply), ask whether this node is real-time capable (node), and see what the managed
domains hold (status). Every refusal is one sentence on stderr that ends with its fix.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence

from numahook import EXAMPLES_DIR, SCHEMA_DIR, SCHEMA_VERSION, __version__
from numahook import config as configmod
from numahook.core import cpulist, explain, render
from numahook.core.plan import Inputs
from numahook.errors import ConfigError, HostError, InputError, NumahookError, Refusal, StateError
from numahook.ops import domains, hostinputs
from numahook.ops.hostinputs import CpuSource
from numahook.tunables import REGISTRY

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_HOST = 0, 1, 2, 3
#: ``render --diff``: the definition differs from its rendering (diff(1)'s 1)
EXIT_DIFFERS = 1
#: ``node --check``: the node is not real-time capable (virt-host-validate's 1)
EXIT_NOT_CAPABLE = 1


def _source(args: argparse.Namespace) -> bytes:
    return domains.source(args.file, lambda: args.uri or _config(args).libvirt_uri)


def _print_json(doc: dict[str, object]) -> None:
    """Every ``--json`` output carries the schema version (docs/json.md, docs/schemas/)."""
    json.dump({"schema_version": SCHEMA_VERSION, **doc}, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _config(args: argparse.Namespace) -> configmod.Config:
    cfg = configmod.load(args.config)
    from numahook.records import replace

    return replace(cfg, **{k: getattr(args, k) for k in ("sysfs_root", "cgroup_root",
                                                         "proc_root", "state_dir", "libvirt_run")
                           if getattr(args, k, None)})


def _inputs(args: argparse.Namespace, doc: render.Parsed) -> tuple[Inputs, CpuSource]:
    cfg = _config(args)
    override = cpulist.parse(args.cpuset, "--cpuset") if args.cpuset is not None else None
    from numahook.state.statedir import StateDir
    return hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid or None, override,
                             StateDir(cfg.state_dir), devices=doc.facts.bdfs,
                             count_held=not args.no_state)


def cmd_render(args: argparse.Namespace) -> int:
    source = _source(args)
    doc = render.parse(source)
    inp, _ = _inputs(args, doc)
    result = render.render_parsed(doc, inp)
    if args.diff:
        before = source.decode("utf-8", "replace").splitlines(keepends=True)
        after = (result.xml + "\n").splitlines(keepends=True)
        diff = list(difflib.unified_diff(before, after, f"{args.file}",
                                         f"{args.file} (rendered)"))
        sys.stdout.writelines(diff)
        # as diff(1) and kubectl diff: 1 means "differs", so scripts can test for drift
        return EXIT_DIFFERS if diff else EXIT_OK
    sys.stdout.write(result.xml + "\n")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    doc = render.parse(_source(args))
    inp, view = _inputs(args, doc)
    ev = render.evaluate(doc, inp)
    if ev.plan is not None:  # the pool's supply, and prepare's own host checks (realtime-node)
        supply = hostinputs.page_supply(ev.plan, inp.config.sysfs_root, view.pages_held)
        ev.checks.extend(c for c in [supply] + [
            t.precondition(inp.config, doc, ev.plan) for t in REGISTRY if t.wanted(doc)] if c)
    if args.json:
        out = explain.evaluation_dict(doc.facts.name, ev)
        out["available_cpus"] = cpulist.format(inp.available)
        out["host"] = view.describe()
        _print_json(out)
    else:
        print(explain.evaluation_text(doc.facts.name, ev))
        print(f"  host: {view.describe()}")
    return EXIT_OK if ev.failed is None else EXIT_REFUSED


def cmd_node(args: argparse.Namespace) -> int:
    """A report exits 0; ``--check`` exits 1 on a node that is not real-time capable."""
    from numahook.node import probe, report
    from numahook.ops import holders

    cfg = _config(args)
    reachable = None if args.no_libvirt else probe.check_libvirt(cfg.libvirt_uri)
    cap = probe.probe(cfg, reachable)  # HostError (exit 3) only if the host cannot be read
    held = None if args.check else holders.of_host(cfg)
    if args.json:
        _print_json({**cap.to_json(), **({"dedicated": holders.node_json(held)} if held else {})})
    elif args.check:
        print(report.verdict(cap))
    else:
        print(report.text_report(cap, holders.node_rows(held) if held else ()))
    return EXIT_NOT_CAPABLE if args.check and not cap.realtime_capable else EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    import libvirt

    from numahook.ops import redefine
    from numahook.state.statedir import StateDir

    cfg = _config(args)
    conn = domains.connect(args.uri or cfg.libvirt_uri)
    try:
        dom = domains.lookup(conn, args.name)
        try:
            outcome = redefine.apply(conn, dom, cfg, StateDir(cfg.state_dir))
        except libvirt.libvirtError as exc:
            raise HostError(f"libvirt failed while redefining {args.name}: "
                            f"{exc.get_error_message()}; check that libvirtd is running and "
                            "try again") from None
    finally:
        domains.close(conn)
    if outcome is None:
        raise InputError(f"{args.name} has no <numahook:domain> metadata; add it to opt in "
                         f"(numahook(8), OPTING IN; examples in {EXAMPLES_DIR})")
    if outcome.refused:
        raise Refusal(outcome.refused)
    print(f"{outcome.name}: redefined ({outcome.reason})" if outcome.changed
          else f"{outcome.name}: already rendered for this host")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from numahook.core import hostmap
    from numahook.ops import holders, status

    cfg = _config(args)
    conn = None
    try:
        conn = domains.connect(args.uri or cfg.libvirt_uri, readonly=True)
    except HostError as exc:
        print(f"numahook: {exc}; showing running domains only", file=sys.stderr)
    try:
        doc = status.collect(cfg, conn)
        host = holders.host_map(cfg, doc)  # every holder's, whichever domain is asked for
        if args.domain is not None:
            doc = status.only(doc, args.domain, conn)
    finally:
        if conn is not None:
            domains.close(conn)
    if args.json:
        _print_json({**doc, "host": hostmap.to_json(host)})
        return EXIT_OK
    if args.domain is None:  # the map is the host's: one domain's lines stand alone
        # colour and the terminal's width on a terminal only (and never under NO_COLOR,
        # no-color.org): a pipe gets the same plain 80 columns every time
        tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        width = shutil.get_terminal_size().columns if tty else 80
        print("\n".join(hostmap.text(host, tty and not os.environ.get("NO_COLOR"), width)))
        print()
    print(status.text(doc))
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    """As ``sshd -t``: numahookd.service's ExecReload, so a bad file fails the reload."""
    cfg = configmod.load(args.file)  # a ConfigError is main's: one line, exit 2
    print(f"{cfg.path}: ok" + (" (no file: the defaults apply)" * (cfg.source == "(defaults)")))
    return EXIT_OK


#: (code, meaning): every --help shows them, and scripts/gen-man writes them to numahook(8)
EXIT_STATUS = (
    ("0", "success"),
    ("1", "refused: a precondition failed and the reason is on stderr, one sentence ending "
          "with its fix; also render --diff when the definition differs, and node --check "
          "on a node that is not real-time capable"),
    ("2", "bad input or usage: malformed XML, metadata or configuration"),
    ("3", "the host or libvirt failed"),
)
#: (variable, meaning), as EXIT_STATUS
ENVIRONMENT = (
    ("NUMAHOOK_CONFIG", f"the configuration file when --config is not given (default "
                        f"{configmod.DEFAULT_PATH})"),
)


def epilog(exit_status: Sequence[tuple[str, str]],
           environment: Sequence[tuple[str, str]]) -> str:
    """The --help epilog: exit status and environment, wrapped like argparse's options."""
    import textwrap

    def block(title: str, rows: Sequence[tuple[str, str]]) -> str:
        width = max(len(k) for k, _ in rows) + 2
        lines = [f"{title}:"]
        for key, text in rows:
            wrapped = textwrap.wrap(text, 78 - width - 2) or [""]
            lines.append(f"  {key:<{width}}{wrapped[0]}")
            lines += [" " * (width + 2) + w for w in wrapped[1:]]
        return "\n".join(lines)

    return block("exit status", exit_status) + "\n\n" + block("environment", environment)


EPILOG = epilog(EXIT_STATUS, ENVIRONMENT)


def _roots(p: argparse.ArgumentParser) -> None:
    """Where the host is read from: the real trees, or copies of another host's."""
    g = p.add_argument_group("configuration and host trees (the real ones by default)")
    g.add_argument("--config", metavar="FILE",
                   help=f"read this configuration file (default {configmod.DEFAULT_PATH}, "
                   "or $NUMAHOOK_CONFIG)")
    g.add_argument("--sysfs-root", metavar="DIR", help="read sysfs here instead of /sys")
    g.add_argument("--cgroup-root", metavar="DIR",
                   help="read cgroupfs here instead of /sys/fs/cgroup")
    g.add_argument("--proc-root", metavar="DIR", help="read procfs here instead of /proc")


def _common(p: argparse.ArgumentParser) -> None:
    _roots(p)
    g = p.add_argument_group("state")
    g.add_argument("--libvirt-run", metavar="DIR",
                   help="libvirt's status directory (default /run/libvirt/qemu)")
    g.add_argument("--state-dir", metavar="DIR",
                   help="numahook's claims and node.json (default /run/numahook)")


def _what_if(p: argparse.ArgumentParser) -> None:
    """Only render and check ask what a domain would get: apply and status act on, or
    show, the host as it is, so they do not take these."""
    _common(p)
    g = p.add_argument_group("what if")
    g.add_argument("--cpuset", metavar="LIST",
                   help="use this CPU list (e.g. 2-7,12) instead of the partition's cpuset, "
                   "to ask what a domain would get")
    g.add_argument("--no-state", action="store_true",
                   help="as on an empty host: count no CPU as held, neither by running "
                   "managed domains nor by numahook's claims")


def _uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uri", metavar="URI",
                   help="connect to this libvirt (default libvirt_uri of the configuration, "
                   "qemu:///system)")


def _command(sub: argparse._SubParsersAction, name: str, summary: str,
             description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=description, epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


#: what render and check read: the same words in both --help texts and numahook(8)
SOURCE_HELP = ("domain XML file, - for stdin, or the name or UUID of a domain libvirt has "
               "defined (its persistent definition); a file wins over a domain of the same "
               "name")


def parser() -> argparse.ArgumentParser:
    """The whole command line; scripts/gen-man writes the man page and completion from it."""
    ap = argparse.ArgumentParser(prog="numahook", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"numahook {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log what numahook reads and "
                    "decides on stderr")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            title="commands", help="see numahook COMMAND --help")
    p = _command(sub, "render", "print the domain XML as numahook renders it for this host", (
        "Print the domain XML with the pinning, guest NUMA cells, hugepage binding and\n"
        "real-time settings numahook gives it on this host. Nothing is changed; the\n"
        "definition libvirt holds is changed by `numahook apply` or numahookd."))
    _what_if(p)
    _uri(p)
    p.add_argument("--diff", action="store_true",
                   help="print a unified diff against the input instead; exit 1 if they "
                   "differ")
    p.add_argument("file", metavar="FILE|NAME", help=SOURCE_HELP)
    p.set_defaults(func=cmd_render)
    p = _command(sub, "check", "list every precondition of a domain as passed or failed", (
        "Check every precondition of the domain on this host (feature gates, dedicated\n"
        "CPUs, hugepages, topology, the real-time mask, the node, device locality) and show\n"
        "the pinning and cells it would get, and each passthrough device's host node, root\n"
        "complex and place in the guest. It shows the hugepages a start would reserve on\n"
        "each host node, with the pages free there and how many the node's free memory\n"
        "could add, and fails when the node cannot give them. A domain on hugepages\n"
        "without guestMappingPassthrough gets its dedicated CPUs on one host node and all\n"
        "its memory bound strict to that node. Exits 1 if any precondition fails, naming\n"
        "each fix."))
    _what_if(p)
    _uri(p)
    p.add_argument("--json", action="store_true",
                   help=f"print one JSON object ({SCHEMA_DIR}/check.schema.json)")
    p.add_argument("file", metavar="FILE|NAME", help=SOURCE_HELP)
    p.set_defaults(func=cmd_check)
    p = _command(sub, "node", "say whether this node is real-time capable, and why", (
        "Report whether this node is real-time capable (KubeVirt's test:\n"
        "kernel.sched_rt_runtime_us is -1), what a real-time domain gets here, and each\n"
        "fact that decides how well it runs (RT group scheduling and budget, PREEMPT_RT,\n"
        "isolated CPUs, hugepages per node, libvirt), each with its fix; then each node's\n"
        "free dedicated CPUs, and which domains hold the others."))
    _common(p)  # the state: who holds the free dedicated CPUs it lists
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help=f"print one JSON object ({SCHEMA_DIR}/node.schema.json)")
    out.add_argument("--check", action="store_true",
                     help="for scripts: print the one-line verdict and exit 1 if the node is "
                     "not real-time capable (as virt-host-validate does)")
    p.add_argument("--no-libvirt", action="store_true",
                   help="do not try to connect to libvirt (reported as unknown)")
    p.set_defaults(func=cmd_node)
    p = _command(sub, "apply", "render a defined domain for this host and redefine it", (
        "Render the domain libvirt has defined as NAME for this host and redefine it if\n"
        "that changes anything, so that its next start passes the hook. numahookd does\n"
        "this by itself when it runs."))
    _common(p)
    _uri(p)
    p.add_argument("name", metavar="NAME", help="the libvirt domain's name or UUID")
    p.set_defaults(func=cmd_apply)
    p = _command(sub, "status", "show what the managed domains hold and how their vCPUs run", (
        "Draw the host as a map: per NUMA node its cores and threads, and for each CPU\n"
        "the domain that holds it and as what (vCPU n, * when it runs SCHED_FIFO, ! when\n"
        "real-time without it; e emulator, h sibling held idle, c claimed by a start),\n"
        "or . free, ~ shared ([cpus] shared), - outside the cpuset, x offline; in colour\n"
        "on a terminal. Then list the managed domains: pinning, guest cells, each vCPU's\n"
        "scheduling as read back from its thread, each passthrough device's host node,\n"
        "root complex and place in the guest, the kvm-pit thread's CPUs, the hugepages\n"
        "numahook reserved, claims left by domains that no longer run, and what a running\n"
        "domain's next start changes (its persistent definition rendered now; needs\n"
        "libvirt). Works from files while libvirt is down. With NAME, only that domain's\n"
        "lines, in the same form."))
    _common(p)
    _uri(p)
    p.add_argument("--json", action="store_true",
                   help=f"print one JSON object ({SCHEMA_DIR}/status.schema.json)")
    p.add_argument("domain", metavar="NAME", nargs="?",
                   help="show only this domain: its name or UUID")
    p.set_defaults(func=cmd_status)
    p = _command(sub, "config", "check numahook.conf before the hook and numahookd read it", (
        "numahook.conf(5): the hook reads it on every call, numahookd at start and reload."))
    p = _command(p.add_subparsers(dest="action", required=True, metavar="ACTION",
                                  title="actions", help="see numahook config ACTION --help"),
                 "check", "read FILE as numahook does: ok, or its first error", (
        "Read FILE as the hook and numahookd do: print \"FILE: ok\" and exit 0, or its first\n"
        "error with the line and the fix and exit 2, as sshd -t does. numahookd.service runs\n"
        "it before each reload: a bad file fails the reload and the old one stays in force."))
    p.add_argument("file", metavar="FILE", nargs="?",
                   help=f"the file to check (default $NUMAHOOK_CONFIG, else "
                   f"{configmod.DEFAULT_PATH}, where a missing file means the defaults)")
    p.set_defaults(func=cmd_config_check)
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
