"""Prometheus's own linter, ``promtool check metrics``, for the unit and e2e tests.

promtool comes from Debian's prometheus package; scripts/test unpacks it (the package's
maintainer scripts would start a Prometheus server) and names it in NUMAHOOK_PROMTOOL, so
under scripts/test the tests that lint run, never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def promtool() -> str:
    named = os.environ.get("NUMAHOOK_PROMTOOL")
    if named:
        assert os.access(named, os.X_OK), f"NUMAHOOK_PROMTOOL={named} is not executable"
        return named
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (scripts/test unpacks Debian's prometheus)")
    return found


def lint(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
