"""``python3 -m lab up|demo|down|status|probe`` (``scripts/lab`` runs this)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lab import LabError, env, hostshape, say

#: Exit codes: the guest's view does not match the rendering / the lab could not do it.
MISMATCH = 1
FAILED = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one lab command."""
    ap = argparse.ArgumentParser(prog="scripts/lab", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="install, mount, start the daemons, build the probe (idempotent)")
    p = sub.add_parser("demo", help="up, then boot the reference's numavm and report")
    p.add_argument("--example", type=Path, help="domain XML to run (default examples/numavm.xml)")
    p.add_argument("--latency", type=int, default=0, metavar="SECONDS",
                   help="also run cyclictest in the guest for SECONDS")  # fmt: skip
    p.add_argument("--no-render", action="store_true",
                   help="run the XML as written, without numahook render")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="leave the domain running afterwards")
    sub.add_parser("down", help="remove the lab's domains, stop its daemons, undo its changes")
    sub.add_parser("status", help="what runs, what is mounted and reserved, who holds the lab")
    p = sub.add_parser("probe", help="build (or reuse) the guest probe only")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    host = sub.add_parser("host", help="the host VM lab: a multi-node systemd host in a VM")
    hsub = host.add_subparsers(dest="hostcmd", required=True)
    p = hsub.add_parser("up", help="build the image once, boot the VM, install the .deb")
    p.add_argument("--shape", default="default", choices=sorted(hostshape.SHAPES),
                   help="the VM's NUMA topology (default: 2 nodes of 2 CPUs, SLIT 10/21)")
    p.add_argument("--deb", type=Path, help="install this .deb instead of building one")
    p = hsub.add_parser("exec", help="run CMD ARGS... as root in the VM (exit status is CMD's)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    hsub.add_parser("status", help="the VM's state, shape and timings")
    hsub.add_parser("down", help="stop the VM and remove its overlay (idempotent)")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="lab: %(levelname)s: %(message)s",
    )
    try:
        if args.cmd == "host":
            return _host(args)
        if args.cmd == "up":
            env.up("cli")
            say("the lab is up; `scripts/lab down` undoes it")
            return 0
        if args.cmd == "demo":
            from lab import demo

            return demo.run_demo(
                args.example or demo.EXAMPLE,
                do_render=not args.no_render,
                latency=args.latency,
                keep=args.keep,
            )
        if args.cmd == "down":
            problems = env.down()
            for p in problems:
                say("NOT UNDONE: %s", p)
            if not problems:
                say("the lab is down")
            return FAILED if problems else 0
        if args.cmd == "status":
            print(json.dumps(env.status(), indent=2))
            return 0
        if args.cmd == "probe":
            from lab import probe

            built = probe.build(force=args.force)
            say("probe %s: %s %s", built.key, built.kernel, built.initrd)
            return 0
    except LabError as exc:
        say("error: %s", exc)
        return FAILED
    return FAILED


def _host(args: argparse.Namespace) -> int:
    from lab import hostvm

    if args.hostcmd == "up":
        hostvm.up(args.shape, args.deb)
        return 0
    if args.hostcmd == "exec":
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        argv = hostvm.exec_argv(cmd)
        sys.stdout.flush()
        os.execvp(argv[0], argv)
    if args.hostcmd == "status":
        print(json.dumps(hostvm.status(), indent=2))
        return 0
    hostvm.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
