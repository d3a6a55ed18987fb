"""Packets stored without their cutouts: the head plus the cutouts give back every byte."""

from __future__ import annotations

import pytest

from broker.domain.alerts import from_rubin
from broker.simulator import AlertSimulator
from broker.streaming import packets, wire
from broker.streaming.schemas import available_versions


@pytest.mark.parametrize("version", [str(v) for v in available_versions()])
def test_every_schema_version_splits_and_rebuilds_exactly(version: str) -> None:
    kinds = packets.trailing_cutouts(AlertSimulator(schema=version, seed=1).schema_id)
    assert kinds
    assert set(kinds) <= {"difference", "science", "template"}
    for _, message in AlertSimulator(schema=version, seed=3).encoded(5):
        schema_id, record = wire.decode(message)
        alert = from_rubin(record, schema_id, message)
        assert alert.cutouts
        head = packets.strip(message, schema_id, alert.cutouts)
        assert head is not None
        assert message.startswith(head)
        # What was cut is the stamps and a few bytes of Avro framing each, no more.
        stamps = sum(len(alert.cutouts[k]) for k in kinds if k in alert.cutouts)
        assert stamps <= len(message) - len(head) <= stamps + 4 * len(kinds)
        assert packets.rebuild(head, schema_id, alert.cutouts) == message
        # And the head is still the start of the packet: the same schema id and header.
        assert wire.read_header(head) == schema_id


def test_a_packet_with_some_cutouts_missing_rebuilds_exactly() -> None:
    simulator = AlertSimulator(schema="11.1", seed=5)
    record = next(simulator.packets(1))
    record["cutoutScience"] = None
    message = wire.encode(record, simulator.schema_id)
    schema_id, decoded = wire.decode(message)
    alert = from_rubin(decoded, schema_id, message)
    assert set(alert.cutouts) == {"difference", "template"}
    head = packets.strip(message, schema_id, alert.cutouts)
    assert head is not None
    assert packets.rebuild(head, schema_id, alert.cutouts) == message


def test_packets_that_cannot_be_split_are_kept_whole() -> None:
    simulator = AlertSimulator(schema="11.1", seed=6)
    record = next(simulator.packets(1))
    schema_id = simulator.schema_id

    # No cutouts at all: nothing to save.
    bare = dict(record, cutoutDifference=None, cutoutScience=None, cutoutTemplate=None)
    message = wire.encode(bare, schema_id)
    alert = from_rubin(wire.decode(message)[1], schema_id, message)
    assert packets.strip(message, schema_id, alert.cutouts) is None

    # An empty stamp is present in the packet but dropped by the alert model: the packet does
    # not end with what the alert carries, so it is stored whole.
    empty = dict(record, cutoutTemplate=b"")
    message = wire.encode(empty, schema_id)
    alert = from_rubin(wire.decode(message)[1], schema_id, message)
    assert "template" not in alert.cutouts
    assert packets.strip(message, schema_id, alert.cutouts) is None

    # Cutouts that are not the packet's own (or bytes after the record) never match.
    message = wire.encode(record, schema_id)
    alert = from_rubin(wire.decode(message)[1], schema_id, message)
    other = dict(alert.cutouts, science=b"s" + alert.cutouts["science"][1:])
    assert other["science"] != alert.cutouts["science"]
    assert packets.strip(message, schema_id, other) is None
    assert packets.strip(message + b"\x00", schema_id, alert.cutouts) is None


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (63, b"\x7e"), (64, b"\x80\x01"),
    (8192, b"\x80\x80\x01"), (-8193, b"\x81\x80\x01"),
])
def test_avro_long_encoding(value: int, encoded: bytes) -> None:
    # The examples of the Avro specification's zig-zag table, and multi-byte varints.
    assert packets._zigzag_varint(value) == encoded


def test_schema_labels() -> None:
    assert packets.schema_id_of("lsst:1101") == 1101
    assert packets.schema_id_of("ztf:4.02") is None
    assert packets.schema_id_of("lsst:") is None
