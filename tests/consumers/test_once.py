"""``--once`` drains what is there, or fails with one line; it never claims a drain it did not do.

A stage run with ``once`` ends when it owns partitions and has read them to their ends. A member
that just joined owns nothing yet, and after a crash the dead members of the group hold their
partitions until their sessions time out, so the run waits for its assignment, up to a bound
(the session timeout plus a rebalance); past it, `NotDrainedError` names the group and the
reason, and ``lanner ingest --once`` exits non-zero with that one line.

On the real services: five ``lanner ingest`` processes without static member ids are SIGKILLed
while they hold the partitions; ``lanner ingest --once`` with a bound shorter than their session
timeout fails, and with the default bound waits for the dead members to expire and archives
every packet. In memory: the same contract with live members holding every partition, and an
owned partition that stops delivering.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from broker.config import Backend, Settings
from broker.exceptions import NotDrainedError
from broker.factory import Factory
from broker.simulator import AlertSimulator
from broker.streaming.memory import MemorySource
from broker.streaming.queue import Message
from consumers import dr_updates, enrich, ingest
from tests.support.backends import EmbeddedHarness, ServicesHarness
from tests.support.data import REPO_ROOT

#: Session timeout of every process of the crash test, seconds: short to keep the test short,
#: above the broker's minimum (group.min.session.timeout.ms, 6 s).
SESSION_S = 15
CRASHED = 5


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _packets(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    return list(AlertSimulator(schema="11.1", seed=seed, cutouts=False).encoded(count))


# ---- on the real services ------------------------------------------------------------------


def _ingest(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "broker.cli", "ingest", *args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stable_members(admin: AdminClient, group: str) -> int:
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    if description.state != ConsumerGroupState.STABLE:
        return 0
    return len(description.members)


def test_once_after_crashed_members_waits_for_their_sessions_then_drains(stack,
                                                                        kafka_topics) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    env = harness.process_env(LANNER_KAFKA_SESSION_TIMEOUT_S=str(SESSION_S),
                              LANNER_INGEST_BATCH_SIZE="100")
    env.pop("LANNER_INGEST_INSTANCE_ID", None)  # dynamic members, as the operator ran them
    admin = AdminClient({"bootstrap.servers": stack.kafka.bootstrap})
    processes: list[subprocess.Popen[str]] = []
    try:
        before, after = _packets(2_000, seed=91), _packets(2_000, seed=92)
        processes = [_ingest(env) for _ in range(CRASHED)]
        _wait(lambda: _stable_members(admin, harness.group) == CRASHED, 180,
              f"{CRASHED} ingest processes in one stable group")
        for key, value in before:
            harness.produce(harness.topics.lsst, value, key=key)
        harness.flush()
        # Killed mid-run: some batches archived, others in hand or not read yet.
        _wait(lambda: harness.lightcurves.counts()["packets"] >= 200, 120, "a first batch")
        for process in processes:
            assert process.poll() is None, process.communicate()
            process.send_signal(signal.SIGKILL)
        for process in processes:
            process.wait(30)
            process.communicate()
        killed = time.monotonic()
        for key, value in after:
            harness.produce(harness.topics.lsst, value, key=key)
        harness.flush()

        # A bound shorter than the dead members' sessions: no assignment, one line, exit 1.
        started = time.monotonic()
        short = _ingest({**env, "LANNER_ONCE_WAIT_S": "1"}, "--once")
        output, errors = short.communicate(timeout=120)
        timing = (f"killed {started - killed:.1f} s before the short run, which took "
                  f"{time.monotonic() - started:.1f} s")
        assert short.returncode == 1, (timing, output, errors)
        assert "ingested" not in output
        [line] = [line for line in errors.splitlines() if line.startswith("error:")]
        assert line == errors.strip().splitlines()[-1]
        assert line.startswith(f"error: group {harness.group}: no partitions assigned after 1")
        assert f"{CRASHED} other members hold 6 partitions" in line
        assert f"session.timeout.ms = {SESSION_S * 1000}" in line

        # The default bound (the session timeout plus a rebalance) outwaits them. Their last
        # heartbeats were at most 3 s (the heartbeat interval) before the kill, so nothing could
        # be assigned before SESSION_S - 3 s after it.
        final = _ingest(env, "--once")
        output, errors = final.communicate(timeout=600)
        assert final.returncode == 0, (output, errors)
        assert time.monotonic() - killed >= SESSION_S - 3
        found = re.search(r"ingested (\d+) alerts, 0 to the dead-letter topic, from (\d+) "
                          r"packets", output)
        assert found, output
        archived, consumed = int(found[1]), int(found[2])
        # Every packet produced after the kill and those the dead processes left, some of them
        # again (batches archived but not committed when they were killed).
        assert len(after) < archived == consumed <= len(before) + len(after)
        assert harness.lightcurves.counts()["packets"] == len(before) + len(after)
        assert harness.catalog.counts()["objects"] == len({key for key, _ in before + after})
        assert harness.outputs(harness.topics.dlq) == []
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
        harness.close()


# ---- in memory -----------------------------------------------------------------------------


def _one_partition_harness(tmp_path: Path) -> EmbeddedHarness:
    harness = EmbeddedHarness(tmp_path)
    for topic in harness.topics.inputs:
        harness.broker.create_topic(topic, 1)
    return harness


def test_once_with_every_partition_held_by_live_members_fails_naming_the_group(
        tmp_path: Path) -> None:
    harness = _one_partition_harness(tmp_path)
    try:
        for key, value in _packets(20, seed=93):
            harness.produce(harness.topics.lsst, value, key=key)
        holders = [MemorySource(harness.broker, group="held", topics=harness.topics.inputs)
                   for _ in range(2)]
        stage = harness.stage(group="held", once_wait=0.3)
        with pytest.raises(NotDrainedError) as raised:
            stage.run(once=True)
        assert re.fullmatch(r"group held: no partitions assigned after 0\.\d s \(2 other members "
                            r"hold 2 partitions\)", str(raised.value)), raised.value
        assert raised.value.group == "held"
        assert harness.catalog.counts()["objects"] == 0
        for holder in holders:
            holder.close()
    finally:
        harness.close()


def test_once_waits_for_a_member_to_leave_then_drains(tmp_path: Path) -> None:
    harness = _one_partition_harness(tmp_path)
    try:
        packets = _packets(50, seed=94)
        for key, value in packets:
            harness.produce(harness.topics.lsst, value, key=key)
        topics = [harness.topics.lsst]
        holder = MemorySource(harness.broker, group="held", topics=topics)
        stage = harness.stage(source=MemorySource(harness.broker, group="held", topics=topics),
                              once_wait=10)
        assert stage.source.assignment() == []
        leaving = threading.Timer(0.5, holder.close)
        leaving.start()
        started = time.monotonic()
        report = stage.run(once=True)
        assert time.monotonic() - started >= 0.5
        leaving.join()
        assert stage.source.assignment() == [(harness.topics.lsst, 0)]
        assert report.archived == report.consumed == len(packets)
    finally:
        harness.close()


@dataclass
class _Stalled:
    """A source that owns partitions it never delivers from and never reads to their ends."""

    group: str = "stalled"

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        time.sleep(timeout)
        return []

    def commit(self, messages: Sequence[Message]) -> None:
        pass

    def assignment(self) -> list[tuple[str, int]]:
        return [("alerts.lsst", 0), ("alerts.lsst", 2), ("alerts.ztf", 1)]

    def drained(self) -> bool:
        return False

    def describe_group(self) -> str:
        return "nobody else"

    def rewind(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_once_fails_when_an_owned_partition_stops_delivering(tmp_path: Path) -> None:
    harness = EmbeddedHarness(tmp_path)
    try:
        stage = harness.stage(source=_Stalled(), poll_timeout=0.01, once_wait=0.3)
        with pytest.raises(NotDrainedError) as raised:
            stage.run(once=True)
        assert re.fullmatch(r"group stalled: owned partitions \(alerts.lsst 0,2; alerts.ztf 1\) "
                            r"not read to their ends after 0\.\d s without a message",
                            str(raised.value)), raised.value
    finally:
        harness.close()


def test_the_stages_take_their_wait_bound_from_the_settings(tmp_path: Path) -> None:
    for settings, bound in (
        (Settings(backend=Backend.embedded, embedded_dir=tmp_path), 45.0),
        (Settings(backend=Backend.embedded, embedded_dir=tmp_path,
                  kafka_session_timeout_s=10), 25.0),
        (Settings(backend=Backend.embedded, embedded_dir=tmp_path, once_wait_s=3), 3.0),
    ):
        factory = Factory(settings)
        try:
            for stage in (ingest, enrich, dr_updates):
                assert stage.build(factory).once_wait == bound, stage
        finally:
            factory.close()
