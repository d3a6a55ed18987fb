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
- A group's open sources are its members: a source joins when it is created and leaves when it
  is closed (or garbage-collected, the stand-in for a session timeout). The partitions of the
  members' topics are shared among them round-robin, like Kafka's ``RoundRobinAssignor``: the
  (topic, partition) pairs in sorted order are dealt to the members in join order, skipping a
  member not subscribed to the pair's topic. Every join and leave is a rebalance: the assignment
  is recomputed, a member keeps its positions only on the partitions it still owns and starts
  on newly owned ones at the group's committed offsets (uncommitted progress on a lost partition
  is dropped, so those messages go again to the new owner). A member's commit for a partition it
  no longer owns is ignored, as Kafka rejects it; the owner will process the messages again.

What it leaves out: the log lives in memory only (nothing survives the process), nothing is ever
deleted, and a rebalance takes effect at once (no generations, no revocation callbacks).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
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
        # Open members of each group in join order (weak: a dropped source leaves its group).
        self._members: dict[str, list[weakref.ref[MemorySource]]] = {}

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
        # Called with the lock held.
        for (topic, partition), offset in offsets.items():
            self._committed[(group, topic, partition)] = offset

    # ---- group membership ----------------------------------------------------------------

    def members(self, group: str) -> int:
        """How many open members ``group`` has."""
        with self._changed:
            self._prune(group)
            return len(self._members.get(group, ()))

    def _join(self, source: MemorySource) -> None:
        with self._changed:
            self._prune(source.group)
            self._members.setdefault(source.group, []).append(weakref.ref(source))
            self._rebalance(source.group)

    def _leave(self, source: MemorySource) -> None:
        # Called with the lock held.
        refs = self._members.get(source.group, [])
        refs[:] = [ref for ref in refs if ref() is not None and ref() is not source]
        self._rebalance(source.group)

    def _prune(self, group: str) -> None:
        # Called with the lock held: members that were garbage-collected leave the group.
        refs = self._members.get(group)
        if refs and any(ref() is None for ref in refs):
            refs[:] = [ref for ref in refs if ref() is not None]
            self._rebalance(group)

    def _rebalance(self, group: str) -> None:
        # Called with the lock held: deal the group's partitions to its members round-robin.
        members = [m for m in (ref() for ref in self._members.get(group, ())) if m is not None]
        if not members:
            self._members.pop(group, None)
            return
        pairs = sorted({(topic, partition) for member in members for topic in member.topics
                        for partition in range(len(self._ensure(topic)))})
        owned: dict[int, set[tuple[str, int]]] = {id(member): set() for member in members}
        turn = 0
        for topic, partition in pairs:
            while topic not in members[turn % len(members)].topics:
                turn += 1
            owned[id(members[turn % len(members)])].add((topic, partition))
            turn += 1
        for member in members:
            member._assign(owned[id(member)])
        self._changed.notify_all()


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
        self._assigned: list[tuple[str, int]] = []  # set by the broker at each rebalance
        self._positions: dict[tuple[str, int], int] = {}
        self._next = 0  # which partition a poll starts with, rotated for fairness
        self._closed = False
        for topic in self.topics:
            broker.create_topic(topic)
        broker._join(self)

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this member owns, sorted."""
        with self.broker._changed:
            self.broker._prune(self.group)
            return list(self._assigned)

    def describe_group(self) -> str:
        """Who holds the group's partitions: in memory a rebalance takes effect at once, so a
        member owns none only while the other open members hold them all."""
        with self.broker._changed:
            self.broker._prune(self.group)
            others = [m for m in (ref() for ref in self.broker._members.get(self.group, ()))
                      if m is not None and m is not self]
            held = sum(len(m._assigned) for m in others)
        hold = "other member holds" if len(others) == 1 else "other members hold"
        return f"{len(others)} {hold} {held} partition{'' if held == 1 else 's'}"

    def _assign(self, partitions: set[tuple[str, int]]) -> None:
        # Called by the broker with its lock held: keep positions only where ownership stays.
        self._assigned = sorted(partitions)
        self._positions = {key: position for key, position in self._positions.items()
                           if key in partitions}

    def _position(self, key: tuple[str, int]) -> int:
        # Called with the broker's lock held.
        if key not in self._positions:
            self._positions[key] = self.broker._committed.get((self.group, *key), 0)
        return self._positions[key]

    def _available(self) -> bool:
        # Called with the broker's lock held.
        self.broker._prune(self.group)
        return self._closed or any(len(self.broker._logs[t][p]) > self._position((t, p))
                                   for t, p in self._assigned)

    def drained(self) -> bool:
        """True when this member owns partitions and has read everything in them."""
        with self.broker._changed:
            if self._closed or not self._assigned:
                return False
            return not self._available()

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` messages from the current positions, waiting at most
        ``timeout`` seconds for the first; partitions take turns in starting the batch."""
        self._check_open()
        if max_messages < 1:
            return []
        with self.broker._changed:
            self.broker._changed.wait_for(self._available, timeout=max(0.0, timeout))
            partitions = list(self._assigned)
            if self._closed or not partitions:
                return []
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
        """Commit, for each partition among ``messages``, the offset just past the last one.

        Partitions this member no longer owns (lost in a rebalance) are skipped, as Kafka
        rejects such commits: their owner reads them again from the group's committed offset.
        """
        self._check_open()
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic, message.partition)
            offsets[key] = max(offsets.get(key, 0), message.offset + 1)
        with self.broker._changed:
            self.broker._prune(self.group)
            owned = set(self._assigned)
            self.broker._commit(self.group, {key: offset for key, offset in offsets.items()
                                             if key in owned})

    def rewind(self) -> None:
        """Forget uncommitted progress: the next poll starts at the committed offsets."""
        self._check_open()
        with self.broker._changed:
            self._positions.clear()

    def close(self) -> None:
        """Leave the group (uncommitted progress is lost; the others take over its partitions)."""
        with self.broker._changed:
            if self._closed:
                return
            self._closed = True
            self._assigned = []
            self._positions.clear()
            self.broker._leave(self)

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
