"""numahookd's libvirt connection: why it was lost, in words."""

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt")
connection = pytest.importorskip("numahook.daemon.connection")


@pytest.mark.parametrize(("reason", "words"), [
    (libvirt.VIR_CONNECT_CLOSE_REASON_ERROR, "an I/O error on the connection"),
    (libvirt.VIR_CONNECT_CLOSE_REASON_EOF, "libvirtd closed it (stopped or restarted)"),
    (libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE, "libvirtd stopped answering keepalives"),
    (libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT, "numahookd closed it"),
    (99, "libvirt's close reason 99"),  # a newer libvirt's
])
def test_close_reasons_are_said_in_words(reason: int, words: str) -> None:
    """The journal said "lost the connection to libvirt (reason 1)"."""
    assert connection.close_reason(reason) == words
