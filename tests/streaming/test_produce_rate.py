"""`produce_at_rate`: messages spaced at the rate asked, then flushed."""

from __future__ import annotations

import itertools
import time
from typing import Any

from broker.storage.kafka import produce_at_rate


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[float, str, bytes | None, bytes]] = []
        self.flushed = False

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        self.sent.append((time.monotonic(), topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed = True
        return 0


def test_messages_go_at_the_rate_asked() -> None:
    producer: Any = _Producer()
    messages = [(str(i).encode(), b"v") for i in range(11)]
    assert produce_at_rate(producer, "t", messages, rate=50.0) == 11
    times = [t for t, *_ in producer.sent]
    assert [k for _, _, k, _ in producer.sent] == [k for k, _ in messages]
    assert 0.19 <= times[-1] - times[0] < 0.5  # ten gaps of 20 ms
    assert all(b - a >= 0.015 for a, b in itertools.pairwise(times))
    assert producer.flushed
