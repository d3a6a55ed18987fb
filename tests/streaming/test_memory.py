"""The embedded in-process queue: offsets, consumer groups, commit and rewind, key order."""

from __future__ import annotations

import threading
import time
import zlib
from collections import defaultdict

import pytest

from broker.streaming.memory import MemoryBroker, MemoryPublisher, MemorySource
from broker.streaming.queue import Message, MessageSource, Publisher


def _values(messages: list[Message]) -> list[bytes]:
    return [m.value for m in messages]


def _fill(broker: MemoryBroker, topic: str, count: int, key: bytes | None = None) -> None:
    for i in range(count):
        broker.produce(topic, f"m{i}".encode(), key=key)


def test_offsets_count_from_zero_per_partition() -> None:
    broker = MemoryBroker()
    produced = [broker.produce("t", f"m{i}".encode()) for i in range(5)]
    assert [(m.partition, m.offset) for m in produced] == [(0, i) for i in range(5)]
    assert broker.messages("t") == produced
    assert broker.end_offsets("t") == [5]
    assert broker.messages("never-made") == []

    broker.create_topic("wide", partitions=3)
    broker.create_topic("wide", partitions=7)  # existing topics keep their partitions
    assert broker.partitions("wide") == 3
    wide = [broker.produce("wide", b"x") for _ in range(9)]
    assert sorted((m.partition, m.offset) for m in wide) == [(p, o) for p in range(3)
                                                             for o in range(3)]
    assert broker.topics() == {"t": 1, "wide": 3}


def test_keys_choose_partitions_stably_and_keep_their_order() -> None:
    broker = MemoryBroker(partitions=4)
    keys = [f"object-{i}".encode() for i in range(20)]
    for round_ in range(10):
        for key in keys:
            broker.produce("alerts", key + f":{round_}".encode(), key=key)
    for message in broker.messages("alerts"):
        assert message.key is not None
        assert message.partition == zlib.crc32(message.key) % 4
        assert broker.partition_for("alerts", message.key) == message.partition
    assert len({m.partition for m in broker.messages("alerts")}) > 1

    source = MemorySource(broker, group="g", topics=["alerts"])
    received: dict[bytes, list[bytes]] = defaultdict(list)
    while batch := source.poll(7, timeout=0.0):
        for message in batch:
            assert message.key is not None
            received[message.key].append(message.value)
    assert set(received) == set(keys)
    for key in keys:
        assert received[key] == [key + f":{r}".encode() for r in range(10)]


def test_unkeyed_messages_go_round_robin() -> None:
    broker = MemoryBroker(partitions=3)
    _fill(broker, "t", 30)
    per_partition: dict[int, int] = defaultdict(int)
    for message in broker.messages("t"):
        per_partition[message.partition] += 1
    assert per_partition == {0: 10, 1: 10, 2: 10}


def test_poll_commit_and_rewind() -> None:
    broker = MemoryBroker()
    _fill(broker, "t", 10)
    source = MemorySource(broker, group="g", topics=["t"])
    first = source.poll(4, timeout=0.0)
    assert [m.offset for m in first] == [0, 1, 2, 3]
    second = source.poll(4, timeout=0.0)
    assert [m.offset for m in second] == [4, 5, 6, 7]
    assert broker.committed("g", "t", 0) is None

    source.commit(first)
    assert broker.committed("g", "t", 0) == 4
    assert broker.lag("g", ["t"]) == 6
    source.rewind()  # the second batch was not committed: it comes again
    assert [m.offset for m in source.poll(100, timeout=0.0)] == [4, 5, 6, 7, 8, 9]
    assert source.poll(100, timeout=0.0) == []

    # A commit covers the highest offset per partition among the messages given.
    source.commit([second[2], second[0]])
    assert broker.committed("g", "t", 0) == 7
    source.rewind()
    assert [m.offset for m in source.poll(100, timeout=0.0)] == [7, 8, 9]


def test_rewind_without_any_commit_starts_over() -> None:
    broker = MemoryBroker(partitions=2)
    _fill(broker, "t", 6)
    source = MemorySource(broker, group="g", topics=["t"])
    everything = source.poll(100, timeout=0.0)
    assert len(everything) == 6
    source.rewind()
    again = source.poll(100, timeout=0.0)
    assert sorted((m.partition, m.offset) for m in again) == sorted(
        (m.partition, m.offset) for m in everything)


def test_commit_sets_the_offset_exactly_like_kafka() -> None:
    broker = MemoryBroker()
    _fill(broker, "t", 5)
    source = MemorySource(broker, group="g", topics=["t"])
    batch = source.poll(5, timeout=0.0)
    source.commit(batch)
    source.commit(batch[:1])  # an older commit moves the offset back
    assert broker.committed("g", "t", 0) == 1


