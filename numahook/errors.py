"""Exceptions whose message is one sentence an operator can act on."""

from __future__ import annotations


class NumahookError(Exception):
    """Base class. ``str(exc)`` is shown to the user as-is: one sentence naming the fix."""


class Refusal(NumahookError):
    """A domain cannot be rendered or started as asked.

    ``check`` names the precondition that failed (stable, used in ``--json``).
    """

    def __init__(self, message: str, check: str = "refused") -> None:
        super().__init__(message)
        self.check = check


class InputError(NumahookError):
    """Malformed input: XML, metadata, a CPU list, a config file, a sysfs file."""


class ConfigError(NumahookError):
    """The configuration file is invalid (message names file, line and reason)."""


class StateError(NumahookError):
    """Our state directory could not be read or written (lock timeout, disk full)."""


class HostError(NumahookError):
    """The host refused an operation (a sysfs or cgroup write, a scheduler call)."""
