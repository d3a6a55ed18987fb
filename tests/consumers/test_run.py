"""`lanner run` on the real services: every stage and the API as supervised processes.

An ingest process killed with SIGKILL is restarted by the supervisor and, between them, the two
ingest processes archive every alert exactly once; the API answers meanwhile; SIGTERM stops
everything cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from broker.simulator import AlertSimulator
from broker.streaming import wire
from tests.support.backends import ServicesHarness
from tests.support.data import REPO_ROOT


def _children(pid: int) -> dict[int, bytes]:
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found[int(proc.name)] = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
    return found


def _environ(pid: int, name: str) -> str | None:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\x00"):
        key, _, value = item.partition(b"=")
        if key.decode() == name:
            return value.decode()
    return None


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_run_supervises_the_stages_and_the_api(stack, kafka_topics) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    env = harness.process_env(LANNER_TOPIC_DR_UPDATES=kafka_topics("dr.updates"),
                              LANNER_DR_GROUP=f"{harness.group}-dr",
                              LANNER_INGEST_INSTANCE_ID=f"{harness.group}-member",
                              LANNER_INGEST_BATCH_SIZE="100")
    packets = list(AlertSimulator(schema="11.1", seed=77, cutouts=False).encoded(800))
    detections = set()
    for _, value in packets:
        record = wire.decode(value)[1]
        detections.add(record["diaSource"]["diaSourceId"])
        detections.update(p["diaSourceId"] for p in record["prvDiaSources"] or ())
    for key, value in packets[:400]:
        harness.produce(harness.topics.lsst, value, key=key)
    harness.flush()

    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "run", "--ingest", "2", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(
        line.decode() for line in iter(process.stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        _wait(lambda: harness.lightcurves.counts()["packets"] == 400, 180, "the first alerts")
        ingest = {pid: cmd for pid, cmd in _children(process.pid).items()
                  if b"\x00ingest" in cmd}
        assert len(ingest) == 2, _children(process.pid)
        # Each ingest process is a static group member of its own.
        assert {_environ(pid, "LANNER_INGEST_INSTANCE_ID") for pid in ingest} == {
            f"{harness.group}-member-{i}" for i in range(2)}
        victim = min(ingest)
        os.kill(victim, signal.SIGKILL)
        for key, value in packets[400:]:
            harness.produce(harness.topics.lsst, value, key=key)
        harness.flush()
        _wait(lambda: any("restarted" in line for line in output), 60, "the restart")
        _wait(lambda: harness.lightcurves.counts()["packets"] == 800, 180, "every alert")
        after = {pid for pid, cmd in _children(process.pid).items() if b"\x00ingest" in cmd}
        assert len(after) == 2
        assert victim not in after
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=10) as r:
            status = json.loads(r.read())
        assert status["backend"] == "services"
        assert status["catalog"]["alert_rows"] == len(detections)  # each exactly once
        assert status["lightcurves"]["packets"] == 800
    finally:
        children = set(_children(process.pid))
        process.send_signal(signal.SIGTERM)
        process.wait(90)
        reader.join(10)
        harness.close()
    assert process.returncode == 0, "".join(output)
    assert any(line.startswith("stopped") for line in output), output
    for pid in children:  # every child stopped and reaped
        assert not Path(f"/proc/{pid}").exists(), pid
