"""The embedded in-process queue: Kafka's topics, partitions, offsets and consumer groups in memory.

In embedded mode every stage runs in one process; `MemoryBroker` stands in for the Kafka cluster,
`MemorySource` for a consumer in a consumer group and `MemoryPublisher` for a producer, so the
stage code (written against `MessageSource` and `Publisher`) is the same as on the real stack.

What it keeps of Kafka's semantics:

- A topic has N partitions (created on first use with the broker's default count, or explicitly
  with `MemoryBroker.create_topic`); each is an append-only log with offsets from 0.
- A keyed message goes to partition ``crc32(key) % N``, so one key's messages keep their order;
  unkeyed messages are spread round-robin.
- Committed offsets are kept per (group, topic, partition), as "the next offset to read". A
  source starts at its group's committed offsets, or at the beginning of a partition the group
  never committed (``auto.offset.reset=earliest``), so a new source in a group resumes where a
  stopped one committed, like a restarted consumer. A commit sets the offset exactly (it may go
  backwards, as in Kafka).
- `MemorySource.rewind` drops uncommitted progress, as a consumer does after a failed batch.

What it leaves out: the log lives in memory only (nothing survives the process), nothing is ever
deleted, and a group has no partition assignment: every source of a group reads every partition
of its topics, so run one source per group (embedded mode runs one process per stage).
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from collections.abc import Mapping, Sequence

from broker.streaming.queue import Message

#: Partitions of a topic created on first use.
DEFAULT_PARTITIONS = 1


class MemoryBroker:
    """Topics of partitioned logs and the committed offsets of consumer groups (thread-safe).

    Parameters
    ----------
    partitions
        Partitions of topics created on first use.
    """

    def __init__(self, *, partitions: int = DEFAULT_PARTITIONS) -> None:
        if partitions < 1:
            msg = f"a topic needs at least one partition, not {partitions}"
            raise ValueError(msg)
        self.default_partitions = partitions
        self._changed = threading.Condition(threading.Lock())
        self._logs: dict[str, list[list[Message]]] = {}
        self._arrivals: dict[str, list[Message]] = {}
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._committed: dict[tuple[str, str, int], int] = {}

    # ---- topics --------------------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create a topic (an existing topic is left as it is, like Kafka's admin client)."""
        with self._changed:
            self._ensure(topic, partitions)

    def _ensure(self, topic: str, partitions: int | None = None) -> list[list[Message]]:
        # Called with the lock held.
        logs = self._logs.get(topic)
        if logs is None:
            if not topic:
                msg = "a topic needs a name"
                raise ValueError(msg)
            count = self.default_partitions if partitions is None else partitions
            if count < 1:
                msg = f"a topic needs at least one partition, not {count}"
                raise ValueError(msg)
            logs = [[] for _ in range(count)]
            self._logs[topic] = logs
            self._arrivals[topic] = []
            self._round_robin[topic] = itertools.count()
        return logs

    def topics(self) -> dict[str, int]:
        """Every topic with its partition count."""
        with self._changed:
            return {topic: len(logs) for topic, logs in self._logs.items()}

    def partitions(self, topic: str) -> int:
        """Partition count of a topic (created if missing)."""
        with self._changed:
            return len(self._ensure(topic))

    # ---- producing -----------------------------------------------------------------------

    def partition_for(self, topic: str, key: bytes | None) -> int:
        """The partition a keyed message goes to (stable across runs: CRC-32 of the key)."""
        with self._changed:
            return zlib.crc32(key or b"") % len(self._ensure(topic))

    def produce(self, topic: str, value: bytes, key: bytes | None = None,
                headers: Mapping[str, bytes] | None = None) -> Message:
        """Append a message and return it with its partition and offset."""
        with self._changed:
            logs = self._ensure(topic)
            if key is None:
                partition = next(self._round_robin[topic]) % len(logs)
            else:
                partition = zlib.crc32(key) % len(logs)
            log = logs[partition]
            message = Message(topic=topic, partition=partition, offset=len(log), value=value,
                              key=key, timestamp_ms=time.time_ns() // 1_000_000,
                              headers=dict(headers or {}))
            log.append(message)
            self._arrivals[topic].append(message)
            self._changed.notify_all()
        return message

    # ---- reading (for sources and tests) -------------------------------------------------

    def messages(self, topic: str) -> list[Message]:
        """Every message of a topic in the order they were produced (for tests)."""
        with self._changed:
            return list(self._arrivals.get(topic, ()))

    def end_offsets(self, topic: str) -> list[int]:
        """The next offset of each partition of a topic."""
        with self._changed:
            return [len(log) for log in self._ensure(topic)]

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The committed offset of a group on a partition, or None if it never committed."""
        with self._changed:
            return self._committed.get((group, topic, partition))

    def lag(self, group: str, topics: Sequence[str]) -> int:
        """Messages of ``topics`` past the group's committed offsets."""
        with self._changed:
            return sum(
                len(log) - self._committed.get((group, topic, partition), 0)
                for topic in topics for partition, log in enumerate(self._ensure(topic))
            )

    def _fetch(self, topic: str, partition: int, start: int, count: int) -> list[Message]:
        # Called with the lock held.
        return self._logs[topic][partition][start:start + count]

    def _commit(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        with self._changed:
            for (topic, partition), offset in offsets.items():
                self._committed[(group, topic, partition)] = offset


class MemorySource:
    """A consumer of ``topics`` in consumer group ``group`` (a `MessageSource`)."""

    def __init__(self, broker: MemoryBroker, *, group: str, topics: list[str]) -> None:
        if not group:
            msg = "a consumer needs a group"
            raise ValueError(msg)
        if not topics:
            msg = "a consumer needs at least one topic"
            raise ValueError(msg)
        self.broker = broker
        self.group = group
        self.topics = list(dict.fromkeys(topics))
        self._positions: dict[tuple[str, int], int] = {}
        self._next = 0  # which partition a poll starts with, rotated for fairness
        self._closed = False
        for topic in self.topics:
            broker.create_topic(topic)

    def _partitions(self) -> list[tuple[str, int]]:
        # Called with the broker's lock held.
        return [(topic, p) for topic in self.topics
                for p in range(len(self.broker._ensure(topic)))]

    def _position(self, key: tuple[str, int]) -> int:
        # Called with the broker's lock held.
        if key not in self._positions:
            self._positions[key] = self.broker._committed.get((self.group, *key), 0)
        return self._positions[key]

    def _available(self) -> bool:
        return any(len(self.broker._logs[t][p]) > self._position((t, p))
                   for t, p in self._partitions())

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` messages from the current positions, waiting at most
        ``timeout`` seconds for the first; partitions take turns in starting the batch."""
        self._check_open()
        if max_messages < 1:
            return []
        with self.broker._changed:
            self.broker._changed.wait_for(self._available, timeout=max(0.0, timeout))
            partitions = self._partitions()
            start = self._next % len(partitions)
            self._next += 1
            batch: list[Message] = []
            for key in partitions[start:] + partitions[:start]:
                position = self._position(key)
                taken = self.broker._fetch(*key, position, max_messages - len(batch))
                self._positions[key] = position + len(taken)
                batch.extend(taken)
                if len(batch) >= max_messages:
                    break
        return batch

    def commit(self, messages: Sequence[Message]) -> None:
        """Commit, for each partition among ``messages``, the offset just past the last one."""
        self._check_open()
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic, message.partition)
            offsets[key] = max(offsets.get(key, 0), message.offset + 1)
        self.broker._commit(self.group, offsets)

    def rewind(self) -> None:
        """Forget uncommitted progress: the next poll starts at the committed offsets."""
        self._check_open()
        with self.broker._changed:
            self._positions.clear()

    def close(self) -> None:
        """Stop consuming (uncommitted progress is lost, as when a consumer leaves its group)."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            msg = f"consumer of group {self.group!r} is closed"
            raise RuntimeError(msg)


class MemoryPublisher:
    """A producer into a `MemoryBroker` (a `Publisher`): every message is appended at once."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._closed = False

    def publish(self, topic: str, value: bytes, key: bytes | None = None,
                headers: Mapping[str, bytes] | None = None) -> None:
        if self._closed:
            msg = "publisher is closed"
            raise RuntimeError(msg)
        self.broker.produce(topic, value, key=key, headers=headers)

    def flush(self, timeout: float) -> None:
        """Nothing to wait for: `publish` has already appended every message."""

    def close(self) -> None:
        self._closed = True
