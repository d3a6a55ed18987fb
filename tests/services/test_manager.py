"""`lanner services`: status, idempotent up, and stopping only our own processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.exceptions import ServiceError
from broker.services import manager, process
from broker.services.process import ProcessFiles
from tests.support.stack import ServiceStack

REPO = Path(__file__).resolve().parents[2]


def test_status_lists_every_service_running(stack: ServiceStack) -> None:
    statuses = {s.name: s for s in manager.status(stack.settings)}
    assert {"kafka", "cassandra", "mariadb-0", "mariadb-1"} <= set(statuses)
    for status in statuses.values():
        assert status.state == "running", status
        host, _, port = status.address.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 1024
        assert status.pid is not None


def test_up_twice_is_harmless(stack: ServiceStack) -> None:
    before = {s.name: s.pid for s in manager.status(stack.settings)}
    after = {s.name: s.pid for s in manager.up(stack.settings)}
    assert after == before


def test_cli_status_prints_one_line_per_service(stack: ServiceStack) -> None:
    result = subprocess.run([sys.executable, "-m", "broker.cli", "services", "status"],
                            capture_output=True, text=True, check=False, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for name in ("kafka", "cassandra", "mariadb-0", "mariadb-1"):
        state, address = lines[name].split()
        assert state == "running"
        assert address.startswith("127.0.0.1:")


def _sleeper(files: ProcessFiles) -> int:
    # `sh -c 'exec sleep'` with the home folder as an argument, so the pid is recognisably ours.
    return process.start(files, ["sh", "-c", "sleep 300", str(files.home)])


def test_stop_terminates_our_process(tmp_path: Path) -> None:
    files = ProcessFiles(home=tmp_path / "svc", name="sleeper")
    pid = _sleeper(files)
    assert process.running_pid(files) == pid
    assert process.stop(files, timeout=5)
    assert process.running_pid(files) is None
    assert not Path(f"/proc/{pid}").exists() or process._exited(pid)
    assert not files.pid_file.exists()


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    files = ProcessFiles(home=tmp_path / "stubborn", name="stubborn")
    pid = process.start(files, ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done",
                                str(files.home)])
    time.sleep(0.3)
    started = time.monotonic()
    assert process.stop(files, timeout=1.0)
    assert time.monotonic() - started < 10
    assert process.running_pid(files) is None
    assert not Path(f"/proc/{pid}").exists() or process._exited(pid)


def test_stop_leaves_a_foreign_pid_alone(tmp_path: Path) -> None:
    # A stale pid file naming a process that is not ours (its command line does not mention
    # our folder) must not be signalled.
    foreign = subprocess.Popen(["sleep", "300"])
    try:
        files = ProcessFiles(home=tmp_path / "stale", name="stale")
        files.home.mkdir(parents=True)
        files.pid_file.write_text(f"{foreign.pid}\n")
        assert process.running_pid(files) is None
        assert process.stop(files, timeout=1) is False
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()


def test_a_failing_start_names_its_log(tmp_path: Path) -> None:
    files = ProcessFiles(home=tmp_path / "broken", name="broken")
    process.start(files, ["sh", "-c", "echo 'ERROR: no such table space' >&2; exit 3",
                          str(files.home)])
    with pytest.raises(ServiceError) as info:
        process.wait_ready(files, lambda: False, timeout=10)
    assert "no such table space" in str(info.value)
    assert info.value.log_path == str(files.log_file)
