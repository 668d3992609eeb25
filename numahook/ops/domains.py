"""A domain libvirt has defined, named as virsh names it: by its name or its UUID.

One resolver for every command that takes a domain (render, check, apply, status), so that
they accept the same names and fail with the same fix.
"""

from __future__ import annotations

from typing import Any

from numahook.errors import HostError, InputError


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
