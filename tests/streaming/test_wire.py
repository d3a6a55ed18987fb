"""The Confluent wire format of Rubin alerts, on Rubin's own samples and on corrupt messages."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest

from broker.exceptions import (
    BadMagicByteError,
    CorruptBodyError,
    PermanentError,
    TruncatedMessageError,
    UnknownSchemaError,
    WireFormatError,
)
from broker.simulator import AlertSimulator
from broker.streaming import files, wire
from broker.streaming.schemas import SchemaVersion
from tests.support.data import rubin_sample_alert

SAMPLE_VERSIONS = ("10.0", "11.0", "11.1")


def _sample(version: str) -> dict[str, Any]:
    with rubin_sample_alert(version).open("rb") as stream:
        records = list(fastavro.reader(stream))
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, dict)
    return record


@pytest.fixture(scope="module")
def sample_message() -> bytes:
    return wire.encode(_sample("11.1"), 1101)


@pytest.mark.parametrize("version", SAMPLE_VERSIONS)
def test_rubin_sample_round_trips(version: str) -> None:
    record = _sample(version)
    schema_id = SchemaVersion.parse(version).schema_id
    message = wire.encode(record, schema_id)

    assert message[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    decoded_id, decoded = wire.decode(message)
    assert decoded_id == schema_id
    assert decoded == record
    # Rubin's example packet: placeholder ids at ra 351.5705, dec 0.1262 (shared/data README).
    assert decoded["diaSourceId"] == 1231321321
    assert decoded["diaSource"]["ra"] == pytest.approx(351.570546978)
    assert decoded["diaSource"]["dec"] == pytest.approx(0.126243049656)
    assert [s["diaSourceId"] for s in decoded["prvDiaSources"]] == [
        281323062375219198,
        281323062375219199,
    ]


@pytest.mark.parametrize("version", SAMPLE_VERSIONS)
def test_header_names_the_schema(version: str) -> None:
    schema_id = SchemaVersion.parse(version).schema_id
    message = wire.encode(_sample(version), schema_id)
    assert wire.read_header(message) == schema_id
    assert struct.unpack(">bI", message[:5]) == (0, schema_id)


def test_simulated_packets_round_trip_byte_for_byte() -> None:
    simulator = AlertSimulator(schema=SchemaVersion(11, 1), seed=21)
    for record in simulator.packets(20):
        message = wire.encode(record, 1101)
        schema_id, decoded = wire.decode(message)
        assert schema_id == 1101
        assert decoded["diaSourceId"] == record["diaSourceId"]
        assert decoded["cutoutScience"] == record["cutoutScience"]
        assert wire.encode(decoded, schema_id) == message


def test_bad_magic_byte(sample_message: bytes) -> None:
    with pytest.raises(BadMagicByteError, match="0x01") as caught:
        wire.decode(b"\x01" + sample_message[1:])
    assert caught.value.reason == "bad_magic_byte"


@pytest.mark.parametrize("message", [b"", b"\x00", b"\x00\x00\x00\x04"])
def test_header_shorter_than_five_bytes(message: bytes) -> None:
    with pytest.raises(TruncatedMessageError, match="shorter than the 5-byte header") as caught:
        wire.decode(message)
    assert caught.value.reason == "truncated"


CUTS = {
    "header only": lambda size: 5,
    "half": lambda size: size // 2,
    "all but 100 bytes": lambda size: size - 100,
    "all but one byte": lambda size: size - 1,
}


@pytest.mark.parametrize("keep", list(CUTS))
def test_body_cut_short(sample_message: bytes, keep: str) -> None:
    cut = CUTS[keep](len(sample_message))
    with pytest.raises(TruncatedMessageError, match="ends early"):
        wire.decode(sample_message[:cut])


def test_every_cut_of_the_body_is_truncation(sample_message: bytes) -> None:
    kinds = set()
    for cut in range(5, len(sample_message)):
        try:
            wire.decode(sample_message[:cut])
        except WireFormatError as exc:
            kinds.add(type(exc))
    assert kinds == {TruncatedMessageError}


def test_unknown_schema_id(sample_message: bytes) -> None:
    message = wire.write_header(9999) + sample_message[5:]
    with pytest.raises(UnknownSchemaError) as caught:
        wire.decode(message)
    assert caught.value.schema_id == 9999
    assert caught.value.reason == "unknown_schema_id"
    assert "9999" in str(caught.value)


def test_garbage_body() -> None:
    # diaSourceId = 1, then union index 63 for observation_reason, which has two branches.
    message = wire.write_header(1101) + b"\x02\x7e" + b"\x00" * 64
    with pytest.raises(CorruptBodyError, match="does not decode") as caught:
        wire.decode(message)
    assert caught.value.reason == "corrupt_body"


def test_trailing_bytes(sample_message: bytes) -> None:
    with pytest.raises(CorruptBodyError, match="3 bytes left over"):
        wire.decode(sample_message + b"\x00\x01\x02")


def test_wire_errors_are_permanent() -> None:
    # Ingest dead-letters permanent errors instead of retrying them.
    for error in (BadMagicByteError, TruncatedMessageError, UnknownSchemaError, CorruptBodyError):
        assert issubclass(error, WireFormatError)
        assert issubclass(error, PermanentError)


def test_header_rejects_ids_beyond_four_bytes() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        wire.write_header(2**32)


def test_folder_of_alert_files_round_trips(tmp_path: Path) -> None:
    simulator = AlertSimulator(schema="11.1", seed=4, n_objects=3, cutouts=False)
    records = list(simulator.packets(12))
    pairs = [(r["diaSourceId"], wire.encode(r, 1101)) for r in records]
    folder = tmp_path / "alerts"

    assert files.write_alerts(folder, pairs) == 12
    (folder / "README.txt").write_text("not an alert")
    read = list(files.read_alerts(folder))

    assert [p.name for p, _ in read] == [f"{i}.avro" for i, _ in sorted(pairs)]
    assert [m for _, m in read] == [m for _, m in sorted(pairs)]
    assert [wire.decode(m)[1]["diaSourceId"] for _, m in read] == sorted(i for i, _ in pairs)
    assert not list(folder.glob(".*partial"))


def test_rewriting_an_alert_file_is_idempotent(tmp_path: Path) -> None:
    message = wire.encode(_sample("11.1"), 1101)
    first = files.write_alert(tmp_path, 1231321321, message)
    second = files.write_alert(tmp_path, 1231321321, message)
    assert first == second == tmp_path / "1231321321.avro"
    assert [m for _, m in files.read_alerts(tmp_path)] == [message]


def test_reading_a_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        list(files.read_alerts(tmp_path / "absent"))
