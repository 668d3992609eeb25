"""Dispatch one libvirt hook call: ``DOMAIN OP SUBOP EXTRA`` with the domain XML on stdin.

What a failure does depends on the call (docs/architecture.md): a non-zero exit aborts
``prepare``, ``started``, ``migrate`` and ``restore``; on ``reconnect`` it would make
libvirtd kill the running VM, so there, and for ``stopped``/``release``, this always
exits 0. stderr is shown to the user by libvirt: one sentence, never a traceback.
"""

from __future__ import annotations

import os
import sys

from numahook import log as logmod

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Sequence

log = logmod.get("numahook.hook")
#: numahook.xml.safe.MAX_XML_BYTES, which tests/unit/hook checks this equals: importing
#: safe (re) here would cost the started fast path (numahook/hook/fast.py) most of its time
_MAX_STDIN = 10 * 1024 * 1024

#: calls whose failure must never reach libvirt
_HARMLESS = {"stopped", "release", "reconnect", "attach"}


def _logging() -> None:
    """syslog(3) through the C module, with no stdlib logging at all: logging (and
    logging.handlers' socket) would cost the hook more than its own work. Tests set
    NUMAHOOK_HOOK_LOG to read the records from a file; that path pays for logging."""
    path = os.environ.get("NUMAHOOK_HOOK_LOG")
    if not path:
        logmod.to_syslog("numahook-hook", logmod.INFO)
        return
    import logging

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s numahook-hook[%(process)d]: %(levelname)s %(message)s"))
    root.addHandler(handler)


def _refuse(op: str, name: str, message: str) -> int:
    log.error("domain=%s op=%s refused: %s", name, op, message)
    sys.stderr.write(f"numahook: {message}\n")
    return 1


def run(argv: Sequence[str], xml: str) -> int:
    from numahook import config as configmod
    from numahook.errors import NumahookError
    from numahook.ops import lifecycle
    from numahook.state.statedir import StateDir

    name, op, subop = [*list(argv), "", "", ""][:3]
    if op in _HARMLESS:
        # what the claim records is given back or adopted whatever the file says: a typo
        # there must not leave a stopped domain's CPUs and hugepages held
        cfg, bad = configmod.load_regardless()
        if bad is not None:
            log.error("domain=%s op=%s: %s (went on with the built-in default for it)",
                      name, op, bad)
    else:
        try:
            cfg = configmod.load()
        except NumahookError as exc:
            return _refuse(op, name, str(exc))
    state = StateDir(cfg.state_dir)
    try:
        if op == "prepare" and subop == "begin":
            lifecycle.admit(xml, cfg, state)
        elif op == "started" and subop == "begin":
            try:
                lifecycle.tune(xml, cfg, state)
            except NumahookError as exc:
                if cfg.rt_on_failure == "warn":
                    log.warning("domain=%s op=started realtime not applied (on_failure=warn):"
                                " %s", name, exc)
                    return 0
                raise
        elif op in ("migrate", "restore") and subop == "begin":
            out = lifecycle.relocate(xml, cfg, state)
            if out is not None:
                sys.stdout.write(out)
        elif op in ("stopped", "release"):
            from numahook.core import render
            doc = render.parse(xml, readonly=True)
            lifecycle.release(doc.facts.uuid, doc.facts.name, cfg, state)
        elif op == "reconnect" and subop == "begin":
            lifecycle.adopt(xml, cfg, state)
        return 0
    except NumahookError as exc:
        if op in _HARMLESS:
            log.error("domain=%s op=%s failed (ignored, the VM is not touched): %s", name, op,
                      exc)
            return 0
        from numahook.ops import refusals  # the refusal path only: prepare does not pay

        refusals.count_error(cfg.state_dir, op, exc)
        return _refuse(op, name, str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    op = args[1] if len(args) > 1 else ""
    try:
        xml = sys.stdin.read(_MAX_STDIN + 1)
        if op == "started" and args[2:3] == ["begin"] and len(xml) <= _MAX_STDIN:
            from numahook.hook import fast

            if fast.started(args[0], xml):
                return 0  # numahookd's tuning verified; nothing else to load
        _logging()
        if len(xml) > _MAX_STDIN:
            if op in _HARMLESS:
                return 0
            return _refuse(op, args[0] if args else "", "the domain XML is larger than 10 MiB")
        return run(args, xml)
    except Exception as exc:  # the last guard: never a traceback, never a killed VM
        log.exception("numahook hook crashed on %s", " ".join(args))
        if op in _HARMLESS:
            return 0
        sys.stderr.write(f"numahook: internal error ({type(exc).__name__}: {exc}); see the "
                         "system journal for details and report it\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
