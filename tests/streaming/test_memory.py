"""The embedded in-process queue: offsets, consumer groups, commit and rewind, key order."""

from __future__ import annotations

import gc
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


# ---- consumer groups: partition assignment among open members --------------------------------


def _pairs(messages: list[Message]) -> list[tuple[str, int, int]]:
    return [(m.topic, m.partition, m.offset) for m in messages]


def _drain(source: MemorySource, *, commit: bool = False) -> list[Message]:
    taken: list[Message] = []
    while batch := source.poll(7, timeout=0.0):
        if commit:
            source.commit(batch)
        taken.extend(batch)
    return taken


def test_two_members_of_a_group_split_the_partitions() -> None:
    broker = MemoryBroker()
    broker.create_topic("a", partitions=3)
    broker.create_topic("b", partitions=2)
    everything = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    first = MemorySource(broker, group="g", topics=["a", "b"])
    assert first.assignment() == everything  # alone, it owns everything
    second = MemorySource(broker, group="g", topics=["b", "a"])
    assert broker.members("g") == 2
    one, two = set(first.assignment()), set(second.assignment())
    assert one
    assert two
    assert not one & two
    assert sorted(one | two) == everything
    # Round-robin over the sorted pairs, members in join order.
    assert first.assignment() == [("a", 0), ("a", 2), ("b", 1)]
    assert second.assignment() == [("a", 1), ("b", 0)]

    for topic in ("a", "b"):
        _fill(broker, topic, 30)
    got_one, got_two = _drain(first), _drain(second)
    assert {(m.topic, m.partition) for m in got_one} == one
    assert {(m.topic, m.partition) for m in got_two} == two
    assert sorted(_pairs(got_one) + _pairs(got_two)) == sorted(
        _pairs(broker.messages("a")) + _pairs(broker.messages("b")))


def test_a_member_beyond_the_partition_count_gets_nothing() -> None:
    broker = MemoryBroker()
    _fill(broker, "t", 5)
    first = MemorySource(broker, group="g", topics=["t"])
    idle = MemorySource(broker, group="g", topics=["t"])
    assert first.assignment() == [("t", 0)]
    assert idle.assignment() == []
    started = time.monotonic()
    assert idle.poll(10, timeout=0.1) == []
    assert time.monotonic() - started >= 0.05
    assert len(first.poll(10, timeout=0.0)) == 5


def test_members_get_only_partitions_of_their_topics() -> None:
    broker = MemoryBroker(partitions=2)
    narrow = MemorySource(broker, group="g", topics=["a"])
    wide = MemorySource(broker, group="g", topics=["a", "b"])
    assert narrow.assignment() == [("a", 0)]
    assert wide.assignment() == [("a", 1), ("b", 0), ("b", 1)]
    _fill(broker, "b", 4)
    assert narrow.poll(10, timeout=0.0) == []
    assert len(wide.poll(10, timeout=0.0)) == 4


def test_concurrent_members_deliver_every_message_exactly_once() -> None:
    broker = MemoryBroker(partitions=4)
    members = [MemorySource(broker, group="g", topics=["t"]) for _ in range(2)]
    assert all(member.assignment() for member in members)
    total = 2000
    produced = threading.Event()
    received: list[list[Message]] = [[], []]
    errors: list[BaseException] = []

    def produce() -> None:
        for i in range(total):
            broker.produce("t", f"m{i}".encode(), key=f"k{i % 37}".encode())
        produced.set()

    def consume(index: int) -> None:
        source = members[index]
        try:
            while True:
                batch = source.poll(25, timeout=0.01)
                if batch:
                    source.commit(batch)
                    received[index].extend(batch)
                elif produced.is_set() and broker.lag("g", ["t"]) == 0:
                    return
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors
    delivered = _pairs(received[0]) + _pairs(received[1])
    assert len(delivered) == total
    assert sorted(delivered) == sorted(_pairs(broker.messages("t")))
    for index, member in enumerate(members):
        assert received[index]
        assert {("t", m.partition) for m in received[index]} <= set(member.assignment())
        # Each key stays on one partition, so each member sees a key's messages in order.
        per_key: dict[bytes | None, list[int]] = defaultdict(list)
        for message in received[index]:
            per_key[message.key].append(int(message.value[1:]))
        assert all(values == sorted(values) for values in per_key.values())
    assert broker.lag("g", ["t"]) == 0


