"""A domain libvirt has defined, named as virsh names it: by its name or its UUID.

One resolver for every command that takes a domain (render, check, apply, status), so that
they accept the same names and fail with the same fix; render and check also take a file
or ``-`` there (:func:`source`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from numahook.errors import HostError, InputError
from numahook.xml.safe import MAX_XML_BYTES


def read_file(path: str) -> bytes:
    """Bytes, not text: the XML parser decodes (UTF-8, UTF-16, a declared encoding)."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_XML_BYTES + 1)
    else:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_XML_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_XML_BYTES:
        raise InputError(f"{path} is larger than {MAX_XML_BYTES} bytes")
    return data


def source(what: str, uri: Callable[[], str]) -> bytes:
    """FILE, - or a defined domain's name or UUID. A path that exists is a file, so a file
    wins over a domain of the same name; a name with a / is a path (never a domain's).
    ``uri`` is asked only for a name, so a file never needs the configuration."""
    if what == "-" or "/" in what or os.path.exists(what):
        return read_file(what)
    try:
        return definition(uri(), what).encode()
    except InputError:
        raise InputError(f"{what} is neither a file nor a domain libvirt has defined (by name "
                         "or UUID); check the path, or `virsh list --all`") from None
    except HostError as exc:
        raise HostError(f"{what} is not a file, and looking it up as a domain failed: "
                        f"{exc}") from None


def connect(uri: str, readonly: bool = False) -> Any:
    """libvirt-python is imported here, not at load: the CLI's node and file commands, and
    the hook, run without it."""
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


def close(conn: Any) -> None:
    import libvirt

    try:
        conn.close()
    except libvirt.libvirtError:
        pass


def lookup(conn: Any, name: str) -> Any:
    """The name first, then the UUID, as virsh does: a name may look like a UUID."""
    import libvirt

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        pass
    try:
        return conn.lookupByUUIDString(name)
    except libvirt.libvirtError:
        raise InputError(f"libvirt has no domain named {name!r} or with that UUID; check "
                         "`virsh list --all`") from None


def definition(uri: str, name: str) -> str:
    """The persistent definition of ``name``: what its next start gets, and what ``numahook
    apply`` renders (a running domain's live XML may differ from it)."""
    import libvirt

    conn = connect(uri, readonly=True)
    try:
        dom = lookup(conn, name)
        try:
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except libvirt.libvirtError as exc:
            raise HostError(f"libvirt failed to give the definition of {name}: "
                            f"{exc.get_error_message()}; check that it is still defined "
                            "(`virsh list --all`)") from None
    finally:
        close(conn)
