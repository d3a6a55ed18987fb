"""STILTS's validators: votlint over documents the writers make, taplint over the service.

`make install` installs STILTS (Debian package ``stilts``). Where it is missing, a test that
needs it fails, saying why: it is never skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def stilts() -> str:
    """The ``stilts`` command, or the test fails (CI) or is skipped (elsewhere)."""
    found = shutil.which("stilts")
    if found is None:
        message = "STILTS is not installed: `make install` installs it (Debian package stilts)"
        pytest.fail(message)
    return found


def votlint(document: bytes | str, folder: Path, name: str = "document.vot") -> list[str]:
    """votlint's reports on a document (ERROR and WARNING lines): none means valid.

    votlint exits 0 whatever it finds and writes its reports to standard output, so the
    reports are the output's lines; anything on standard error is a report too.
    """
    path = folder / name
    path.write_bytes(document.encode() if isinstance(document, str) else document)
    result = subprocess.run([stilts(), "votlint", f"votable={path}"], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def run(*args: str, timeout: float = 600) -> str:
    """``stilts`` run with ``args``: its output, standard output then standard error."""
    result = subprocess.run([stilts(), *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    return result.stdout + result.stderr
