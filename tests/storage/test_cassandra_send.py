"""The light-curve archive's writes when the driver refuses requests (`ConnectionBusy`: the
connection's socket buffer is full): the refused ones alone are sent again, fewer at a time,
while each round gets some through; a round that gets none through is a transient failure."""

from __future__ import annotations

from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy

from broker.exceptions import ServiceUnavailableError
from broker.storage import cassandra
from broker.storage.cassandra import CassandraLightCurves


class _Connection:
    keyspace = "unused"

    def session(self) -> object:
        return object()


def _busy() -> NoHostAvailable:
    return NoHostAvailable("Unable to complete the operation against any hosts",
                           {"127.0.0.1:9042": ConnectionBusy("Connection is overloaded")})


def _archive(monkeypatch: pytest.MonkeyPatch, rounds: list[Any]) -> tuple[Any, list[Any]]:
    """An archive whose driver answers each round with the next function of ``rounds``
    (statement -> (ok, result)); the rounds' statements and concurrency are recorded."""
    sent: list[Any] = []

    def execute_concurrent(_session: object, statements: list, *, concurrency: int,
                           raise_on_first_error: bool) -> list:
        assert not raise_on_first_error
        sent.append(([s for s, _ in statements], concurrency))
        answer = rounds[len(sent) - 1]
        return [answer(s) for s, _ in statements]

    monkeypatch.setattr(cassandra, "execute_concurrent", execute_concurrent)
    return CassandraLightCurves(connection=_Connection(), concurrency=8), sent  # type: ignore[arg-type]


def test_refused_writes_alone_are_sent_again_fewer_at_a_time(monkeypatch) -> None:
    archive, sent = _archive(monkeypatch, [
        lambda s: (s % 2 == 0, None if s % 2 == 0 else _busy()),  # the odd ones refused
        lambda s: (s != 3, None if s != 3 else ConnectionBusy("busy")),
        lambda s: (True, None),
    ])
    archive._send([(i, ()) for i in range(6)])
    assert sent == [([0, 1, 2, 3, 4, 5], 8), ([1, 3, 5], 4), ([3], 2)]


def test_other_failures_and_rounds_without_progress_are_transient(monkeypatch) -> None:
    archive, _ = _archive(monkeypatch, [lambda s: (s != 1, None if s != 1 else _busy()),
                                        lambda s: (False, _busy())])
    with pytest.raises(ServiceUnavailableError, match="1 of 3 Cassandra writes failed"):
        archive._send([(i, ()) for i in range(3)])
    archive, _ = _archive(monkeypatch, [
        lambda s: (s == 0, None if s == 0 else (_busy() if s == 1 else RuntimeError("x")))])
    with pytest.raises(ServiceUnavailableError, match="2 of 3"):
        archive._send([(i, ()) for i in range(3)])
