"""The supervisor of `lanner run`: restarts what ends, with back-off; stops all on request."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from broker import supervisor
from broker.supervisor import ChildSpec, Supervisor

SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")
#: Ignores SIGTERM: only SIGKILL ends it.
STUBBORN = (sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)")


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Supervisor,
                                                                                list[str]]]]:
    """Start a supervisor in a thread; it is stopped (and its thread joined) after the test."""
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF_S", 0.2)
    monkeypatch.setattr(supervisor, "MAX_BACKOFF_S", 0.8)
    started: list[tuple[Supervisor, threading.Thread]] = []

    def start(*children: ChildSpec, grace_s: float = 10.0) -> tuple[Supervisor, list[str]]:
        lines: list[str] = []
        sup = Supervisor(children, grace_s=grace_s, poll_s=0.05, report=lines.append)
        thread = threading.Thread(target=sup.run)
        thread.start()
        started.append((sup, thread))
        _wait(lambda: len(sup.pids()) == len(children))
        return sup, lines

    yield start
    for sup, thread in started:
        sup.stopping.set()
        thread.join(60)
        assert not thread.is_alive()


def test_a_killed_child_is_restarted_and_the_others_keep_running(running) -> None:
    sup, lines = running(ChildSpec("a", SLEEPER), ChildSpec("b", SLEEPER))
    before = sup.pids()
    os.kill(before["a"], signal.SIGKILL)
    _wait(lambda: sup.restarts()["a"] == 1 and "a" in sup.pids())
    after = sup.pids()
    assert after["a"] != before["a"]
    assert after["b"] == before["b"]  # untouched
    assert sup.restarts() == {"a": 1, "b": 0}
    assert any(f"a (pid {before['a']}) ended with signal 9" in line for line in lines), lines


def _delays(lines: list[str]) -> list[float]:
    return [float(line.rsplit("restarting in ", 1)[1].split()[0])
            for line in lines if "restarting in" in line]


def test_quick_failures_back_off_doubling_up_to_the_cap(running) -> None:
    sup, lines = running(ChildSpec("fails", (sys.executable, "-c",
                                             "import time; time.sleep(0.3); raise SystemExit(3)")))
    _wait(lambda: sup.restarts()["fails"] >= 4)
    assert _delays(lines)[:4] == [0.2, 0.4, 0.8, 0.8]
    assert all("exit code 3" in line for line in lines if "ended with" in line)


def test_a_child_that_ran_long_enough_restarts_after_the_first_back_off(
        running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "HEALTHY_AFTER_S", 0.5)
    sup, lines = running(ChildSpec("steady", (sys.executable, "-c",
                                              "import time; time.sleep(0.7); raise SystemExit(1)")))
    _wait(lambda: sup.restarts()["steady"] >= 3)
    assert _delays(lines)[:3] == [0.2, 0.2, 0.2]


def test_stop_sends_sigterm_then_sigkill_after_the_grace(running) -> None:
    sup, lines = running(ChildSpec("polite", SLEEPER), ChildSpec("stubborn", STUBBORN),
                         grace_s=1.0)
    pids = sup.pids()
    time.sleep(0.5)  # let the stubborn child install its handler
    started = time.monotonic()
    sup.stopping.set()
    _wait(lambda: "stopped" in lines, timeout=30)
    assert time.monotonic() - started < 10
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert sup.restarts() == {"polite": 0, "stubborn": 0}  # stopping restarts nothing


def test_child_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([ChildSpec("x", SLEEPER), ChildSpec("x", SLEEPER)])