def test_a_leaving_member_hands_its_partitions_over_from_the_committed_offsets() -> None:
    broker = MemoryBroker(partitions=2)
    _fill(broker, "t", 20)  # ten per partition
    first = MemorySource(broker, group="g", topics=["t"])
    second = MemorySource(broker, group="g", topics=["t"])
    assert first.assignment() == [("t", 0)]
    assert second.assignment() == [("t", 1)]

    done = first.poll(4, timeout=0.0)
    first.commit(done)
    uncommitted = first.poll(3, timeout=0.0)
    assert [m.offset for m in uncommitted] == [4, 5, 6]
    own = second.poll(5, timeout=0.0)  # second's progress on its own partition, uncommitted
    assert [(m.partition, m.offset) for m in own] == [(1, o) for o in range(5)]

    first.close()
    first.close()  # closing twice is harmless
    assert broker.members("g") == 1
    assert second.assignment() == [("t", 0), ("t", 1)]
    rest = _drain(second)
    # Partition 0 resumes at the group's committed offset (4): first's uncommitted batch comes
    # again; partition 1 continues where second was, as it kept owning it.
    assert sorted((m.partition, m.offset) for m in rest) == (
        [(0, o) for o in range(4, 10)] + [(1, o) for o in range(5, 10)])
    assert {(m.partition, m.offset) for m in uncommitted} <= {
        (m.partition, m.offset) for m in rest}


def test_commits_for_lost_partitions_are_ignored() -> None:
    broker = MemoryBroker(partitions=2)
    _fill(broker, "t", 10)
    first = MemorySource(broker, group="g", topics=["t"])
    everything = first.poll(100, timeout=0.0)  # owns both partitions, reads everything
    assert len(everything) == 10

    second = MemorySource(broker, group="g", topics=["t"])  # rebalance: first loses partition 1
    assert first.assignment() == [("t", 0)]
    first.commit(everything)  # too late for partition 1: Kafka would reject it
    assert broker.committed("g", "t", 0) == 5
    assert broker.committed("g", "t", 1) is None
    # The new owner reads partition 1 from the start; first keeps its place on partition 0.
    assert [(m.partition, m.offset) for m in _drain(second)] == [(1, o) for o in range(5)]
    assert first.poll(100, timeout=0.0) == []


def test_a_regained_partition_starts_again_at_the_committed_offset() -> None:
    broker = MemoryBroker(partitions=2)
    _fill(broker, "t", 10)
    first = MemorySource(broker, group="g", topics=["t"])
    everything = _drain(first)
    assert len(everything) == 10
    first.commit([m for m in everything if m.partition == 0 or m.offset < 2])
    assert broker.committed("g", "t", 1) == 2  # partition 1: offsets 2-4 read, uncommitted

    second = MemorySource(broker, group="g", topics=["t"])  # first loses partition 1 ...
    second.close()  # ... and gets it back, without its uncommitted progress
    assert first.assignment() == [("t", 0), ("t", 1)]
    assert [(m.partition, m.offset) for m in _drain(first)] == [(1, o) for o in range(2, 5)]


def test_groups_rebalance_independently() -> None:
    broker = MemoryBroker(partitions=2)
    _fill(broker, "t", 10)
    ingest = [MemorySource(broker, group="ingest", topics=["t"]) for _ in range(2)]
    audit = MemorySource(broker, group="audit", topics=["t"])
    assert [m.assignment() for m in ingest] == [[("t", 0)], [("t", 1)]]
    assert audit.assignment() == [("t", 0), ("t", 1)]  # alone in its group
    assert broker.members("ingest") == 2
    assert broker.members("audit") == 1

    for member in ingest:
        _drain(member, commit=True)
    assert broker.lag("ingest", ["t"]) == 0
    assert broker.lag("audit", ["t"]) == 10
    assert len(_drain(audit)) == 10
    audit.close()
    assert broker.members("audit") == 0
    assert [m.assignment() for m in ingest] == [[("t", 0)], [("t", 1)]]


def test_a_dropped_member_leaves_its_group() -> None:
    broker = MemoryBroker(partitions=2)
    kept = MemorySource(broker, group="g", topics=["t"])
    dropped = MemorySource(broker, group="g", topics=["t"])
    assert kept.assignment() == [("t", 0)]
    del dropped
    gc.collect()
    assert kept.assignment() == [("t", 0), ("t", 1)]
    assert broker.members("g") == 1
