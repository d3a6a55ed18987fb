"""ZTF alert packets: Avro Object Container Files, one alert per Kafka message.

Unlike Rubin's Confluent wire format, every ZTF message is a complete Avro container file: the
magic ``b"Obj\\x01"``, a header holding the writer schema as JSON, then data blocks separated by a
16-byte sync marker. Reading therefore needs no schema registry: fastavro takes the schema from the
header. As for the wire format, every way a message can be wrong raises a typed `WireFormatError`
subclass, so the ingest stage can dead-letter it with a precise reason:

- `NotAContainerError` (a `CorruptBodyError`): the bytes do not start with the container magic;
- `TruncatedMessageError`: the bytes end before the container does;
- `CorruptBodyError`: anything else (bad header, sync marker, block, no or several records, a
  record that is not a ZTF alert).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException

from broker.exceptions import CorruptBodyError, TruncatedMessageError

__all__ = [
    "CONTAINER_MAGIC",
    "NotAContainerError",
    "decode_container",
    "is_container",
    "read_container",
]

#: The first four bytes of every Avro Object Container File.
CONTAINER_MAGIC = b"Obj\x01"

# Every exception fastavro has been seen to raise on hostile input: short reads surface as
# EOFError, IndexError or struct.error, a corrupt length or varint as ValueError/OverflowError,
# a corrupt header schema as SchemaParseException (which is not a ValueError).
_READ_ERRORS = (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
    OverflowError,
    MemoryError,
    struct.error,
    SchemaParseException,
)


class _TrackedStream(io.BytesIO):
    """A byte stream that remembers whether a read ever came back short (hit the end)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.ran_out = False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size is not None and size > len(chunk):
            self.ran_out = True
        return chunk


class NotAContainerError(CorruptBodyError):
    """The bytes are not an Avro Object Container File (no ``Obj\\x01`` magic)."""

    reason = "not_avro_container"


def is_container(data: bytes) -> bool:
    """Whether ``data`` starts with the Avro Object Container File magic ``b"Obj\\x01"``."""
    return data[: len(CONTAINER_MAGIC)] == CONTAINER_MAGIC


def read_container(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read every record of an Avro container held in memory.

    Parameters
    ----------
    data
        The whole container file (a ZTF Kafka message value, or a file's bytes).

    Returns
    -------
    tuple
        ``(writer_schema, records)``: the parsed writer schema from the header (its ``"name"``
        is the full name, e.g. ``"ztf.alert"`` or ``"lsst.v11_1.alert"``) and the records.

    Raises
    ------
    NotAContainerError
        If the bytes do not start with the container magic.
    TruncatedMessageError
        If the bytes end inside the magic, the header or a block.
    CorruptBodyError
        If the header, a sync marker or a block cannot be read, or a record is not a record.
    """
    if not is_container(data):
        if len(data) < len(CONTAINER_MAGIC) and CONTAINER_MAGIC.startswith(data):
            msg = f"{len(data)} bytes end inside the Avro container magic"
            raise TruncatedMessageError(msg)
        msg = f"bytes start with {data[:4]!r}, not the Avro container magic {CONTAINER_MAGIC!r}"
        raise NotAContainerError(msg)
    stream = _TrackedStream(data)
    try:
        reader = fastavro.reader(stream)
        writer_schema = reader.writer_schema
        records = list(reader)
    except _READ_ERRORS as exc:
        # fastavro reports a short read with several exception types (EOFError, IndexError,
        # ValueError for a sync marker cut short), so truncation is told by the stream itself:
        # the reader asked for bytes past the end. A full-length but wrong sync marker, or
        # garbage in the header, is corruption. (A corrupt block length that points past the
        # end also counts as truncation, as in the wire format.)
        if stream.ran_out:
            msg = f"Avro container ends early: {type(exc).__name__}: {exc}"
            raise TruncatedMessageError(msg) from exc
        msg = f"Avro container does not decode: {type(exc).__name__}: {exc}"
        raise CorruptBodyError(msg) from exc
    if not isinstance(writer_schema, dict):
        msg = "Avro container's writer schema is not a record schema"
        raise CorruptBodyError(msg)
    checked: list[dict[str, Any]] = []
    for record in records:
        if not isinstance(record, dict):
            msg = f"Avro container holds a {type(record).__name__}, not a record"
            raise CorruptBodyError(msg)
        checked.append(record)
    return writer_schema, checked


def decode_container(data: bytes) -> tuple[str, dict[str, Any]]:
    """Read the one ZTF alert of a container into ``(schemavsn, record)``.

    The writer schema embedded in the container is used as is (the 3.2 samples do not resolve
    against the 4.x reader schema, and every version carries what `broker.domain.ztf` reads).

    Raises
    ------
    NotAContainerError, TruncatedMessageError
        As `read_container`.
    CorruptBodyError
        If the container cannot be read, holds no record or several, or its record is not a ZTF
        alert (no text ``schemavsn``).
    """
    _, records = read_container(data)
    if len(records) != 1:
        what = "no record" if not records else f"{len(records)} records"
        msg = f"Avro container holds {what}; a ZTF message holds exactly one alert"
        raise CorruptBodyError(msg)
    record = records[0]
    version = record.get("schemavsn")
    if not isinstance(version, str) or not version:
        msg = "Avro container's record has no schemavsn: not a ZTF alert"
        raise CorruptBodyError(msg)
    return version, record
