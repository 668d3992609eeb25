"""Loggers for the modules the libvirt hook imports.

Importing stdlib ``logging`` (traceback, threading, string, weakref...) costs the hook
more than its own work (bench/README.md, "What it found"). ``get(name)`` returns a small
logger instead: until ``to_syslog()`` is called, every call goes to
``logging.getLogger(name)`` (imported at the first call), so the daemon's and the CLI's
handlers and levels, and pytest's caplog, see the same records as before. The hook calls
``to_syslog()`` once; from then on records go to syslog(3) through the C module and
``logging`` is never imported.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    import logging
    from types import ModuleType

DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50

#: the ``syslog`` module once to_syslog() was called; None: stdlib logging
_syslog: ModuleType | None = None
_threshold = INFO
#: our levels to syslog priorities (LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR, LOG_CRIT)
_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, CRITICAL: 2}


class Logger:
    """The part of ``logging.Logger`` numahook uses: lazy %-args, ``exception`` in handlers."""

    __slots__ = ("_std", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._std: logging.Logger | None = None  # looked up at the first forwarded call

    def debug(self, msg: str, *args: object) -> None:
        self._log(DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._log(ERROR, msg, args)

    def critical(self, msg: str, *args: object) -> None:
        self._log(CRITICAL, msg, args)

    def exception(self, msg: str, *args: object) -> None:
        """ERROR with the traceback of the exception being handled."""
        self._log(ERROR, msg, args, exc_info=True)

    def _log(self, level: int, msg: str, args: tuple[object, ...],
             exc_info: bool = False) -> None:
        if _syslog is not None:
            if level >= _threshold:
                _emit(level, msg, args, exc_info)
            return
        std = self._std
        if std is None:
            import logging

            std = self._std = logging.getLogger(self.name)
        # stacklevel 3: the record names our caller, not _log and debug/info/... here
        std.log(level, msg, *args, exc_info=exc_info, stacklevel=3)


def get(name: str) -> Logger:
    """The logger for ``name`` (a module's ``__name__``), as ``logging.getLogger`` would."""
    return Logger(name)


def to_syslog(ident: str, level: int = INFO) -> None:
    """Send every record at ``level`` or above to syslog(3) as ``ident[pid]``, daemon facility.

    For the hook, a process of its own: stdlib logging is no longer used in this process.
    """
    global _syslog, _threshold
    import syslog

    syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)
    _syslog, _threshold = syslog, level


def _emit(level: int, msg: str, args: tuple[object, ...], exc_info: bool) -> None:
    """One syslog line as logging's default format would give: the message, then the
    traceback if any."""
    text = str(msg)
    if args:
        from collections.abc import Mapping  # not at import: the started fast path

        # logging's rule: a lone mapping is the argument for %(key)s formats
        values = args[0] if len(args) == 1 and isinstance(args[0], Mapping) and args[0] else args
        try:
            text = text % values
        except (TypeError, ValueError, KeyError):  # a bad format must not fail the hook
            text = f"{text} (unformattable arguments: {args!r})"
    if exc_info and sys.exc_info()[0] is not None:
        import traceback

        text += "\n" + "".join(traceback.format_exception(*sys.exc_info())).rstrip("\n")
    # syslog() refuses NULs and lone surrogates (bytes of a non-UTF-8 file): escape them
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")
    try:
        assert _syslog is not None  # _emit is only called once to_syslog() set it
        _syslog.syslog(_PRIORITY.get(level, 6), text)
    except (OSError, ValueError):  # nothing left to tell, and stderr is the user's message
        pass
