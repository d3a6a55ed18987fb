"""What a stage needs from a message queue: batches in, messages out, offsets committed.

Kafka (`broker.storage.kafka`) and the embedded in-process queue (`broker.streaming.memory`) both
provide these, so the stage code is the same on both backends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: Mapping[str, bytes] = field(default_factory=dict)


class MessageSource(Protocol):
    """A consumer in a consumer group."""

    #: The consumer group it is a member of.
    group: str

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` seconds for the first."""

    def commit(self, messages: Sequence[Message]) -> None:
        """Commit, synchronously, the offsets just past the given messages per partition."""

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this member owns now, sorted (none until the group has
        assigned it some, and none while another member holds them all)."""

    def drained(self) -> bool:
        """True when the consumer owns partitions and has read up to their ends."""

    def describe_group(self) -> str:
        """Who holds the group's partitions, in words for an operator: why this member may own
        none (best effort, never raises)."""

    def rewind(self) -> None:
        """Forget uncommitted progress: the next poll starts again at the committed offsets."""

    def close(self) -> None:
        """Leave the group."""


class Publisher(Protocol):
    """A producer."""

    def publish(self, topic: str, value: bytes, key: bytes | None = None,
                headers: Mapping[str, bytes] | None = None) -> None:
        """Queue a message (may block while the local buffer is full)."""

    def flush(self, timeout: float) -> None:
        """Wait until every queued message is acknowledged; raise TransientError otherwise."""

    def close(self) -> None:
        """Flush and release."""
