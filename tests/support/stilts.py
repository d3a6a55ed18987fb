"""STILTS (``stilts`` from Debian, installed by ``make install``): the IVOA validators taplint
and votlint. Missing, it fails a test in CI (``CI=true``) and skips it elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def stilts(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``stilts`` with ``args``; its output (stdout and stderr together)."""
    found = shutil.which("stilts")
    if found is None:
        message = "stilts is not installed (make install installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
