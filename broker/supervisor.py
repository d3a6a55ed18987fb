"""`lanner run`: every stage (and optionally the API) as child processes, kept running.

Each stage is its own process, as in a cluster where each is a Deployment: a crash of one does not
stop the others, and a stage that uses a core fully does not slow the others' Python. The
supervisor restarts a child that exits while the broker is not stopping, after a back-off that
doubles with each quick failure (1 s up to 60 s) and starts again at 1 s once the child has run a
minute. Nothing is lost by a restart: the stages commit offsets only after their writes, so a
restarted stage reads again what its predecessor had not committed. Ingest processes get a
stable static group membership (``LANNER_INGEST_INSTANCE_ID``), so a restarted one takes its
partitions back at once instead of waiting for the group to rebalance.

SIGTERM or SIGINT stops the broker: every child gets SIGTERM (a stage finishes or abandons,
uncommitted, its batch in hand), and one still running after the grace period gets SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Back-off before restarting a child that failed quickly: doubles from the first to the last.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
#: A child that ran this long before exiting is restarted after the first back-off again.
HEALTHY_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child process: a name for logs, its command line and extra environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def lanner_child(name: str, *args: str, env: Mapping[str, str] | None = None) -> ChildSpec:
    """A child running ``lanner ARGS`` with this interpreter."""
    return ChildSpec(name, (sys.executable, "-m", "broker.cli", *args), dict(env or {}))


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float | None = None  # the next delay; None: the first
    due: float = 0.0  # when to start it again (monotonic), after an exit


class Supervisor:
    """Starts the children, restarts those that exit, stops them all on request."""

    def __init__(self, children: Sequence[ChildSpec], *, grace_s: float = 30.0,
                 poll_s: float = 0.2, report: Callable[[str], None] = print) -> None:
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            msg = f"child names must be unique: {names}"
            raise ValueError(msg)
        self._children = [_Child(spec) for spec in children]
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.report = report
        self.stopping = threading.Event()

    def pids(self) -> dict[str, int]:
        """The running children's pids by name."""
        return {c.spec.name: c.process.pid for c in self._children
                if c.process is not None and c.process.poll() is None}

    def restarts(self) -> dict[str, int]:
        return {c.spec.name: c.restarts for c in self._children}

    def _start(self, child: _Child) -> int:
        env = {**os.environ, **child.spec.env}
        process = subprocess.Popen(list(child.spec.argv), cwd=REPO_ROOT, env=env)
        child.process = process
        child.started = time.monotonic()
        log.info("child started", child=child.spec.name, pid=process.pid)
        return process.pid

    def run(self) -> int:
        """Run until `stopping` is set (SIGTERM/SIGINT in `lanner run`); 0 on a clean stop."""
        for child in self._children:
            self._start(child)
        self.report("started: " + ", ".join(f"{n} (pid {p})" for n, p in self.pids().items()))
        try:
            while not self.stopping.wait(self.poll_s):
                now = time.monotonic()
                for child in self._children:
                    self._watch(child, now)
        finally:
            self._stop_all()
        return 0

    def _watch(self, child: _Child, now: float) -> None:
        if self.stopping.is_set():
            # Ctrl-C reaches the children too (one process group): one that has just stopped
            # is not a crash.
            return
        process = child.process
        if process is not None:
            code = process.poll()
            if code is None:
                return
            ran = now - child.started
            if child.backoff is None or ran >= HEALTHY_AFTER_S:
                child.backoff = FIRST_BACKOFF_S
            delay = child.backoff
            child.backoff = min(child.backoff * 2, MAX_BACKOFF_S)
            child.due = now + delay
            child.process = None
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            self.report(f"{child.spec.name} (pid {process.pid}) ended with {how} after "
                        f"{ran:.1f} s; restarting in {delay:.1f} s")
            log.warning("child ended", child=child.spec.name, pid=process.pid, code=code,
                        ran_s=round(ran, 1), restart_in_s=delay)
            return
        if now >= child.due:
            child.restarts += 1
            pid = self._start(child)
            self.report(f"{child.spec.name} restarted (pid {pid}), restart {child.restarts}")

    def _stop_all(self) -> None:
        running = [c.process for c in self._children
                   if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child did not stop in time; killing it", pid=process.pid)
                process.kill()
                process.wait()
        self.report("stopped")
