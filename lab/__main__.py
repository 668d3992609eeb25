"""``python3 -m lab up|demo|down|status|probe`` (``scripts/lab`` runs this)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lab import LabError, env, say

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
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="lab: %(levelname)s: %(message)s",
    )
    try:
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


if __name__ == "__main__":
    sys.exit(main())
