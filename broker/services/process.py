"""Start, watch and stop one background server process by pid.

Each service keeps a folder under the state dir holding its pid file and log. A pid is only ever
signalled after checking, through /proc, that it still runs the command we started (a pid file can
outlive its process and the number be reused), so `down` stops what `up` started and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.constants import STOP_TIMEOUT_S
from broker.exceptions import ServiceError


@dataclass(frozen=True, slots=True)
class ProcessFiles:
    """Where one service keeps its pid file and its log."""

    home: Path
    name: str

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def marker(self) -> str:
        """A string that appears in the command line of the process (its home folder)."""
        return str(self.home)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _exited(pid: int) -> bool:
    """True if the pid is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}


def running_pid(files: ProcessFiles) -> int | None:
    """The pid of the service if its pid file names a live process that is ours."""
    try:
        pid = int(files.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or _exited(pid):
        return None
    if files.marker not in _cmdline(pid):
        return None
    return pid


def start(files: ProcessFiles, argv: Sequence[str], *, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in its own session, output appended to the log, and record its pid.

    The command line must contain ``files.marker`` (the service's home folder) so that the pid
    can later be recognised as ours.
    """
    if not any(files.marker in arg for arg in argv):
        msg = "command line does not mention the service folder; its pid could not be verified"
        raise ServiceError(files.name, msg)
    files.home.mkdir(parents=True, exist_ok=True)
    with files.log_file.open("ab") as log:
        log.write(f"\n--- starting {files.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=files.home,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        except OSError as exc:
            raise ServiceError(files.name, f"cannot run {argv[0]}: {exc}", str(files.log_file)) \
                from exc
    # Popen returns once exec has begun, but the kernel fills in the new command line a moment
    # later; wait for it, so that the pid is recognisably ours as soon as this returns.
    deadline = time.monotonic() + 5.0
    while files.marker not in _cmdline(proc.pid) and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    files.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def wait_ready(
    files: ProcessFiles,
    probe: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.5,
) -> None:
    """Poll ``probe`` until it answers True; fail early if the process dies."""
    # Liveness here is "the pid we recorded has not exited", not `running_pid`: right after
    # exec the kernel has closed the close-on-exec pipe Popen waits on before it has set up the
    # new argv, so for a moment /proc/<pid>/cmdline is empty and the pid would look foreign.
    try:
        pid = int(files.pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    deadline = time.monotonic() + timeout
    while True:
        if pid <= 0 or _exited(pid):
            raise ServiceError(files.name, f"exited during start-up: {last_error_line(files)}",
                               str(files.log_file))
        with contextlib.suppress(Exception):
            if probe():
                return
        if time.monotonic() > deadline:
            raise ServiceError(files.name, f"did not answer within {timeout:.0f} s",
                               str(files.log_file))
        time.sleep(interval)


def stop(files: ProcessFiles, *, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the service, then SIGKILL it after ``timeout``; True if something was stopped."""
    pid = running_pid(files)
    if pid is None:
        files.pid_file.unlink(missing_ok=True)
        return False
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(files) is None:
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        _signal(pid, signal.SIGKILL)
        for _ in range(50):
            _reap(pid)
            if running_pid(files) is None:
                break
            time.sleep(0.1)
    files.pid_file.unlink(missing_ok=True)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    # When the service was started by this very process, collect it so it does not linger
    # as a zombie; for a process started by an earlier command this is a no-op.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def last_error_line(files: ProcessFiles) -> str:
    """The most telling line near the end of the log, for a one-line failure reason."""
    try:
        with files.log_file.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 65536))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return "no log"
    keywords = ("ERROR", "Exception", "FATAL", "Error:", "error:", "[ERROR]")
    for line in reversed(lines):
        if any(k in line for k in keywords):
            return line.strip()[:300]
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:300]
    return "empty log"