def test_groups_are_independent() -> None:
    broker = MemoryBroker()
    _fill(broker, "t", 6)
    ingest = MemorySource(broker, group="ingest", topics=["t"])
    audit = MemorySource(broker, group="audit", topics=["t"])
    ingest.commit(ingest.poll(4, timeout=0.0))
    assert [m.offset for m in audit.poll(100, timeout=0.0)] == list(range(6))
    assert broker.committed("ingest", "t", 0) == 4
    assert broker.committed("audit", "t", 0) is None
    assert [m.offset for m in ingest.poll(100, timeout=0.0)] == [4, 5]


def test_a_restarted_consumer_resumes_at_the_committed_offsets() -> None:
    broker = MemoryBroker(partitions=2)
    for i in range(20):
        broker.produce("t", f"m{i}".encode(), key=f"k{i % 5}".encode())
    first = MemorySource(broker, group="g", topics=["t"])
    done = first.poll(8, timeout=0.0)
    first.commit(done)
    uncommitted = first.poll(5, timeout=0.0)
    assert uncommitted
    first.close()  # killed before committing the second batch
    with pytest.raises(RuntimeError, match="closed"):
        first.poll(1, timeout=0.0)

    second = MemorySource(broker, group="g", topics=["t"])
    rest = second.poll(100, timeout=0.0)
    seen = {(m.partition, m.offset) for m in done}
    # Everything not committed comes again, nothing committed does: at least once, no loss.
    assert {(m.partition, m.offset) for m in rest} == {
        (m.partition, m.offset) for m in broker.messages("t")} - seen
    assert {(m.partition, m.offset) for m in uncommitted} <= {
        (m.partition, m.offset) for m in rest}


def test_a_source_reads_several_topics_and_partitions_fairly() -> None:
    broker = MemoryBroker(partitions=2)
    _fill(broker, "a", 10)
    _fill(broker, "b", 10)
    source = MemorySource(broker, group="g", topics=["a", "b", "a"])
    assert source.topics == ["a", "b"]
    batches = [source.poll(3, timeout=0.0) for _ in range(4)]
    assert all(len(batch) == 3 for batch in batches)
    starts = {(batch[0].topic, batch[0].partition) for batch in batches}
    assert len(starts) == 4  # each partition takes its turn at the head of a batch
    rest = source.poll(100, timeout=0.0)
    assert len(rest) + 12 == 20
    assert source.poll(100, timeout=0.0) == []
    assert source.poll(0, timeout=0.0) == []


def test_poll_waits_for_messages_up_to_the_timeout() -> None:
    broker = MemoryBroker()
    source = MemorySource(broker, group="g", topics=["t"])
    started = time.monotonic()
    assert source.poll(10, timeout=0.2) == []
    assert time.monotonic() - started >= 0.15

    timer = threading.Timer(0.1, lambda: broker.produce("t", b"late"))
    timer.start()
    try:
        started = time.monotonic()
        batch = source.poll(10, timeout=10.0)
        assert _values(batch) == [b"late"]
        assert time.monotonic() - started < 5.0
    finally:
        timer.join()


def test_publisher_appends_at_once_with_headers() -> None:
    broker = MemoryBroker()
    publisher = MemoryPublisher(broker)
    publisher.publish("out", b"v1", key=b"k", headers={"reason": b"corrupt_body"})
    publisher.publish("out", b"v2")
    assert _values(broker.messages("out")) == [b"v1", b"v2"]  # before any flush
    publisher.flush(1.0)
    message = broker.messages("out")[0]
    assert message.key == b"k"
    assert message.headers == {"reason": b"corrupt_body"}
    assert message.timestamp_ms is not None
    publisher.close()
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish("out", b"v3")


def test_concurrent_producers_give_contiguous_offsets() -> None:
    broker = MemoryBroker(partitions=3)

    def produce(worker: int) -> None:
        for i in range(300):
            broker.produce("t", f"{worker}:{i}".encode(), key=f"w{worker}".encode())

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = broker.messages("t")
    assert len(messages) == 1800
    for partition, end in enumerate(broker.end_offsets("t")):
        offsets = sorted(m.offset for m in messages if m.partition == partition)
        assert offsets == list(range(end))
    for worker in range(6):
        own = [m.value for m in messages if m.key == f"w{worker}".encode()]
        assert own == [f"{worker}:{i}".encode() for i in range(300)]


def test_the_protocols_are_satisfied() -> None:
    broker = MemoryBroker()
    source: MessageSource = MemorySource(broker, group="g", topics=["t"])
    publisher: Publisher = MemoryPublisher(broker)
    publisher.publish("t", b"x")
    assert _values(source.poll(1, 0.0)) == [b"x"]
    source.close()
    publisher.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="partition"):
        MemoryBroker(partitions=0)
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="partition"):
        broker.create_topic("t", partitions=0)
    with pytest.raises(ValueError, match="group"):
        MemorySource(broker, group="", topics=["t"])
    with pytest.raises(ValueError, match="topic"):
        MemorySource(broker, group="g", topics=[])
